"""A failure as Slack shows it: the default Slack template, rendered by `jobserv-bridge render`,
drawn as a Slack-like page (tests/slack_html.py) and photographed by headless Chromium.

The picture goes to test-artifacts/slack-failure.png, and with BRIDGE_UPDATE_DOCS=1 to
docs/slack-failure.png, which the README shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.browser import chromium, run_chromium, screenshot
from tests.conftest import FAILED, FIXTURES
from tests.serve import run_cli
from tests.slack_html import mrkdwn, page
from tests.test_cli import write

BUILD_URL = "https://ci.foundries.io/projects/andy-corp/lmp/builds/68"
CONFIG = """
    [[sources]]
    name = "webhook-docs-example"
    secret = "not-used-by-render"
    factories = ["*"]

    [[destinations]]
    name = "ci-alerts"
    type = "slack-webhook"
    url = "https://hooks.slack.com/services/T000/B000/XXXX"

    [[routes]]
    notify = ["failed"]
    destinations = ["ci-alerts"]
    mention = ["<!subteam^S0123CIOPS|@ci-ops>"]
    """


def rendered_failure(folder: Path) -> dict[str, Any]:
    """What the bridge would post to Slack for build 68, the second failure in a row."""
    config = write(folder, "config.toml", CONFIG)
    payload = FIXTURES / f"{FAILED}.json"
    result = run_cli("render", "--config", config, "--payload", payload, "--previous", "FAILED")
    assert result.returncode == 0, result.stderr
    message: dict[str, Any] = json.loads(result.stdout)
    return message


def test_mrkdwn_links_bold_and_mentions() -> None:
    shown = mrkdwn("*<https://x.example/1?a=1&amp;b=2|Build #1>* by <!subteam^S1|@ops> <@U1>")
    assert shown == (
        '<b><a href="https://x.example/1?a=1&amp;b=2">Build #1</a></b> by '
        '<span class="mention">@ops</span> <span class="mention">@U1</span>'
    )


def test_mrkdwn_shows_escaped_build_data_as_text() -> None:
    # The bridge escapes what a build carries: it shows as itself, never as markup.
    escaped = "run &lt;b&gt;x&lt;/b&gt; &amp; &lt;https://evil.example|y&gt;\n&gt; not a quote"
    assert mrkdwn(escaped) == escaped


def test_mrkdwn_quotes_and_emoji() -> None:
    shown = mrkdwn(":x: _done_\n>why it ran\n>more")
    assert shown.startswith('<span class="emoji cross">✖</span> <i>done</i>\n')
    assert shown.endswith("<blockquote>why it ran\nmore</blockquote>")


async def test_a_failure_as_slack_shows_it(tmp_path: Path) -> None:
    browser = chromium()
    message = rendered_failure(tmp_path)
    preview = tmp_path / "slack-failure.html"
    preview.write_text(page(message, "ci-alerts"))

    profile = tmp_path / "chromium-profile"
    dom = (await run_chromium(browser, profile, "--dump-dom", preview.as_uri())).decode()
    assert "andy-corp / containers-devel #68 FAILED — Still failing since #67" in dom
    assert f'<a href="{BUILD_URL}">Build #68</a>' in dom
    assert f'<a href="{BUILD_URL}/build-armhf/">build-armhf</a>' in dom
    assert '<span class="mention">@ci-ops</span>' in dom
    assert "<blockquote>bump to test webhooks</blockquote>" in dom
    assert "|" not in dom.split("<body>", 1)[1].split("CI alerts", 1)[1]  # every link drawn

    await screenshot(browser, profile, preview.as_uri(), "slack-failure", "900,300", for_docs=True)
