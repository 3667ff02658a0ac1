"""Each chat against a local fake chat server: the request it posts, and how it reads answers.

A delivery is stored and claimed from a real SQLite outbox, then sent by the destination's
lane (`Lane.deliver`: render, send with the destination's timeout, classify).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bridge.chats import CHAT_TYPES
from bridge.config import Config
from bridge.delivery import Dispatcher, Lane
from bridge.jobserv import parse_build
from bridge.metrics import Metrics
from bridge.outcome import Failed, Retry, Sent
from bridge.redact import Redactor
from bridge.render import context
from bridge.store import Delivery
from bridge.store.sqlite import SqliteStore
from tests.conftest import FAILED, PASSED, claimed_delivery, fixture_body, make_config
from tests.fakes.chat_server import (
    Behaviour,
    FakeChat,
    Hang,
    Reply,
    Reset,
    SlackApiError,
    SlackApiOk,
)

DESTINATION = "chat"
TIMEOUT = 0.3
SLACK_TOKEN = "xoxb-1111-2222-abcdefTOKEN"
CHANNEL = "C0123CHAN"
WEBHOOK_PATH = "/services/T000/B000/XXXXSECRET"
GENERIC_PATH = "/hooks/ci"
API_PATH = "/api/chat.postMessage"


@dataclass(frozen=True)
class ChatCase:
    type: str
    path: str  # where the chat posts on the fake

    def settings(self, fake: FakeChat) -> str:
        if self.type == "slack-webhook":
            return f'url = "{fake.url(WEBHOOK_PATH)}"'
        if self.type == "slack-api":
            return (
                f'token = "{SLACK_TOKEN}"\nchannel = "{CHANNEL}"\napi_url = "{fake.url("/api/")}"'
            )
        return (
            f'url = "{fake.url(GENERIC_PATH)}"\n'
            'headers = { "X-Api-Key" = "key-123", "Authorization" = "Token abc" }'
        )


SLACK_WEBHOOK = ChatCase("slack-webhook", WEBHOOK_PATH)
SLACK_API = ChatCase("slack-api", API_PATH)
GENERIC = ChatCase("generic", GENERIC_PATH)
NETWORK_CHATS = [SLACK_WEBHOOK, SLACK_API, GENERIC]


def chat_config(folder: Path, destination: str) -> Config:
    return make_config(
        folder,
        f"""
        [[sources]]
        name = "jobserv"
        secret = "s3cret"
        factories = ["*"]

        [[destinations]]
        name = "{DESTINATION}"
        timeout = "{TIMEOUT}s"
        rate_limit = 0
        {destination}
        """,
    )


@dataclass
class Setup:
    config: Config
    lane: Lane
    delivery: Delivery

    def rendered(self) -> object:
        build = parse_build(self.delivery.body)
        template = self.config.templates[DESTINATION]
        return template.render(
            context(build, event_id=self.delivery.event_id, destination=DESTINATION)
        )


async def prepare(
    folder: Path,
    destination: str,
    store: SqliteStore,
    session: aiohttp.ClientSession,
    fixture: str = FAILED,
) -> Setup:
    """Store one event for the destination, claim it, and give its lane."""
    config = chat_config(folder, destination)
    settings = config.destinations[DESTINATION]
    chats = {DESTINATION: CHAT_TYPES[settings.type].create(settings, session)}
    dispatcher = Dispatcher(config, store, chats, Redactor(config.secrets()), Metrics())
    lane = dispatcher.lanes[DESTINATION]
    delivery = await claimed_delivery(store, fixture_body(fixture), DESTINATION)
    return Setup(config, lane, delivery)


async def setup_chat(
    case: ChatCase,
    fake: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> Setup:
    return await prepare(tmp_path, f'type = "{case.type}"\n{case.settings(fake)}', store, session)


# --- the request each chat posts ---------------------------------------------------------


async def test_slack_webhook_posts_the_slack_message_to_its_url(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await setup_chat(SLACK_WEBHOOK, fake_chat, tmp_path, store, session)
    assert await setup.lane.deliver(setup.delivery) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", WEBHOOK_PATH)
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.json == setup.rendered()
    assert request.json["blocks"][0]["type"] == "header"
    assert "containers-devel" in request.json["text"]


async def test_slack_api_posts_chat_post_message_with_token_and_channel(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    fake_chat.default(API_PATH, SlackApiOk(channel=CHANNEL))
    setup = await setup_chat(SLACK_API, fake_chat, tmp_path, store, session)
    assert await setup.lane.deliver(setup.delivery) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", API_PATH)
    assert request.headers["Authorization"] == f"Bearer {SLACK_TOKEN}"
    rendered = setup.rendered()
    assert isinstance(rendered, dict)
    assert request.json == {"channel": CHANNEL, **rendered}


async def test_generic_posts_the_document_with_its_headers(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await setup_chat(GENERIC, fake_chat, tmp_path, store, session)
    assert await setup.lane.deliver(setup.delivery) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", GENERIC_PATH)
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.headers["X-Api-Key"] == "key-123"
    assert request.headers["Authorization"] == "Token abc"
    assert request.headers["Idempotency-Key"].startswith(f"jobserv-bridge-{setup.delivery.id}-")
    assert request.json == setup.rendered()
    assert request.json["status"] == "FAILED"


async def test_generic_idempotency_keys_repeat_for_a_retry_only(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await setup_chat(GENERIC, fake_chat, tmp_path, store, session)
    fake_chat.script(GENERIC_PATH, Reply(502, "bad gateway"))
    assert isinstance(await setup.lane.deliver(setup.delivery), Retry)
    assert await setup.lane.deliver(setup.delivery) == Sent()
    # A new, empty store numbers its deliveries from 1 again: the same id, another build.
    other_build = json.loads(fixture_body(PASSED))
    fresh = SqliteStore(tmp_path / "fresh.sqlite3")
    await fresh.open(serving=True)
    try:
        renumbered = await claimed_delivery(fresh, json.dumps(other_build).encode(), DESTINATION)
    finally:
        await fresh.close()
    assert renumbered.id == setup.delivery.id
    assert await setup.lane.deliver(renumbered) == Sent()

    first, retried, renumbered_request = (r.headers["Idempotency-Key"] for r in fake_chat.requests)
    # A receiver that honours the key drops a retry of a message it took, and nothing else.
    assert first == retried
    assert renumbered_request != first


async def test_generic_without_headers_sends_no_authorization(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    destination = f'type = "generic"\nurl = "{fake_chat.url(GENERIC_PATH)}"'
    setup = await prepare(tmp_path, destination, store, session)
    assert await setup.lane.deliver(setup.delivery) == Sent()
    [request] = fake_chat.requests
    assert "Authorization" not in request.headers
    assert request.json == setup.rendered()


@pytest.mark.parametrize("fixture", [FAILED, PASSED])
async def test_console_prints_the_message_to_stdout(
    fixture: str,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup = await prepare(tmp_path, 'type = "console"', store, session, fixture)
    assert await setup.lane.deliver(setup.delivery) == Sent()
    printed = capsys.readouterr().out
    rendered = setup.rendered()
    assert isinstance(rendered, str)
    assert printed == rendered.rstrip("\n") + "\n"
    build = json.loads(fixture_body(fixture))
    assert build["web_url"] in printed
    assert build["status"] in printed


# --- how each chat reads the answers -----------------------------------------------------


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=lambda c: c.type)
async def test_a_success_is_sent(
    case: ChatCase,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    answer: Behaviour = SlackApiOk() if case is SLACK_API else Reply(200, "ok")
    fake_chat.script(case.path, answer)
    setup = await setup_chat(case, fake_chat, tmp_path, store, session)
    assert await setup.lane.deliver(setup.delivery) == Sent()


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=lambda c: c.type)
@pytest.mark.parametrize("retry_after", ["2", "0.5"])
async def test_429_is_retried_after_retry_after(
    case: ChatCase,
    retry_after: str,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    headers = {"Retry-After": retry_after}
    answer: Behaviour = (
        SlackApiError("ratelimited", status=429, headers=headers)
        if case is SLACK_API
        else Reply(429, "rate limited", headers=headers)
    )
    fake_chat.script(case.path, answer)
    setup = await setup_chat(case, fake_chat, tmp_path, store, session)
    outcome = await setup.lane.deliver(setup.delivery)
    assert isinstance(outcome, Retry)
    assert outcome.after == float(retry_after)


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=lambda c: c.type)
@pytest.mark.parametrize("status", [500, 503])
async def test_a_server_error_is_retried(
    case: ChatCase,
    status: int,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    fake_chat.script(case.path, Reply(status, "internal trouble"))
    setup = await setup_chat(case, fake_chat, tmp_path, store, session)
    outcome = await setup.lane.deliver(setup.delivery)
    assert isinstance(outcome, Retry)
    assert str(status) in outcome.reason


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=lambda c: c.type)
async def test_not_found_fails_for_good(
    case: ChatCase,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    fake_chat.script(case.path, Reply(404, "no_service"))
    setup = await setup_chat(case, fake_chat, tmp_path, store, session)
    outcome = await setup.lane.deliver(setup.delivery)
    assert isinstance(outcome, Failed)
    assert "404" in outcome.reason


@pytest.mark.parametrize(("status", "body"), [(403, "invalid_token"), (410, "channel_is_archived")])
async def test_slack_webhook_errors_fail_for_good_naming_the_error(
    status: int,
    body: str,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    fake_chat.script(WEBHOOK_PATH, Reply(status, body))
    setup = await setup_chat(SLACK_WEBHOOK, fake_chat, tmp_path, store, session)
    outcome = await setup.lane.deliver(setup.delivery)
    assert isinstance(outcome, Failed)
    assert body in outcome.reason


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, "<html><body>Welcome to the proxy</body></html>"),
        Reply(200, ""),
        Reply(204, ""),
        Reply(200, json={"ok": True}),
    ],
    ids=["proxy-page", "empty-200", "204", "json"],
)
async def test_slack_webhook_2xx_without_slacks_ok_is_retried(
    answer: Reply,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    """Slack answers `200 ok`: any other 2xx came from something on the way (a proxy)."""
    fake_chat.script(WEBHOOK_PATH, answer)
    setup = await setup_chat(SLACK_WEBHOOK, fake_chat, tmp_path, store, session)
    outcome = await setup.lane.deliver(setup.delivery)
    assert isinstance(outcome, Retry)
    assert f"HTTP {answer.status}" in outcome.reason
    assert len(fake_chat.requests_to(WEBHOOK_PATH)) == 1


@pytest.mark.parametrize(
    "error", ["channel_not_found", "invalid_auth", "not_in_channel", "invalid_blocks"]
)
async def test_slack_api_ok_false_fails_for_good(
    error: str,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    fake_chat.script(API_PATH, SlackApiError(error))  # HTTP 200, ok: false
    setup = await setup_chat(SLACK_API, fake_chat, tmp_path, store, session)
    assert await setup.lane.deliver(setup.delivery) == Failed(f"slack: {error}")


async def test_slack_api_ratelimited_with_200_is_retried_after_retry_after(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    fake_chat.script(API_PATH, SlackApiError("ratelimited", headers={"Retry-After": "4"}))
    setup = await setup_chat(SLACK_API, fake_chat, tmp_path, store, session)
    outcome = await setup.lane.deliver(setup.delivery)
    assert isinstance(outcome, Retry)
    assert outcome.after == 4.0


async def test_slack_api_internal_error_is_retried(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    fake_chat.script(API_PATH, SlackApiError("internal_error", status=500))
    setup = await setup_chat(SLACK_API, fake_chat, tmp_path, store, session)
    assert isinstance(await setup.lane.deliver(setup.delivery), Retry)


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=lambda c: c.type)
async def test_a_reset_connection_is_retried(
    case: ChatCase,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    fake_chat.script(case.path, Reset())
    setup = await setup_chat(case, fake_chat, tmp_path, store, session)
    outcome = await setup.lane.deliver(setup.delivery)
    assert isinstance(outcome, Retry)
    assert "connection error" in outcome.reason
    assert len(fake_chat.requests_to(case.path)) == 1


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=lambda c: c.type)
async def test_a_hang_ends_as_a_retry_at_the_destination_timeout(
    case: ChatCase,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    fake_chat.script(case.path, Hang())
    setup = await setup_chat(case, fake_chat, tmp_path, store, session)
    started = time.monotonic()
    async with asyncio.timeout(TIMEOUT + 5):  # fail, rather than hang, without the timeout
        outcome = await setup.lane.deliver(setup.delivery)
    took = time.monotonic() - started
    assert isinstance(outcome, Retry)
    assert f"no answer within {TIMEOUT:g}s" in outcome.reason
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 1.0
    assert len(fake_chat.requests_to(case.path)) == 1
