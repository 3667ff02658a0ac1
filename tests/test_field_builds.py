"""Builds from the field: whatever a signed build holds, its delivery ends and its lane goes on.

An event that intake accepts can always be rendered and ends sent or dead within a bounded
time; a normal build posted after it still arrives in the chat. The regressions first (each
once jammed its destination for good), then a property test over generated builds: the real
app over HTTP, a real SQLite outbox, a fake chat server per chat type.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bridge.config import Config
from bridge.server import RUNTIME, create_app
from bridge.store import DeliveryRow, Store
from tests.conftest import (
    FAILED,
    FAST_DELIVERY,
    fixture_body,
    jobserv_source,
    make_config,
    quick_settings,
    signed_headers,
)
from tests.fakes.chat_server import FakeChat, Reply

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

# Far more than a delivery takes on a busy machine: a bound, not a timing.
ENDS_WITHIN = 20.0
MAX_BODY = 2 * 1024 * 1024

# A destination of each chat type that takes a plain webhook URL (its own size checks).
CHAT_TYPES = ["generic", "slack-webhook", "teams", "discord", "googlechat", "mattermost"]
CHAT_TYPES += ["rocketchat"]

fresh_build_ids = itertools.count(1_000_000)


def normal_build(build_id: int) -> bytes:
    """The failed sample webhook as build `build_id`: a new event, as JobServ sends it."""
    data = json.loads(fixture_body(FAILED))
    data["build_id"] = build_id
    data["url"] = f"https://api.foundries.io/projects/andy-corp/lmp/builds/{build_id}/"
    data["web_url"] = f"https://ci.foundries.io/projects/andy-corp/lmp/builds/{build_id}"
    return json.dumps(data).encode()


def changed_build(**changes: Any) -> bytes:
    data = json.loads(normal_build(next(fresh_build_ids)))
    data.update(changes)
    return json.dumps(data).encode()


async def ended(store: Store, event_id: int, count: int) -> list[DeliveryRow]:
    """The event's `count` deliveries once each is sent or dead; fails past ENDS_WITHIN."""
    deadline = time.monotonic() + ENDS_WITHIN
    while True:
        rows = [row for row in await store.list_deliveries() if row.event_id == event_id]
        if len(rows) == count and all(row.state in ("sent", "dead") for row in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"event {event_id}: deliveries not ended: {rows}")
        await asyncio.sleep(0.02)


async def accepted(client: TestClient[Any, Any], body: bytes) -> dict[str, Any]:
    async with client.post("/webhook", data=body, headers=signed_headers(body)) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 202, answer
        return answer


# --- the regressions ----------------------------------------------------------------------


