"""Every chat against a local fake chat server: one table of cases (a chat's settings, where
it posts on the fake, how it answers a message it took), the request each chat posts, and
how each reads the answers, errors and rate limits included.

Each chat gets a real stored delivery, claimed from a real SQLite outbox and sent by its
destination's lane (`Lane.deliver`: render, send with the destination's timeout, classify).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.chats import CHAT_TYPES
from bridge.cli import main
from bridge.config import Config, ConfigError
from bridge.delivery import Dispatcher, Lane
from bridge.jobserv import parse_build
from bridge.metrics import Metrics
from bridge.outcome import DEFAULT_RETRY_AFTER, Failed, Retry, Sent
from bridge.redact import Redactor
from bridge.render import context
from bridge.server import RUNTIME, create_app
from bridge.store import Delivery
from bridge.store.sqlite import SqliteStore
from tests.conftest import (
    FAILED,
    FIXTURES,
    PASSED,
    SECRET,
    claimed_delivery,
    fixture_body,
    make_config,
    signed_headers,
)
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
TIMEOUT = 0.5
SLACK_TOKEN = "xoxb-1111-2222-abcdefTOKEN"
CHANNEL = "C0123CHAN"
WEBHOOK_PATH = "/services/T000/B000/XXXXSECRET"
GENERIC_PATH = "/hooks/ci"
API_PATH = "/api/chat.postMessage"
ROOM_ID = "!ci-room:example.org"
MATRIX_TOKEN = "syt_bot_token_SECRET"
ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]


def too_many(headers: Mapping[str, str]) -> Behaviour:
    return Reply(429, "slow down", headers=headers)


@dataclass(frozen=True)
class ChatCase:
    """One chat type: how to configure it against the fake, where it sends, how it succeeds."""

    type: str
    path: str  # where the chat's requests arrive on the fake
    success: Behaviour  # the chat's own answer to a message it took
    keys: str  # its settings, with {url} for the fake's base URL
    # The chat's own "slow down" answer, with these headers.
    rate_limited: Callable[[Mapping[str, str]], Behaviour] = field(default=too_many)

    def destination(self, fake: FakeChat, name: str = DESTINATION, extra: str = "") -> str:
        return (
            f'[[destinations]]\nname = "{name}"\ntype = "{self.type}"\n'
            f'timeout = "{TIMEOUT}s"\nrate_limit = 0\n'
            + self.keys.format(url=fake.base_url)
            + f"\n{extra}\n"
        )


SLACK_WEBHOOK = ChatCase(
    "slack-webhook", WEBHOOK_PATH, Reply(200, "ok"), f'url = "{{url}}{WEBHOOK_PATH}"'
)
SLACK_API = ChatCase(
    "slack-api",
    API_PATH,
    SlackApiOk(channel=CHANNEL),
    f'token = "{SLACK_TOKEN}"\nchannel = "{CHANNEL}"\napi_url = "{{url}}/api/"',
    lambda headers: SlackApiError("ratelimited", status=429, headers=headers),
)
GENERIC = ChatCase(
    "generic",
    GENERIC_PATH,
    Reply(200, "ok"),
    f'url = "{{url}}{GENERIC_PATH}"\n'
    'headers = {{ "X-Api-Key" = "key-123", "Authorization" = "Token abc" }}',
)
TEAMS = ChatCase(
    "teams",
    "/workflows/abc/triggers/manual/paths/invoke",
    Reply(202, ""),
    'url = "{url}/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=SIGSECRET"',
)
DISCORD = ChatCase(
    "discord",
    "/api/webhooks/1234/DISCORDSECRET",
    Reply(200, json={"id": "1", "type": 0, "content": "", "embeds": []}),
    'url = "{url}/api/webhooks/1234/DISCORDSECRET"\n'
    'username = "JobServ"\navatar_url = "https://example.com/fio.png"',
)
GOOGLE_CHAT = ChatCase(
    "googlechat",
    "/v1/spaces/AAAA/messages",
    Reply(200, json={"name": "spaces/AAAA/messages/x.x", "text": ""}),
    'url = "{url}/v1/spaces/AAAA/messages?key=GKEY&token=GTOKENSECRET"',
)
MATTERMOST = ChatCase(
    "mattermost",
    "/hooks/mmSECRET",
    Reply(200, "ok"),
    'url = "{url}/hooks/mmSECRET"\nchannel = "town-square"\nusername = "ci"\n'
    'icon_url = "https://example.com/ci.png"',
)
ROCKET_CHAT = ChatCase(
    "rocketchat",
    "/hooks/rc-id/rcSECRET",
    Reply(200, json={"success": True}),
    'url = "{url}/hooks/rc-id/rcSECRET"',
)
MATRIX_PREFIX = f"/_matrix/client/v3/rooms/{ROOM_ID}/send/m.room.message/"
MATRIX = ChatCase(
    "matrix",
    MATRIX_PREFIX,  # followed by the transaction id
    Reply(200, json={"event_id": "$event:example.org"}),
    f'homeserver = "{{url}}"\nroom_id = "{ROOM_ID}"\ntoken = "{MATRIX_TOKEN}"',
)
# The chats besides Slack and the generic webhook, each with rate limits of its own.
CASES = [TEAMS, DISCORD, GOOGLE_CHAT, MATTERMOST, ROCKET_CHAT, MATRIX]
NETWORK_CHATS = [SLACK_WEBHOOK, SLACK_API, GENERIC, *CASES]


def by_type(case: ChatCase) -> str:
    return case.type


def requests_of(fake: FakeChat, case: ChatCase) -> list[Any]:
    return [r for r in fake.requests if r.path.startswith(case.path)]


def chat_config(folder: Path, destinations: str) -> Config:
    return make_config(
        folder,
        f"""
