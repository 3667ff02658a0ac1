"""Headless Chromium for the tests that look at pages: the status page, the Slack picture.

Screenshots always go to test-artifacts/ (git-ignored) for a person to look at; with
BRIDGE_UPDATE_DOCS=1 they are also copied to docs/, where the README shows them.
Without /usr/bin/chromium these tests are skipped, unless CI=true, where they fail:
`.ci/run` installs Debian's chromium package.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
DOCS = REPO_ROOT / "docs"
UPDATE_DOCS_VARIABLE = "BRIDGE_UPDATE_DOCS"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A PNG of a page with content; a blank page of these sizes is a few kilobytes.
MIN_SCREENSHOT_BYTES = 20_000
BROWSER_DEADLINE = 60.0


def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run should install Debian's chromium")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI=true makes this fail")


async def run_chromium(browser: Path, profile: Path, *arguments: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        str(browser),
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


async def screenshot(
    browser: Path, profile: Path, url: str, name: str, size: str, *, for_docs: bool = False
) -> Path:
    """A PNG of `url` at `size` ("900,600") in test-artifacts/NAME.png, checked not blank;
    `for_docs`: copied to docs/NAME.png too when BRIDGE_UPDATE_DOCS=1."""
    ARTIFACTS.mkdir(exist_ok=True)
    picture = ARTIFACTS / f"{name}.png"
    picture.unlink(missing_ok=True)
    await run_chromium(browser, profile, f"--screenshot={picture}", f"--window-size={size}", url)
    data = picture.read_bytes()
    assert data.startswith(PNG_SIGNATURE), picture
    assert len(data) > MIN_SCREENSHOT_BYTES, f"{picture} looks blank"
    if for_docs and os.environ.get(UPDATE_DOCS_VARIABLE) == "1":
        shutil.copyfile(picture, DOCS / f"{name}.png")
    return picture
