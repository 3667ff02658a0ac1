"""Delivery lanes: retries, dead letters, rate limits, order, isolation, shutdown, secrets.

Most tests run the real app (signed webhooks in, fake chats out, a real SQLite outbox);
the timing tests and the shutdown tests drive the Dispatcher over a real store directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bridge.chats import CHAT_TYPES
from bridge.config import Config
from bridge.delivery import Dispatcher
from bridge.logs import HumanFormatter
from bridge.metrics import Metrics
from bridge.redact import Redactor
from bridge.server import RUNTIME, create_app
from bridge.store import DeliveryRow, State, Store
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from tests.conftest import (
    FAILED,
    accept_body,
    fixture_body,
    make_config,
    quick_settings,
    signed_headers,
)
from tests.conftest import (
    generic_destination as generic,
)
from tests.fakes.chat_server import Delay, FakeChat, Hang, RecordedRequest, Reply
from tests.postgres import fresh_database

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

DELIVERY = quick_settings()


def config_for(folder: Path, *destinations: str) -> Config:
    """A config sending every failed and passed build to all its destinations."""
    text = DELIVERY + "".join(destinations)
    names = [line.split('"')[1] for line in text.splitlines() if line.startswith("name = ")]
    names = names[1:]  # the first is the source
    text += f"""
[[routes]]
notify = ["failed", "passed"]
destinations = {json.dumps(names)}
"""
    return make_config(folder, text)


def build_body(build_id: int, status: str = "FAILED") -> bytes:
    """The failed sample webhook as build `build_id`: a distinct event per id."""
    data = json.loads(fixture_body(FAILED))
    data["build_id"] = build_id
    data["status"] = status
    data["url"] = f"https://api.foundries.io/projects/andy-corp/lmp/builds/{build_id}/"
    data["web_url"] = f"https://ci.foundries.io/projects/andy-corp/lmp/builds/{build_id}"
    return json.dumps(data).encode()


def build_ids(requests: list[RecordedRequest]) -> list[int]:
    return [r.json["build_id"] for r in requests]


async def post(client: TestClient[Any, Any], body: bytes) -> None:
    response = await client.post("/webhook", data=body, headers=signed_headers(body))
    assert response.status == 202, await response.text()


async def wait_rows(
    store: Store,
    state: State,
    count: int = 1,
    destination: str | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> list[DeliveryRow]:
    """Poll the outbox until `count` deliveries are in `state`; oldest first."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await store.list_deliveries(state=state, destination=destination)
        if len(rows) >= count:
            return sorted(rows, key=lambda r: r.id)
        if time.monotonic() > deadline:
            everything = await store.list_deliveries()
            raise AssertionError(f"expected {count} {state} deliveries, have: {everything}")
        await asyncio.sleep(0.02)


def store_of(client: TestClient[Any, Any]) -> Store:
    return client.app[RUNTIME].store


def make_dispatcher(config: Config, store: Store, session: aiohttp.ClientSession) -> Dispatcher:
    chats = {
        name: CHAT_TYPES[settings.type].create(settings, session)
        for name, settings in config.destinations.items()
    }
    return Dispatcher(config, store, chats, Redactor(config.secrets()), Metrics())


@asynccontextmanager
async def dispatching(
    config: Config, store: Store, session: aiohttp.ClientSession
) -> AsyncIterator[Dispatcher]:
    dispatcher = make_dispatcher(config, store, session)
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop(0.5)


# --- retries and dead letters --------------------------------------------------------------