[[sources]]
name = "jobserv"
secret = "{SECRET}"
factories = ["*"]

{destinations}
""",
    )


@dataclass
class Setup:
    config: Config
    lane: Lane
    delivery: Delivery
    metrics: Metrics

    def rendered(self) -> Any:
        build = parse_build(self.delivery.body)
        return self.config.templates[DESTINATION].render(
            context(build, event_id=self.delivery.event_id, destination=DESTINATION)
        )


async def stored_delivery(store: SqliteStore, body: bytes) -> Delivery:
    return await claimed_delivery(store, body, DESTINATION)


async def prepare_destination(
    destination: str,
    folder: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
    body: bytes | None = None,
) -> Setup:
    """Store one event for the destination (its TOML), claim it, and give its lane."""
    config = chat_config(folder, destination)
    settings = config.destinations[DESTINATION]
    chats = {DESTINATION: CHAT_TYPES[settings.type].create(settings, session)}
    metrics = Metrics()
    dispatcher = Dispatcher(config, store, chats, Redactor(config.secrets()), metrics)
    delivery = await stored_delivery(store, fixture_body(FAILED) if body is None else body)
    return Setup(config, dispatcher.lanes[DESTINATION], delivery, metrics)


async def prepare(
    case: ChatCase,
    fake: FakeChat,
    folder: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
    body: bytes | None = None,
    extra: str = "",
) -> Setup:
    """Store one event for the chat's destination, claim it, and give its lane."""
    return await prepare_destination(
        case.destination(fake, extra=extra), folder, store, session, body
    )


async def deliver(setup: Setup, fake: FakeChat, case: ChatCase, *behaviours: Behaviour) -> Any:
    """Send the delivery once, the fake answering with `behaviours` (else its default)."""
    if case is MATRIX:
        fake.script(MATRIX_PREFIX + matrix_txn(setup), *behaviours)
    else:
        fake.script(case.path, *behaviours)
    return await setup.lane.deliver(setup.delivery)


def matrix_txn(setup: Setup) -> str:
    """The transaction id the delivery is sent with."""
    return setup.delivery.key


# --- the request each chat posts ---------------------------------------------------------


