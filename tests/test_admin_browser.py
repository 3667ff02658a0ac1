"""The status page in a real browser: headless Chromium against a running bridge.

Screenshots go to test-artifacts/, and with BRIDGE_UPDATE_DOCS=1 the desktop one to
docs/status-page.png, which the README shows (see tests/browser.py).
"""

from __future__ import annotations

from pathlib import Path

from pytest_aiohttp import AiohttpClient

from bridge.server import RUNTIME
from tests.browser import chromium, run_chromium, screenshot
from tests.fakes.chat_server import FakeChat
from tests.test_admin import FAILED_BUILD_URL, run_bridge, two_events


async def test_the_status_page_in_headless_chromium(
    aiohttp_client: AiohttpClient, tmp_path: Path, fake_chat: FakeChat
) -> None:
    browser = chromium()
    webhook = await run_bridge(aiohttp_client, tmp_path, fake_chat)
    await two_events(webhook)
    url = webhook.app[RUNTIME].admin.url
    assert url is not None

    profile = tmp_path / "chromium-profile"
    dom = (await run_chromium(browser, profile, "--dump-dom", url)).decode()
    assert "<title>(2 dead) jobserv-bridge status</title>" in dom
    assert f'href="{FAILED_BUILD_URL}"' in dom
    assert "andy-corp / containers-devel #68" in dom
    assert "old-webhook" in dom and "HTTP 404: no_service" in dom
    assert "HTTP 429: slow down" in dom
    assert dom.count('<g class="hour">') == 24
    assert fake_chat.base_url not in dom

    # The README's picture: the top of the page, at a size that reads on GitHub.
    await screenshot(browser, profile, url, "status-page", "900,760", for_docs=True)
    await screenshot(browser, profile, url, "admin-desktop", "1280,1800")
    await screenshot(browser, profile, url, "admin-phone", "412,2400")