async def test_a_build_created_without_an_offset_and_completed_with_one_is_delivered(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    # The field report: answered 202, then the lane failed on it for ever.
    config = make_config(tmp_path, quick_settings() + destination(fake_chat, "generic"))
    client = await aiohttp_client(create_app(config))
    body = changed_build(created="2021-07-27T09:02:05", completed="2021-07-27T09:03:20+00:00")

    answer = await accepted(client, body)

    [row] = await ended(client.app[RUNTIME].store, answer["event_id"], 1)
    assert row.state == "sent", row
    [request] = await fake_chat.wait_for(1, path="/generic")
    assert request.json["duration_seconds"] == 75


async def test_a_template_whose_blocks_are_not_a_list_does_not_jam_its_lane(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    # Slack's size check once raised on it; now it is Slack's to refuse, and this fake takes it.
    template = tmp_path / "odd.j2"
    template.write_text(
        '{"text": {{ "build " ~ build_id }},'
        ' "blocks": {% if build_id == 1 %}5{% else %}[]{% endif %}}'
    )
    extra = f'template = "{template}"'
    config = make_config(
        tmp_path, quick_settings() + destination(fake_chat, "slack-webhook", extra)
    )
    client = await aiohttp_client(create_app(config))

    odd = await accepted(client, changed_build(build_id=1))
    later = await accepted(client, changed_build(build_id=2))

    [first] = await ended(client.app[RUNTIME].store, odd["event_id"], 1)
    [second] = await ended(client.app[RUNTIME].store, later["event_id"], 1)
    assert (first.state, second.state) == ("sent", "sent")
    assert first.attempts == second.attempts == 1
    bodies = [request.json for request in fake_chat.requests_to("/slack-webhook")]
    assert bodies == [{"text": "build 1", "blocks": 5}, {"text": "build 2", "blocks": []}]


async def test_garbage_timestamps_are_refused_with_a_one_line_reason(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    config = make_config(tmp_path, quick_settings() + destination(fake_chat, "generic"))
    client = await aiohttp_client(create_app(config))

    for stamp in ["yesterday", 1627376525, "9999-12-31T23:59:59-01:00"]:
        body = changed_build(created=stamp)
        async with client.post("/webhook", data=body, headers=signed_headers(body)) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert "created" in error and "\n" not in error
    assert await client.app[RUNTIME].store.list_deliveries() == []


def destination(fake: FakeChat, chat_type: str, extra: str = "") -> str:
    """A destination named for its type, posting to /<type> on the fake, with a route."""
    return f"""
[[destinations]]
name = "{chat_type}"
type = "{chat_type}"
url = "{fake.url("/" + chat_type)}"
rate_limit = 0
timeout = "2s"
max_attempts = 3
{extra}

[[routes]]
notify = ["failed", "passed"]
destinations = ["{chat_type}"]
"""


# --- any build JobServ's schema allows, and worse ---------------------------------------------

NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "\x1b[31mred",
    "\u202eevil",
    "💥",
    "\ud800",  # a lone surrogate: JSON can escape it, UTF-8 cannot hold it
    "line\nline\r\n",
    "<!channel> @here <@U123>",
    "{{ 7*7 }}{% raw %}",
    "</script><b>",
    "*_~`|>&lt;",
    '\\"',
]
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(NASTY_TEXT),
    st.sampled_from(NASTY_TEXT).map(lambda text: text * 300),
)
# About a megabyte of JSON (a "\u0000" escape is 6 bytes).
huge_texts = st.sampled_from(["x" * 1_000_000, "\x00" * 170_000, "💥\n" * 60_000])
factories = st.text(
    alphabet=st.characters(categories=["L", "N"]) | st.sampled_from("-_."), min_size=1, max_size=20
)
# Between these any offset keeps a moment inside what UTC can hold.
moments = st.datetimes(min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 29))
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
timestamps = st.one_of(
    moments.map(datetime.isoformat),  # naive: UTC
    st.builds(lambda moment, offset: moment.replace(tzinfo=offset).isoformat(), moments, offsets),
    st.builds(lambda moment: moment.replace(tzinfo=UTC).isoformat(timespec="seconds"), moments),
)
garbage_timestamps = st.one_of(
    st.sampled_from(["", "yesterday", "2021-13-01T00:00:00", "0001-01-01T00:00:00+01:00"]),
    st.sampled_from(["9999-12-31T23:59:59-01:00", "2021-07-27T09:02:05+25:00"]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=10,
)
statuses = st.sampled_from(["PASSED", "FAILED", "FAILED", "RUNNING_WITH_FAILURES"]) | texts
# What JobServ may send: `[...]` keys of JOBSERV.md are optional.
runs = st.fixed_dictionaries(
    {"name": texts, "url": texts, "status": statuses, "log_url": texts},
    optional={
        "web_url": texts | st.none(),
        "created": timestamps | st.none(),
        "completed": timestamps | st.none(),
        "host_tag": texts | st.none(),
        "tests": texts | st.none(),
        "a_future_key": json_values,
    },
)
run_lists = st.one_of(
    st.lists(runs, max_size=4),
    st.builds(lambda run, count: [run] * count, runs, st.integers(min_value=50, max_value=400)),
)
BUILD_KEYS = ["build_id", "url", "status", "runs", "web_url", "name", "trigger_name"]
BUILD_KEYS += ["created", "completed", "status_events", "runs_url", "reason"]
HUGE_KEYS = ["reason", "name", "trigger_name", "annotation", "web_url"]


@dataclass(frozen=True)
class FieldBuild:
    body: bytes
    valid: bool  # False: the generator put a value there that JobServ never sends
    identity: tuple[str, str, str]  # url, status, completed: the event it is


def _instant(stamp: Any) -> object:
    """A valid `completed` as the instant it names (naive is UTC); anything else as it is."""
    try:
        moment = datetime.fromisoformat(stamp)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (TypeError, ValueError, OverflowError):
        return json.dumps(stamp)


@st.composite
def field_builds(draw: st.DrawFn) -> FieldBuild:
    factory = draw(factories)
    build_id = draw(st.integers(min_value=1, max_value=2**63 - 1))
    build: dict[str, Any] = {
        "build_id": build_id,
        "url": f"https://api.foundries.io/projects/{factory}/lmp/builds/{build_id}/",
        "status": draw(st.sampled_from(["PASSED", "FAILED"])),
        "runs": draw(run_lists),
    }
    optional = {
        "web_url": texts | st.none(),
        "name": texts | st.none(),
        "trigger_name": texts | st.none(),
        "created": timestamps | st.none(),
        "completed": timestamps | st.none(),
        "status_events": st.lists(
            st.fixed_dictionaries({"time": timestamps, "status": statuses}), max_size=4
        ),
        "runs_url": texts | st.none(),
        "reason": texts | st.none(),
        "annotation": json_values,
        "a_future_key": json_values,
    }
    for key, values in optional.items():
        if draw(st.booleans()):
            build[key] = draw(values)
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        build[draw(st.sampled_from(HUGE_KEYS))] = draw(huge_texts)
    valid = True
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # and worse
        key = draw(st.sampled_from(BUILD_KEYS))
        build[key] = draw(garbage_timestamps | json_values)
        valid = False
    body = json.dumps(build).encode()
    # JSON can escape a lone surrogate, but it is no text: JobServ (Python) never has one.
    valid = valid and b"\\ud800" not in body
    identity = (
        json.dumps(build.get("url")),
        json.dumps(build.get("status")),
        repr(_instant(build.get("completed"))),
    )
    return FieldBuild(body, valid, identity)


FIELD_CONFIG = f"""
[server]
max_body_size = {MAX_BODY}
shutdown_timeout = "0.5s"

[store]
path = "bridge.sqlite3"

[admin]
enabled = false
{FAST_DELIVERY}
{jobserv_source()}
"""


class Bridge:
    """A running bridge and its fake chats, driven from synchronous Hypothesis examples."""

    def __init__(
        self, runner: asyncio.Runner, client: TestClient[web.Request, web.Application]
    ) -> None:
        self.runner = runner
        self.client = client
        self.identities: set[tuple[str, str, str]] = set()

    def post(self, body: bytes) -> tuple[int, dict[str, Any]]:
        async def send() -> tuple[int, dict[str, Any]]:
            headers = signed_headers(body)
            async with self.client.post("/webhook", data=body, headers=headers) as response:
                return response.status, await response.json()

        return self.runner.run(send())

    def ended(self, event_id: int, count: int) -> list[DeliveryRow]:
        return self.runner.run(ended(self.client.app[RUNTIME].store, event_id, count))


@contextmanager
def running_bridge(folder: Path) -> Iterator[tuple[Bridge, FakeChat]]:
    with asyncio.Runner() as runner:
        fake = FakeChat()
        runner.run(fake.start())
        fake.default("/rocketchat", Reply(200, json={"success": True}))
        text = FIELD_CONFIG + "".join(destination(fake, name) for name in CHAT_TYPES)
        config: Config = make_config(folder, textwrap.dedent(text))

        async def start() -> TestClient[web.Request, web.Application]:
            client = TestClient(TestServer(create_app(config)))
            await client.start_server()
            return client

        client = runner.run(start())
        try:
            yield Bridge(runner, client), fake
        finally:
            runner.run(client.close())
            runner.run(fake.stop())


FIELD = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_every_accepted_build_ends_and_the_lanes_go_on(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as (bridge, fake):

        @FIELD
        @given(build=field_builds())
        def check(build: FieldBuild) -> None:
            status, answer = bridge.post(build.body)
            event(f"answered {status}")

            if len(build.body) > MAX_BODY:
                assert status == 413, answer
            elif build.identity in bridge.identities:
                assert status in ((200, 400) if not build.valid else (200,)), answer
            elif build.valid:
                assert status == 202, answer  # whatever its text and timestamps
            else:
                assert status in (202, 400), answer
            if status >= 400:
                assert "\n" not in answer["error"]
            if status == 202:
                bridge.identities.add(build.identity)
                bridge.ended(answer["event_id"], answer["deliveries"])

            # And the lanes go on: a normal build is sent to every destination.
            build_id = next(fresh_build_ids)
            status, answer = bridge.post(normal_build(build_id))
            assert status == 202, answer
            rows = bridge.ended(answer["event_id"], answer["deliveries"])
            assert sorted(row.destination for row in rows) == sorted(CHAT_TYPES)
            assert all(row.state == "sent" for row in rows), rows
            assert any(
                request.json["build_id"] == build_id for request in fake.requests_to("/generic")
            )

        check()
