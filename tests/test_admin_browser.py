"""The status page in a real browser: headless Chromium against a running bridge.

Screenshots are saved in test-artifacts/ (git-ignored) for a person to look at.
Without /usr/bin/chromium the test is skipped, unless CI=true, where it fails:
`.ci/run` installs Debian's chromium package.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from bridge.server import ADMIN
from tests.fakes.chat_server import FakeChat
from tests.test_admin import FAILED_BUILD_URL, run_bridge, two_events

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# A PNG of a page with content; a blank page of this size is a few kilobytes.
MIN_SCREENSHOT_BYTES = 20_000
BROWSER_DEADLINE = 60.0


def _chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run should install Debian's chromium")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI=true makes this fail")


async def _run_chromium(chromium: Path, profile: Path, *arguments: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(BROWSER_DEADLINE):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


async def test_the_status_page_in_headless_chromium(
    aiohttp_client: AiohttpClient, tmp_path: Path, fake_chat: FakeChat
) -> None:
    chromium = _chromium()
    webhook = await run_bridge(aiohttp_client, tmp_path, fake_chat)
    await two_events(webhook)
    url = webhook.app[ADMIN].url
    assert url is not None

    profile = tmp_path / "chromium-profile"
    dom = (await _run_chromium(chromium, profile, "--dump-dom", url)).decode()
    assert "<title>(2 dead) jobserv-bridge status</title>" in dom
    assert f'href="{FAILED_BUILD_URL}"' in dom
    assert "andy-corp / containers-devel #68" in dom
    assert "old-webhook" in dom and "HTTP 404: no_service" in dom
    assert "HTTP 429: slow down" in dom
    assert dom.count('<g class="hour">') == 24
    assert fake_chat.base_url not in dom

    ARTIFACTS.mkdir(exist_ok=True)
    for name, size in (("admin-desktop", "1280,1800"), ("admin-phone", "412,2400")):
        screenshot = ARTIFACTS / f"{name}.png"
        screenshot.unlink(missing_ok=True)
        await _run_chromium(
            chromium, profile, f"--screenshot={screenshot}", f"--window-size={size}", url
        )
        data = screenshot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), screenshot
        assert len(data) > MIN_SCREENSHOT_BYTES, f"{screenshot} looks blank"