async def test_a_5xx_is_retried_with_backoff_then_sent(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.script("/a", Reply(500, "oops"), Reply(503, "busy"))
    client = await aiohttp_client(create_app(config_for(tmp_path, generic(fake_chat, "a"))))
    await post(client, build_body(1))

    first, second, third = await fake_chat.wait_for(3, path="/a")
    [row] = await wait_rows(store_of(client), "sent")
    assert build_ids([first, second, third]) == [1, 1, 1]
    assert row.attempts == 3
    # Backoff: about retry_initial (0.05s) after the first failure, doubling after.
    assert second.received_at - first.received_at >= 0.02
    assert third.received_at - second.received_at >= 0.045


async def test_a_404_is_a_dead_letter_with_its_error_and_no_more_attempts(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.script("/a", Reply(404, "no_service"))
    client = await aiohttp_client(create_app(config_for(tmp_path, generic(fake_chat, "a"))))
    await post(client, build_body(1))
    await post(client, build_body(2))

    # The lane moved on to the next event: the dead one is not tried again.
    await wait_rows(store_of(client), "sent")
    assert build_ids(fake_chat.requests_to("/a")) == [1, 2]
    [dead] = await store_of(client).list_deliveries(state="dead")
    assert dead.build_id == 1
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert "HTTP 404" in dead.last_error
    assert "no_service" in dead.last_error


async def test_429_pauses_only_its_own_lane(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.script("/a", Reply(429, "slow down", headers={"Retry-After": "1"}))
    config = config_for(tmp_path, generic(fake_chat, "a"), generic(fake_chat, "b"))
    client = await aiohttp_client(create_app(config))
    await post(client, build_body(1))
    await post(client, build_body(2))

    first_b, second_b = await fake_chat.wait_for(2, path="/b")
    assert len(fake_chat.requests_to("/a")) == 1  # a waits for its Retry-After
    limited, retried, next_one = await fake_chat.wait_for(3, path="/a", timeout=5.0)
    assert build_ids([limited, retried, next_one]) == [1, 1, 2]
    assert retried.received_at - limited.received_at >= 0.95
    assert second_b.received_at < retried.received_at
    assert build_ids([first_b, second_b]) == [1, 2]


async def test_a_lane_keeps_its_order_while_the_first_one_is_retried(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.script("/a", Reply(500, "oops"), Reply(503, "busy", headers={"Retry-After": "0.3"}))
    client = await aiohttp_client(create_app(config_for(tmp_path, generic(fake_chat, "a"))))
    for build_id in (1, 2, 3, 4):
        await post(client, build_body(build_id))
    all_posted = time.monotonic()

    requests = await fake_chat.wait_for(6, path="/a")
    assert build_ids(requests) == [1, 1, 1, 2, 3, 4]
    # The later events were waiting behind the first while it was retried.
    assert requests[2].received_at > all_posted
    await wait_rows(store_of(client), "sent", 4)


async def test_a_hanging_destination_does_not_delay_another(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.default("/slow", Hang())
    config = config_for(
        tmp_path,
        generic(fake_chat, "slow", timeout="5s"),
        generic(fake_chat, "fast"),
    )
    client = await aiohttp_client(create_app(config))
    await post(client, build_body(1))
    await post(client, build_body(2))

    [hung] = await fake_chat.wait_for(1, path="/slow", timeout=2.0)
    first, second = await fake_chat.wait_for(2, path="/fast", timeout=1.0)
    assert build_ids([first, second]) == [1, 2]
    assert second.received_at - hung.received_at < 1.0
    assert len(fake_chat.requests_to("/slow")) == 1
    assert await store_of(client).list_deliveries(state="pending", destination="slow")


# --- rate limits ---------------------------------------------------------------------------


async def send_all(
    folder: Path,
    fake: FakeChat,
    store: Store,
    session: aiohttp.ClientSession,
    limits: str,
    count: int,
) -> list[float]:
    """Queue `count` messages for one destination, then time their arrival: seconds after
    a moment before the lane (and its token bucket) existed."""
    config = config_for(folder, generic(fake, "a", limits=limits))
    for build_id in range(1, count + 1):
        await accept_body(store, build_body(build_id), ["a"])
    before = time.monotonic()
    async with dispatching(config, store, session):
        requests = await fake.wait_for(count, path="/a", timeout=10.0 + count)
    assert build_ids(requests) == list(range(1, count + 1))
    return [r.received_at - before for r in requests]


# A busy machine only delays messages: the bucket's earliest times are lower bounds that
# hold under any load. Upper bounds leave seconds of margin; arrival gaps are never
# compared (a late arrival shortens the gap after it).


def earliest(index: int, rate: float, burst: int) -> float:
    """When a token bucket full at 0 lets message `index` go at the earliest (less a
    millisecond for the float arithmetic and the event loop's clock resolution)."""
    return max(index - burst + 1, 0) / rate - 0.001


async def test_the_rate_limit_spaces_messages(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    count, rate = 6, 5.0
    times = await send_all(tmp_path, fake_chat, store, session, "rate_limit = 5\nburst = 1", count)

    for index, arrived in enumerate(times):
        assert arrived >= earliest(index, rate, 1), (index, times)
    assert times[-1] <= (count - 1) / rate + 5.0


async def test_a_burst_goes_at_once_then_the_rate_applies(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    rate, burst = 1.0, 3
    times = await send_all(tmp_path, fake_chat, store, session, "rate_limit = 1\nburst = 3", 5)

    for index, arrived in enumerate(times):
        assert arrived >= earliest(index, rate, burst), (index, times)
    # One at a time, the third would wait 2s; a burst of three goes at once.
    assert times[burst - 1] < 2 / rate
    assert times[-1] <= 2 / rate + 5.0


async def test_without_a_rate_limit_messages_go_at_once(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    count = 30
    times = await send_all(tmp_path, fake_chat, store, session, "rate_limit = 0", count)
    # A generic destination's default limit (10 a second, bursts of 10) would take 2s;
    # without any limit this takes a few milliseconds a message.
    assert times[-1] < earliest(count - 1, 10.0, 10)


# --- giving up -----------------------------------------------------------------------------


async def test_max_attempts_sends_a_retrying_delivery_to_the_dead_letters(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.default("/a", Reply(500, "down"))
    config = config_for(tmp_path, generic(fake_chat, "a", "max_attempts = 3"))
    client = await aiohttp_client(create_app(config))
    await post(client, build_body(1))

    [dead] = await wait_rows(store_of(client), "dead")
    assert dead.attempts == 3
    assert dead.last_error is not None
    assert dead.last_error.startswith("gave up after 3 attempts")
    assert "HTTP 500" in dead.last_error
    assert len(fake_chat.requests_to("/a")) == 3


async def test_giving_up_after_one_attempt_says_attempt(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.default("/a", Reply(500, "down"))
    config = config_for(tmp_path, generic(fake_chat, "a", "max_attempts = 1"))
    client = await aiohttp_client(create_app(config))
    await post(client, build_body(1))

    [dead] = await wait_rows(store_of(client), "dead")
    assert dead.last_error is not None
    assert dead.last_error.startswith("gave up after 1 attempt over ")


async def test_max_age_sends_a_retrying_delivery_to_the_dead_letters(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.default("/a", Reply(503, "down"))
    config = config_for(tmp_path, generic(fake_chat, "a", 'max_age = "0.4s"'))
    client = await aiohttp_client(create_app(config))
    await post(client, build_body(1))

    [dead] = await wait_rows(store_of(client), "dead")
    assert dead.last_error is not None
    assert "gave up" in dead.last_error
    assert "HTTP 503" in dead.last_error
    assert dead.attempts >= 2
    assert dead.updated_at - dead.created_at >= 0.4


async def test_a_retried_dead_letter_is_sent(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.script("/a", Reply(404, "no_service"), Reply(410, "gone"))
    client = await aiohttp_client(create_app(config_for(tmp_path, generic(fake_chat, "a"))))
    store = store_of(client)
    await post(client, build_body(1))
    await post(client, build_body(2))
    first, second = await wait_rows(store, "dead", 2)

    assert await store.requeue_dead([first.id], time.time()) == 1
    [sent] = await wait_rows(store, "sent")
    assert sent.id == first.id
    [still_dead] = await store.list_deliveries(state="dead")
    assert still_dead.id == second.id

    assert await store.requeue_dead(None, time.time()) == 1  # every dead one
    await wait_rows(store, "sent", 2)
    assert build_ids(fake_chat.requests_to("/a")) == [1, 2, 1, 2]
    assert await store.requeue_dead([first.id], time.time()) == 0  # not dead: nothing to do


# --- a store that refuses an outcome ----------------------------------------------------------


def refuse_updates(database: Path, name: str, when: str) -> None:
    """Make the real SQLite outbox refuse the delivery updates `when` matches (SQL over OLD
    and NEW), as a full disk or a constraint would; `allow_updates` lifts it."""
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(
            f"CREATE TRIGGER {name} BEFORE UPDATE ON deliveries WHEN {when}"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )


def allow_updates(database: Path, name: str) -> None:
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(f"DROP TRIGGER {name}")


async def logged(caplog: pytest.LogCaptureFixture, text: str, count: int) -> None:
    """Wait (a bounded while) until `text` was logged `count` times."""
    deadline = time.monotonic() + 5.0
    while sum(text in record.getMessage() for record in caplog.records) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times"
        await asyncio.sleep(0.02)


async def test_an_outcome_the_store_refuses_is_recorded_plainly_and_the_lane_goes_on(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    fake_chat.script("/a", Reply(400, "poison"))  # the first answer's text is refused
    refuse_updates(store.path, "no_poison", "NEW.last_error LIKE '%poison%'")
    config = config_for(tmp_path, generic(fake_chat, "a"))
    await accept_body(store, build_body(1), ["a"])
    await accept_body(store, build_body(2), ["a"])

    async with dispatching(config, store, session):
        dead, sent = await wait_rows(store, "dead") + await wait_rows(store, "sent")

    assert (dead.build_id, sent.build_id) == (1, 2)
    assert dead.attempts == 1
    assert dead.last_error == "http_400: the outcome could not be stored (StoreUnavailable)"
    assert build_ids(fake_chat.requests_to("/a")) == [1, 2]


async def test_attempts_count_even_when_the_store_can_record_none_of_them(
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_chat.default("/a", Reply(503, "down"))
    # Claims and releases go through; no outcome of delivery 1 is ever stored.
    refuse_updates(store.path, "no_outcome", "OLD.id = 1 AND NEW.attempts > OLD.attempts")
    config = config_for(tmp_path, generic(fake_chat, "a", "max_attempts = 2"))
    await accept_body(store, build_body(1), ["a"])

    async with dispatching(config, store, session):
        # Not after the claim's lease (a minute): its claim is given back at once.
        await fake_chat.wait_for(2, path="/a", timeout=5.0)
        await logged(caplog, "cannot store its outcome", 2)  # both attempts
        allow_updates(store.path, "no_outcome")
        [dead] = await wait_rows(store, "dead")

    assert dead.last_error is not None
    assert dead.last_error.startswith("gave up after 2 attempts"), dead.last_error
    assert "2 of their outcomes could not be stored" in dead.last_error
    assert len(fake_chat.requests_to("/a")) == 2  # given up: not sent a third time


async def test_a_chat_answer_postgresql_cannot_store_does_not_jam_the_lane(
    fake_chat: FakeChat, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # PostgreSQL text holds no NUL: the error "HTTP 500: <answer>" is stored escaped.
    fake_chat.script("/a", Reply(500, "down\x00"))
    config = config_for(tmp_path, generic(fake_chat, "a"))
    async with fresh_database() as url:
        store = PostgresStore(url)
        await store.open(serving=True)
        try:
            await accept_body(store, build_body(1), ["a"])
            await accept_body(store, build_body(2), ["a"])
            async with dispatching(config, store, session):
                first, second = await wait_rows(store, "sent", 2)
        finally:
            await store.close()

    assert first.attempts == 2  # the 500, counted; then sent
    assert first.last_error == "HTTP 500: down\\x00"
    assert build_ids(fake_chat.requests_to("/a")) == [1, 1, 2]
    assert second.attempts == 1


# --- templates that fail, removed destinations ------------------------------------------------


async def test_a_template_failing_at_render_time_is_a_dead_letter_not_a_crash(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    (tmp_path / "branchy.j2").write_text(
        '{% if failed %}{"text": {{ factory }}}{% else %}{"text": {{ no_such_value }}}{% endif %}'
    )
    (tmp_path / "unclosed.j2").write_text('{"text": {{ factory }}')
    config = config_for(
        tmp_path,
        generic(fake_chat, "branchy", 'template = "branchy.j2"'),
        generic(fake_chat, "unclosed", 'template = "unclosed.j2"'),
    )
    client = await aiohttp_client(create_app(config))
    store = store_of(client)
    await post(client, build_body(1, status="PASSED"))
    await post(client, build_body(2, status="FAILED"))

    # The failed build renders in the branchy template: its lane kept going.
    [request] = await fake_chat.wait_for(1, path="/branchy")
    assert request.json == {"text": "andy-corp"}
    await wait_rows(store, "sent", destination="branchy")
    [not_rendered] = await wait_rows(store, "dead", destination="branchy")
    assert not_rendered.build_id == 1
    assert not_rendered.last_error is not None
    assert "no_such_value" in not_rendered.last_error

    invalid = await wait_rows(store, "dead", 2, destination="unclosed")
    assert all("invalid JSON" in (row.last_error or "") for row in invalid)
    assert fake_chat.requests_to("/unclosed") == []

    response = await client.get("/healthz")
    assert response.status == 200


async def test_a_pending_delivery_to_a_removed_destination_becomes_dead_at_start(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    config = config_for(tmp_path, generic(fake_chat, "a"))
    earlier = SqliteStore(config.store.path)
    await earlier.open(serving=True)
    await accept_body(earlier, build_body(1), ["retired", "a"])
    await earlier.close()

    client = await aiohttp_client(create_app(config))
    store = store_of(client)
    [dead] = await wait_rows(store, "dead")
    assert dead.destination == "retired"
    assert dead.last_error is not None
    assert "retired" in dead.last_error
    assert "no longer configured" in dead.last_error
    [sent] = await wait_rows(store, "sent")
    assert sent.destination == "a"


# --- shutdown -------------------------------------------------------------------------------


async def test_stop_finishes_the_send_in_flight_and_leaves_the_rest_pending(
    fake_chat: FakeChat, tmp_path: Path, store: SqliteStore, session: aiohttp.ClientSession
) -> None:
    config = config_for(tmp_path, generic(fake_chat, "a"))
    for build_id in (1, 2, 3):
        await accept_body(store, build_body(build_id), ["a"])
    fake_chat.script("/a", Delay(0.3, Reply(200, "ok")))

    dispatcher = make_dispatcher(config, store, session)
    await dispatcher.start()
    await fake_chat.wait_for(1, path="/a")
    await dispatcher.stop(2.0)

    [sent] = await store.list_deliveries(state="sent")
    assert sent.build_id == 1
    pending = await store.list_deliveries(state="pending")
    assert sorted(row.build_id for row in pending) == [2, 3]
    assert all(row.attempts == 0 for row in pending)
    assert len(fake_chat.requests_to("/a")) == 1

    # The next start sends what was left, in order.
    async with dispatching(config, store, session):
        await wait_rows(store, "sent", 3)
    assert build_ids(fake_chat.requests_to("/a")) == [1, 2, 3]


async def test_a_send_cut_off_by_the_grace_stays_pending_for_the_next_start(
    fake_chat: FakeChat, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    config = config_for(tmp_path, generic(fake_chat, "a"))
    path = tmp_path / "outbox.sqlite3"
    store = SqliteStore(path)
    await store.open(serving=True)
    for build_id in (1, 2):
        await accept_body(store, build_body(build_id), ["a"])
    fake_chat.script("/a", Hang())

    dispatcher = make_dispatcher(config, store, session)
    await dispatcher.start()
    await fake_chat.wait_for(1, path="/a")
    await dispatcher.stop(0.1)
    pending = await store.list_deliveries(state="pending")
    assert len(pending) == 2
    assert all(row.attempts == 0 for row in pending)
    await store.close()

    # Like a restarted process: the claims of the cut-off sends are given back.
    store = SqliteStore(path)
    await store.open(serving=True)
    try:
        async with dispatching(config, store, session):
            await wait_rows(store, "sent", 2)
    finally:
        await store.close()
    assert build_ids(fake_chat.requests_to("/a")) == [1, 1, 2]


# --- secrets --------------------------------------------------------------------------------

HOOK_PATH = "/services/T0/B0/hooksecret123"
TOKEN = "xoxb-123-456-apisecret"
GENERIC_PATH = "/gen/secretpath"
HEADER_SECRET = "gen-secret-xyz"
# Parts that must never show, whatever a chat echoes back.
SECRET_PARTS = ("hooksecret123", "apisecret", "secretpath", HEADER_SECRET)


async def test_secrets_never_appear_in_errors_or_logs(
    aiohttp_client: ClientFactory,
    fake_chat: FakeChat,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    hook_url = fake_chat.url(HOOK_PATH)
    generic_url = fake_chat.url(GENERIC_PATH)
    # Chats that echo what they got, secrets included, in their error answers.
    fake_chat.script(HOOK_PATH, Reply(500, f"upstream trouble posting to {hook_url}"))
    fake_chat.default(HOOK_PATH, Reply(404, f"no_service at {hook_url}"))
    fake_chat.default(
        "/api/chat.postMessage",
        Reply(200, json={"ok": False, "error": f"invalid_auth for {TOKEN}"}),
    )
    fake_chat.default(
        GENERIC_PATH, Reply(401, f"Authorization: Bearer {HEADER_SECRET} refused at {generic_url}")
    )
    config = config_for(
        tmp_path,
        f"""
[[destinations]]
name = "hook"
type = "slack-webhook"
url = "{hook_url}"
rate_limit = 0
[[destinations]]
name = "api"
type = "slack-api"
token = "{TOKEN}"
channel = "C0123"
api_url = "{fake_chat.url("/api/")}"
rate_limit = 0
[[destinations]]
name = "gen"
type = "generic"
url = "{generic_url}"
headers = {{ Authorization = "Bearer {HEADER_SECRET}" }}
rate_limit = 0
""",
    )
    client = await aiohttp_client(create_app(config))
    await post(client, build_body(1))

    dead = await wait_rows(store_of(client), "dead", 3)
    assert {row.destination for row in dead} == {"hook", "api", "gen"}
    for row in dead:
        assert row.last_error is not None
        assert "<redacted>" in row.last_error  # the echo was there, and was cut
        for secret in SECRET_PARTS:
            assert secret not in row.last_error
    assert len(fake_chat.requests_to(HOOK_PATH)) == 2  # a retry was logged on the way

    ours = [r for r in caplog.records if r.name.startswith("bridge")]
    assert any("dead letter" in r.getMessage() for r in ours)
    for record in ours:
        fields = [record.getMessage(), *(v for v in vars(record).values() if isinstance(v, str))]
        for secret in SECRET_PARTS:
            assert not any(secret in text for text in fields), record.getMessage()
    # Libraries log too (slack-sdk logs the webhook URL at DEBUG): the log lines are redacted.
    formatter = HumanFormatter(Redactor(config.secrets()))
    for record in caplog.records:
        line = formatter.format(record)
        for secret in SECRET_PARTS:
            assert secret not in line
