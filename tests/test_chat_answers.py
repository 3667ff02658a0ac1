"""Chat answers that are not what the chat's API answers: a proxy's page, an endless body.

The chats talk to the fake chat server (tests/fakes/chat_server.py) for real: the
Slack Web API chat through slack-sdk's AsyncWebClient, Teams through the shared
JSON webhook code, the generic chat with its own request, Slack's incoming webhooks
through slack-sdk's AsyncWebhookClient.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from bridge.chats import CHAT_TYPES, Chat
from bridge.outcome import Retry, Sent
from tests.conftest import make_config
from tests.fakes.chat_server import Behaviour, FakeChat, Reply, SlackApiOk, Stream

API_PATH = "/api/chat.postMessage"
TEAMS_PATH = "/workflows/teams"
GENERIC_PATH = "/hooks/ci"
SLACK_WEBHOOK_PATH = "/services/T000/B000/XXXX"
PATHS = {"teams": TEAMS_PATH, "generic": GENERIC_PATH, "slack-webhook": SLACK_WEBHOOK_PATH}
PROXY_PAGE = "<html><body><h1>502 Bad Gateway</h1><p>the proxy says hello</p></body></html>"
# Whatever the kernel's socket buffers hold beyond what the client read: far below this.
READ_BOUND = 32 * 1024 * 1024


def make_chat(folder: Path, fake: FakeChat, session: aiohttp.ClientSession, kind: str) -> Chat:
    where = (
        f'token = "xoxb-1-2-TOKEN"\nchannel = "C1"\napi_url = "{fake.url("/api/")}"'
        if kind == "slack-api"
        else f'url = "{fake.url(PATHS[kind])}"'
    )
    config = make_config(
        folder,
        f"""
        [[sources]]
        name = "jobserv"
        secret = "s3cret"
        factories = ["*"]

        [[destinations]]
        name = "chat"
        type = "{kind}"
        {where}
        """,
    )
    settings = config.destinations["chat"]
    return CHAT_TYPES[settings.type].create(settings, session)


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, PROXY_PAGE, headers={"Content-Type": "text/html; charset=utf-8"}),
        Reply(200, PROXY_PAGE, headers={"Content-Type": "application/json"}),
        Reply(200, "upstream says ok"),
        Reply(200, json={"status": "ok"}),  # JSON, but not the Web API's: no `ok`
    ],
    ids=["html", "html-as-json", "text", "other-json"],
)
async def test_a_slack_api_2xx_without_the_api_json_is_retried(
    answer: Behaviour, tmp_path: Path, fake_chat: FakeChat, session: aiohttp.ClientSession
) -> None:
    fake_chat.script(API_PATH, answer)
    fake_chat.default(API_PATH, SlackApiOk(channel="C1"))
    chat = make_chat(tmp_path, fake_chat, session, "slack-api")

    outcome = await chat.send({"text": "build failed"}, "key-1")
    assert isinstance(outcome, Retry), outcome
    assert "Web API's JSON" in outcome.reason
    assert "<html>" not in outcome.reason
    # The next attempt reaches the API, and is sent.
    assert isinstance(await chat.send({"text": "build failed"}, "key-1"), Sent)
    assert len(fake_chat.requests_to(API_PATH)) == 2


@pytest.mark.parametrize(
    ("kind", "path", "stream", "expected"),
    [
        ("teams", TEAMS_PATH, Stream(202, "text/plain"), Sent),
        ("generic", GENERIC_PATH, Stream(200, "text/html"), Sent),
        ("slack-webhook", SLACK_WEBHOOK_PATH, Stream(200, "text/html"), Retry),  # not "ok"
        (
            "slack-api",
            API_PATH,
            Stream(200, "application/json", prefix=b'{"ok": true, "ts": "1.2", "pad": "'),
            Retry,
        ),
    ],
    ids=["teams", "generic", "slack-webhook", "slack-api"],
)
async def test_a_chat_reads_no_more_than_the_cap_of_an_endless_answer(
    kind: str,
    path: str,
    stream: Stream,
    expected: type,
    tmp_path: Path,
    fake_chat: FakeChat,
    session: aiohttp.ClientSession,
) -> None:
    fake_chat.default(path, stream)
    chat = make_chat(tmp_path, fake_chat, session, kind)

    async with asyncio.timeout(60):
        outcome = await chat.send({"text": "build failed"}, "key-1")
    assert isinstance(outcome, expected), outcome
    # The server learns that the client hung up once the socket buffers are full.
    await asyncio.sleep(0.5)
    assert 0 < fake_chat.streamed < READ_BOUND