async def test_slack_webhook_posts_the_slack_message_to_its_url(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(SLACK_WEBHOOK, fake_chat, tmp_path, store, session)
    assert await deliver(setup, fake_chat, SLACK_WEBHOOK, SLACK_WEBHOOK.success) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", WEBHOOK_PATH)
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.json == setup.rendered()
    assert request.json["blocks"][0]["type"] == "header"
    assert "containers-devel" in request.json["text"]


async def test_slack_api_posts_chat_post_message_with_token_and_channel(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(SLACK_API, fake_chat, tmp_path, store, session)
    assert await deliver(setup, fake_chat, SLACK_API, SLACK_API.success) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", API_PATH)
    assert request.headers["Authorization"] == f"Bearer {SLACK_TOKEN}"
    rendered = setup.rendered()
    assert isinstance(rendered, dict)
    assert request.json == {"channel": CHANNEL, **rendered}


async def test_generic_posts_the_document_with_its_headers(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(GENERIC, fake_chat, tmp_path, store, session)
    assert await setup.lane.deliver(setup.delivery) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", GENERIC_PATH)
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.headers["X-Api-Key"] == "key-123"
    assert request.headers["Authorization"] == "Token abc"
    assert request.headers["Idempotency-Key"] == setup.delivery.key
    assert request.json == setup.rendered()
    assert request.json["status"] == "FAILED"


async def test_generic_idempotency_keys_repeat_for_a_retry_only(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(GENERIC, fake_chat, tmp_path, store, session)
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
    destination = (
        f'[[destinations]]\nname = "{DESTINATION}"\ntype = "generic"\n'
        f'url = "{fake_chat.url(GENERIC_PATH)}"'
    )
    setup = await prepare_destination(destination, tmp_path, store, session)
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
    console = f'[[destinations]]\nname = "{DESTINATION}"\ntype = "console"'
    setup = await prepare_destination(console, tmp_path, store, session, fixture_body(fixture))
    assert await setup.lane.deliver(setup.delivery) == Sent()
    printed = capsys.readouterr().out
    rendered = setup.rendered()
    assert isinstance(rendered, str)
    assert printed == rendered.rstrip("\n") + "\n"
    build = json.loads(fixture_body(fixture))
    assert build["web_url"] in printed
    assert build["status"] in printed


async def test_teams_posts_an_adaptive_card_to_the_workflow_url(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(TEAMS, fake_chat, tmp_path, store, session)
    assert await deliver(setup, fake_chat, TEAMS, TEAMS.success) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", TEAMS.path)
    assert request.query == {"api-version": "1", "sig": "SIGSECRET"}
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.json == setup.rendered()
    message = request.json
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert all(isinstance(element.get("type"), str) for element in card["body"])
    header = card["body"][0]["inlines"][0]["text"]
    assert header == "andy-corp / containers-devel #68 FAILED"
    build_url = "https://ci.foundries.io/projects/andy-corp/lmp/builds/68"
    assert {"type": "Action.OpenUrl", "title": "Open build #68", "url": build_url} in card[
        "actions"
    ]
    run_url = "https://ci.foundries.io/projects/andy-corp/lmp/builds/68/build-armhf/"
    assert run_url in json.dumps(card["body"])


async def test_discord_posts_embeds_and_waits_for_the_answer(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(DISCORD, fake_chat, tmp_path, store, session)
    assert await deliver(setup, fake_chat, DISCORD, DISCORD.success) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", DISCORD.path)
    assert request.query == {"wait": "true"}  # so that Discord reports errors
    message = request.json
    assert message == {
        "username": "JobServ",
        "avatar_url": "https://example.com/fio.png",
        **setup.rendered(),
    }
    assert message["allowed_mentions"] == {"parse": []}  # names in a build never ping
    [embed] = message["embeds"]
    assert embed["title"] == "andy-corp / containers-devel #68 FAILED"
    assert embed["url"] == "https://ci.foundries.io/projects/andy-corp/lmp/builds/68"
    assert embed["color"] == 0xD73A49
    assert embed["timestamp"] == "2021-07-27T09:03:20+00:00"
    [field] = embed["fields"]
    assert field["name"] == "✖ build-armhf"
    assert (
        "[console log](https://api.foundries.io/projects/andy-corp/lmp/builds/68/runs/"
        "build-armhf/console.log)" in field["value"]
    )
    assert discord_problems(message) == []


async def test_discord_passed_build_is_green(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(DISCORD, fake_chat, tmp_path, store, session, fixture_body(PASSED))
    assert await deliver(setup, fake_chat, DISCORD, DISCORD.success) == Sent()
    [embed] = fake_chat.requests[0].json["embeds"]
    assert embed["color"] == 0x2EA043
    assert embed["fields"] == []


async def test_google_chat_posts_a_card_keeping_key_and_token(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(GOOGLE_CHAT, fake_chat, tmp_path, store, session)
    assert await deliver(setup, fake_chat, GOOGLE_CHAT, GOOGLE_CHAT.success) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", GOOGLE_CHAT.path)
    assert request.query == {"key": "GKEY", "token": "GTOKENSECRET"}
    assert request.json == setup.rendered()
    message = request.json
    build_url = "https://ci.foundries.io/projects/andy-corp/lmp/builds/68"
    assert message["fallbackText"].startswith("andy-corp / containers-devel #68 FAILED")
    [item] = message["cardsV2"]
    card = item["card"]
    assert card["header"]["title"] == "andy-corp / containers-devel #68 FAILED"
    widgets = [w for section in card["sections"] for w in section["widgets"]]
    assert all(len(widget) == 1 for widget in widgets)  # each widget is one kind
    [button_list] = [w["buttonList"] for w in widgets if "buttonList" in w]
    assert button_list["buttons"][0]["onClick"] == {"openLink": {"url": build_url}}
    [run] = [w["decoratedText"] for w in widgets if "build-armhf" in json.dumps(w)]
    assert (
        '<a href="https://ci.foundries.io/projects/andy-corp/lmp/builds/68/build-armhf/">'
        "build-armhf</a>" in run["text"]
    )


async def test_google_chat_escapes_markup_in_build_data(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    data = json.loads(fixture_body(FAILED))
    data["runs"][1]["name"] = "<b>bold</b> & co"
    setup = await prepare(
        GOOGLE_CHAT, fake_chat, tmp_path, store, session, json.dumps(data).encode()
    )
    assert await deliver(setup, fake_chat, GOOGLE_CHAT, GOOGLE_CHAT.success) == Sent()
    text = json.dumps(fake_chat.requests[0].json, ensure_ascii=False)
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co</a>" in text
    assert "<b>bold</b>" not in text


async def test_mattermost_posts_markdown_with_its_overrides(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    data = json.loads(fixture_body(FAILED))
    data["runs"][1]["name"] = "build_*armhf*"
    setup = await prepare(
        MATTERMOST, fake_chat, tmp_path, store, session, json.dumps(data).encode()
    )
    assert await deliver(setup, fake_chat, MATTERMOST, MATTERMOST.success) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", MATTERMOST.path)
    message = request.json
    assert message == {
        "channel": "town-square",
        "username": "ci",
        "icon_url": "https://example.com/ci.png",
        **setup.rendered(),
    }
    build_url = "https://ci.foundries.io/projects/andy-corp/lmp/builds/68"
    assert "](https://ci.foundries.io/projects/andy-corp/lmp/builds/68): 1 of 3" in message["text"]
    [attachment] = message["attachments"]
    assert attachment["title_link"] == build_url
    assert attachment["color"] == "#d73a49"
    # The run's name shows as written: its Markdown characters are escaped.
    assert "[build\\_\\*armhf\\*](https://ci.foundries.io/" in attachment["text"]


async def test_rocket_chat_posts_text_and_an_attachment(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(ROCKET_CHAT, fake_chat, tmp_path, store, session)
    assert await deliver(setup, fake_chat, ROCKET_CHAT, ROCKET_CHAT.success) == Sent()
    [request] = fake_chat.requests
    assert (request.method, request.path) == ("POST", ROCKET_CHAT.path)
    assert request.json == setup.rendered()
    assert "andy-corp / containers-devel #68 FAILED" in request.json["text"]
    [attachment] = request.json["attachments"]
    assert attachment["title_link"] == "https://ci.foundries.io/projects/andy-corp/lmp/builds/68"
    assert attachment["title"].startswith("Build #68")
    assert "build-armhf" in attachment["text"]


async def test_matrix_puts_a_notice_into_the_room_with_a_transaction_id(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(MATRIX, fake_chat, tmp_path, store, session)
    assert await deliver(setup, fake_chat, MATRIX, MATRIX.success) == Sent()
    [request] = fake_chat.requests
    assert request.method == "PUT"
    assert request.path.startswith(MATRIX_PREFIX)  # the room id, decoded
    txn = request.path.removeprefix(MATRIX_PREFIX)
    assert txn == setup.delivery.key
    assert txn.startswith("jobserv-bridge-")
    assert "/" not in txn
    assert request.headers["Authorization"] == f"Bearer {MATRIX_TOKEN}"
    content = request.json
    assert content == setup.rendered()
    assert content["msgtype"] == "m.notice"
    assert content["format"] == "org.matrix.custom.html"
    assert content["body"].startswith("andy-corp / containers-devel #68 FAILED\n")
    assert (
        '<a href="https://ci.foundries.io/projects/andy-corp/lmp/builds/68">Build #68</a>'
        in content["formatted_body"]
    )


async def test_matrix_sends_the_room_id_percent_encoded(tmp_path: Path) -> None:
    """`!` and `:` in a room id are sent encoded (a server of its own: FakeChat decodes paths)."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"event_id": "$1"})

    app = web.Application()
    app.router.add_route("PUT", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        fake_base = f"http://127.0.0.1:{port}"
        config = chat_config(
            tmp_path,
            f'[[destinations]]\nname = "{DESTINATION}"\ntype = "matrix"\n'
            f'homeserver = "{fake_base}"\nroom_id = "{ROOM_ID}"\ntoken = "t"',
        )
        settings = config.destinations[DESTINATION]
        async with aiohttp.ClientSession() as client:
            chat = CHAT_TYPES["matrix"].create(settings, client)
            notice = {"msgtype": "m.notice", "body": "hi"}
            assert await chat.send(notice, "jobserv-bridge-7") == Sent()
    finally:
        await runner.cleanup()
    [path] = seen
    prefix = "/_matrix/client/v3/rooms/%21ci-room%3Aexample.org/send/m.room.message/"
    assert path == prefix + "jobserv-bridge-7"


async def test_matrix_retries_a_delivery_with_the_same_transaction_id(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(MATRIX, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, MATRIX, Reply(502, "bad gateway"))
    assert isinstance(outcome, Retry)
    assert await deliver(setup, fake_chat, MATRIX, MATRIX.success) == Sent()
    first, second = fake_chat.requests
    # The homeserver sees a retransmission of one event, not a second message.
    assert first.path == second.path
    assert first.body == second.body


async def test_matrix_transaction_ids_differ_between_deliveries_and_stores(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    setup = await prepare(MATRIX, fake_chat, tmp_path, store, session)
    other_build = json.loads(fixture_body(FAILED))
    other_build["build_id"] = 69
    other_build["url"] = "https://api.foundries.io/projects/andy-corp/lmp/builds/69/"
    other_build["web_url"] = "https://ci.foundries.io/projects/andy-corp/lmp/builds/69"
    assert await deliver(setup, fake_chat, MATRIX, MATRIX.success) == Sent()
    await store.mark_sent(setup.delivery.id, time.time())
    second = await stored_delivery(store, json.dumps(other_build).encode())
    assert await setup.lane.deliver(second) == Sent()
    # A new, empty store numbers its deliveries from 1 again: the same id, another build.
    fresh = SqliteStore(tmp_path / "fresh.sqlite3")
    await fresh.open(serving=True)
    try:
        renumbered = await stored_delivery(fresh, json.dumps(other_build).encode())
    finally:
        await fresh.close()
    assert renumbered.id == setup.delivery.id
    assert await setup.lane.deliver(renumbered) == Sent()
    paths = [r.path for r in fake_chat.requests]
    assert len(set(paths)) == 3, paths


async def test_matrix_end_to_end_a_lost_answer_is_retried_without_a_second_message(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    """Through the app: a 500 then a success; the two attempts carry one transaction id."""
    config = make_config(
        tmp_path,
        f"""
[delivery]
retry_initial = "0.05s"
retry_max = "0.1s"
poll_interval = "0.05s"
[[sources]]
name = "jobserv"
secret = "{SECRET}"
factories = ["*"]
{MATRIX.destination(fake_chat)}
[[routes]]
destinations = ["{DESTINATION}"]
""",
    )
    fake_chat.default(None, Reply(500, json={"errcode": "M_UNKNOWN", "error": "hiccup"}))
    client = await aiohttp_client(create_app(config))
    body = fixture_body(FAILED)
    response = await client.post("/webhook", data=body, headers=signed_headers(body))
    assert response.status == 202
    await fake_chat.wait_for(1)
    fake_chat.default(None, MATRIX.success)
    await fake_chat.wait_for(2)
    store = client.app[RUNTIME].store
    deadline = time.monotonic() + 5
    while not await store.list_deliveries(state="sent"):
        assert time.monotonic() < deadline, "the delivery was never marked sent"
        await asyncio.sleep(0.02)
    paths = {r.path for r in fake_chat.requests}
    assert len(paths) == 1
    assert paths.pop().startswith(MATRIX_PREFIX + "jobserv-bridge-")


# --- how each chat reads the answers: the same for every chat ------------------------------


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=by_type)
async def test_the_chats_own_success_answer_is_sent(
    case: ChatCase,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    setup = await prepare(case, fake_chat, tmp_path, store, session)
    assert await deliver(setup, fake_chat, case, case.success) == Sent()
    assert len(requests_of(fake_chat, case)) == 1


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=by_type)
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_server_error_is_retried(
    case: ChatCase,
    status: int,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    setup = await prepare(case, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, case, Reply(status, "upstream trouble"))
    assert isinstance(outcome, Retry)
    assert str(status) in outcome.reason


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=by_type)
@pytest.mark.parametrize("retry_after", ["7", "2", "0.5"])
async def test_a_429_is_retried_after_retry_after(
    case: ChatCase,
    retry_after: str,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    setup = await prepare(case, fake_chat, tmp_path, store, session)
    answer = case.rate_limited({"Retry-After": retry_after})
    outcome = await deliver(setup, fake_chat, case, answer)
    assert isinstance(outcome, Retry)
    assert outcome.after == float(retry_after)


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=by_type)
@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_a_client_error_fails_for_good(
    case: ChatCase,
    status: int,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    setup = await prepare(case, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, case, Reply(status, "no such hook"))
    assert isinstance(outcome, Failed)
    assert f"HTTP {status}" in outcome.reason
    if case is not SLACK_API:  # the Web API's errors are its JSON's `error`, below
        assert "no such hook" in outcome.reason


# Matrix PUTs: aiohttp itself sends an idempotent request again on a dropped connection.
@pytest.mark.parametrize("case", [c for c in NETWORK_CHATS if c is not MATRIX], ids=by_type)
async def test_a_reset_connection_is_retried(
    case: ChatCase,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    setup = await prepare(case, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, case, Reset())
    assert isinstance(outcome, Retry)
    assert "connection error" in outcome.reason
    assert len(requests_of(fake_chat, case)) == 1


@pytest.mark.parametrize("case", NETWORK_CHATS, ids=by_type)
async def test_a_hang_ends_as_a_retry_at_the_destination_timeout(
    case: ChatCase,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    setup = await prepare(case, fake_chat, tmp_path, store, session)
    started = time.monotonic()
    async with asyncio.timeout(TIMEOUT + 5):  # fail, rather than hang, without the timeout
        outcome = await deliver(setup, fake_chat, case, Hang())
    took = time.monotonic() - started
    assert isinstance(outcome, Retry)
    assert f"no answer within {TIMEOUT:g}s" in outcome.reason
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 1.0
    assert len(requests_of(fake_chat, case)) == 1


# --- answers of one chat's own ---------------------------------------------------------------


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
    setup = await prepare(SLACK_WEBHOOK, fake_chat, tmp_path, store, session)
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
    setup = await prepare(SLACK_WEBHOOK, fake_chat, tmp_path, store, session)
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
    setup = await prepare(SLACK_API, fake_chat, tmp_path, store, session)
    assert await setup.lane.deliver(setup.delivery) == Failed(f"slack: {error}")


async def test_slack_api_ratelimited_with_200_is_retried_after_retry_after(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    fake_chat.script(API_PATH, SlackApiError("ratelimited", headers={"Retry-After": "4"}))
    setup = await prepare(SLACK_API, fake_chat, tmp_path, store, session)
    outcome = await setup.lane.deliver(setup.delivery)
    assert isinstance(outcome, Retry)
    assert outcome.after == 4.0


async def test_slack_api_internal_error_is_retried(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    fake_chat.script(API_PATH, SlackApiError("internal_error", status=500))
    setup = await prepare(SLACK_API, fake_chat, tmp_path, store, session)
    assert isinstance(await setup.lane.deliver(setup.delivery), Retry)


@pytest.mark.parametrize(
    ("answer", "after"),
    [
        # Discord's body field is the precise one (Retry-After is rounded up).
        (Reply(429, json={"message": "rate limited", "retry_after": 0.75, "global": False},
               headers={"Retry-After": "1", "X-RateLimit-Reset-After": "0.750"}), 0.75),
        # A 429 from in front of Discord, without the JSON body: its reset header.
        (Reply(429, "<html>slow down</html>", headers={"X-RateLimit-Reset-After": "2.5"}), 2.5),
        (Reply(429, "<html>slow down</html>", headers={"Retry-After": "3"}), 3.0),
        (Reply(429, "<html>slow down</html>"), DEFAULT_RETRY_AFTER),
    ],
)  # fmt: skip
async def test_discord_rate_limits_are_retried_when_discord_says(
    answer: Reply,
    after: float,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    setup = await prepare(DISCORD, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, DISCORD, answer)
    assert isinstance(outcome, Retry)
    assert outcome.after == pytest.approx(after)


async def test_discord_invalid_form_body_fails_naming_the_problem(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    error = {"code": 50035, "message": "Invalid Form Body", "errors": {"embeds": {}}}
    setup = await prepare(DISCORD, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, DISCORD, Reply(400, json=error))
    assert isinstance(outcome, Failed)
    assert "Invalid Form Body" in outcome.reason


async def test_matrix_limit_exceeded_is_retried_after_retry_after_ms(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    error = {"errcode": "M_LIMIT_EXCEEDED", "error": "Too many requests", "retry_after_ms": 1500}
    setup = await prepare(MATRIX, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, MATRIX, Reply(429, json=error))
    assert isinstance(outcome, Retry)
    assert outcome.after == 1.5
    assert "M_LIMIT_EXCEEDED" in outcome.reason


@pytest.mark.parametrize(
    ("status", "errcode"), [(401, "M_UNKNOWN_TOKEN"), (403, "M_FORBIDDEN"), (404, "M_NOT_FOUND")]
)
async def test_matrix_auth_and_room_errors_fail_for_good(
    status: int,
    errcode: str,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    setup = await prepare(MATRIX, fake_chat, tmp_path, store, session)
    error = {"errcode": errcode, "error": "nope"}
    outcome = await deliver(setup, fake_chat, MATRIX, Reply(status, json=error))
    assert isinstance(outcome, Failed)
    assert errcode in outcome.reason


@pytest.mark.parametrize("status", [200, 400])
async def test_rocket_chat_success_false_fails_for_good(
    status: int,
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    error = {"success": False, "error": "Invalid integration id or token provided."}
    setup = await prepare(ROCKET_CHAT, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, ROCKET_CHAT, Reply(status, json=error))
    assert isinstance(outcome, Failed)
    assert "Invalid integration id or token provided." in outcome.reason


async def test_rocket_chat_rate_limit_waits_for_its_reset_time(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    reset_ms = int((time.time() + 20) * 1000)
    error = {"success": False, "error": "Error, too many requests. [error-too-many-requests]"}
    answer_ = Reply(429, json=error, headers={"X-RateLimit-Reset": str(reset_ms)})
    setup = await prepare(ROCKET_CHAT, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, ROCKET_CHAT, answer_)
    assert isinstance(outcome, Retry)
    assert outcome.after is not None
    assert 15 < outcome.after <= 20


async def test_google_chat_resource_exhausted_waits_the_default(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    error = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted",
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    setup = await prepare(GOOGLE_CHAT, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, GOOGLE_CHAT, Reply(429, json=error))
    assert isinstance(outcome, Retry)
    assert outcome.after == DEFAULT_RETRY_AFTER
    assert "RESOURCE_EXHAUSTED" in outcome.reason


async def test_mattermost_error_body_is_kept_in_the_reason(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    error = {
        "id": "web.incoming_webhook.disabled.app_error",
        "message": "Incoming webhooks have been disabled by the system admin.",
        "status_code": 501,
    }
    setup = await prepare(MATTERMOST, fake_chat, tmp_path, store, session)
    outcome = await deliver(setup, fake_chat, MATTERMOST, Reply(400, json=error))
    assert isinstance(outcome, Failed)
    assert "Incoming webhooks have been disabled" in outcome.reason


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "rate_limit", "burst"),
    [
        (TEAMS, 1.0, 2),
        (DISCORD, 2.0, 5),
        (GOOGLE_CHAT, 1.0, 1),
        (MATTERMOST, 5.0, 10),
        (ROCKET_CHAT, 2.0, 5),
        (MATRIX, 0.2, 10),
    ],
    ids=lambda value: value.type if isinstance(value, ChatCase) else str(value),
)
def test_each_chat_has_rate_limits_of_its_own(
    case: ChatCase, rate_limit: float, burst: int, tmp_path: Path
) -> None:
    keys = case.keys.format(url="https://chat.example.com")
    config = chat_config(
        tmp_path, f'[[destinations]]\nname = "{DESTINATION}"\ntype = "{case.type}"\n{keys}'
    )
    settings = config.destinations[DESTINATION]
    assert (settings.rate_limit, settings.burst) == (rate_limit, burst)
    assert settings.max_failed_runs == 20


@pytest.mark.parametrize("case", CASES, ids=by_type)
def test_the_chats_secrets_are_redacted(case: ChatCase, tmp_path: Path) -> None:
    keys = case.keys.format(url="https://chat.example.com")
    config = chat_config(
        tmp_path, f'[[destinations]]\nname = "{DESTINATION}"\ntype = "{case.type}"\n{keys}'
    )
    redact = Redactor(config.secrets())
    secret_url = keys.split('"')[1] if case is not MATRIX else MATRIX_TOKEN
    assert "SECRET" in secret_url
    assert "SECRET" not in redact(f"posting to {secret_url} failed")


def test_matrix_needs_a_room_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        chat_config(
            tmp_path,
            '[[destinations]]\nname = "m"\ntype = "matrix"\nhomeserver = "https://m.org"\n'
            'room_id = "#alias:m.org"\ntoken = "t"',
        )
    assert (
        "destinations[0].room_id: expected a room id like !abcdef:example.org (not an #alias)"
        in (raised.value.problems)
    )


# --- preview -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=by_type)
def test_render_previews_the_exact_body_for_each_chat(
    case: ChatCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = case.keys.format(url="https://chat.example.com")
    config_text = f"""
[[sources]]
name = "jobserv"
secret = "{SECRET}"
factories = ["*"]
[[destinations]]
name = "{DESTINATION}"
type = "{case.type}"
{keys}
"""
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_text)
    payload = FIXTURES / f"{FAILED}.json"
    code = main(
        ["render", "--config", str(config_path), "--payload", str(payload),
         "--destination", DESTINATION]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    config = make_config(tmp_path, config_text)
    expected = config.templates[DESTINATION].render(
        context(parse_build(payload.read_bytes()), event_id=0, destination=DESTINATION)
    )
    # With the fields the chat's send adds (a Discord user name, a Slack channel).
    posted = CHAT_TYPES[case.type].prepare(config.destinations[DESTINATION], expected)
    assert json.loads(printed.out) == posted
    assert "SECRET" not in printed.out + printed.err


# --- Discord's documented limits, checked here on their own ----------------------------------


def discord_problems(message: dict[str, Any]) -> list[str]:
    """What in a Discord webhook message is over Discord's documented limits."""
    problems = []
    if len(message.get("content") or "") > 2000:
        problems.append("content")
    embeds = message.get("embeds") or []
    if len(embeds) > 10:
        problems.append("embeds")
    total = 0
    for embed in embeds:
        texts = {
            "title": (embed.get("title") or "", 256),
            "description": (embed.get("description") or "", 4096),
            "footer": ((embed.get("footer") or {}).get("text") or "", 2048),
            "author": ((embed.get("author") or {}).get("name") or "", 256),
        }
        fields = embed.get("fields") or []
        if len(fields) > 25:
            problems.append("fields")
        for index, item in enumerate(fields):
            if not item.get("name") or not item.get("value"):
                problems.append(f"field {index} is empty")
            texts[f"field {index} name"] = (item["name"], 256)
            texts[f"field {index} value"] = (item["value"], 1024)
        for what, (text, limit) in texts.items():
            if len(text) > limit:
                problems.append(what)
            total += len(text)
    if total > 6000:
        problems.append("total")
    return problems


# --- the documented custom templates ---------------------------------------------------------

TEMPLATES_PAGE = Path(__file__).resolve().parent.parent / "docs" / "templates.md"
README_EXAMPLE = re.compile(r'```jinja\n(\{#- type = "([a-z-]+)".*?)```', re.DOTALL)


def readme_examples() -> list[tuple[str, str]]:
    """The custom templates of docs/templates.md, with the chat type each is for."""
    return [(kind, source) for source, kind in README_EXAMPLE.findall(TEMPLATES_PAGE.read_text())]


def test_the_readme_has_a_custom_template_for_every_chat() -> None:
    assert {kind for kind, _ in readme_examples()} >= {case.type for case in CASES}


@pytest.mark.parametrize(
    ("kind", "source"), readme_examples(), ids=[k for k, _ in readme_examples()]
)
def test_a_readme_template_works_as_a_destinations_template(
    kind: str, source: str, tmp_path: Path
) -> None:
    (tmp_path / "mine.j2").write_text(source)
    case = next(case for case in CASES if case.type == kind)
    keys = case.keys.format(url="https://chat.example.com")
    config = chat_config(
        tmp_path,
        f'[[destinations]]\nname = "{DESTINATION}"\ntype = "{kind}"\ntemplate = "mine.j2"\n{keys}',
    )
    fits = CHAT_TYPES[kind].fits
    data = json.loads(fixture_body(FAILED))
    run = data["runs"][1]
    data["runs"] = [{**run, "name": f"run-{i}-<*_|>"} for i in range(300)]
    for body in (fixture_body(FAILED), fixture_body(PASSED), json.dumps(data).encode()):
        build = parse_build(body)
        rendered = config.templates[DESTINATION].render_within(
            context(build, event_id=1, destination=DESTINATION), fits, None
        )
        assert isinstance(rendered.body, dict)
        assert fits is not None
        assert fits(rendered.body) is None
        if rendered.hidden:
            assert f"…and {rendered.hidden} more failed runs" in json.dumps(
                rendered.body, ensure_ascii=False
            )
