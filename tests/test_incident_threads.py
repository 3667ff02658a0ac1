"""Incidents in threaded chats, end to end: signed webhooks to the real app, its SQLite
store and lanes, slack-sdk's client and the Matrix chat, posting to stateful fakes of a
Slack workspace and a Matrix homeserver (tests/fakes/threaded_chats.py). Whatever order
builds arrive in, the channel ends as in-order arrival leaves it.

Headlines are what a channel shows first: a root's header ("andy-corp / containers-devel
Failing since #4 (1 failed build)") and each reply's ("... #5 PASSED — Fixed").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.config import Config
from bridge.server import RUNTIME, create_app
from bridge.store import Store, open_store
from tests.conftest import generic_destination, make_config, signed_headers
from tests.fakes.chat_server import FakeChat
from tests.fakes.threaded_chats import FakeMatrix, FakeSlack, subject
from tests.postgres import fresh_database
from tests.serve import BridgeProcess, free_port
from tests.test_policy import build_body
from tests.test_policy import settings as quick_settings

TRIGGER = "containers-devel"
WHERE = f"andy-corp / {TRIGGER}"
NOTIFY = ("first_failure", "still_failing", "fixed")
SLACK_MENTION = "<@U0ONCALL>"
MATRIX_MENTION = "@oncall:example.org"
ROOM = "!ci:example.org"

Build = tuple[int, str]  # (build number, status); a repeat of a number is a re-run


def config(
    folder: Path,
    slack: FakeSlack,
    matrix: FakeMatrix,
    notify: Iterable[str] = NOTIFY,
    extra: str = "",
) -> Config:
    wanted = json.dumps(list(notify))
    return make_config(
        folder,
        quick_settings()
        + f"""
[[destinations]]
name = "slack"
type = "slack-api"
token = "xoxb-1-2-incidents"
channel = "#ci-alerts"
api_url = "{slack.api_url}"
timeout = "2s"
rate_limit = 0

[[destinations]]
name = "matrix"
type = "matrix"
homeserver = "{matrix.url}"
room_id = "{ROOM}"
token = "matrix-incidents-token"
timeout = "2s"
rate_limit = 0

[[routes]]
notify = {wanted}
destinations = ["slack"]
mention = ["{SLACK_MENTION}"]

[[routes]]
notify = {wanted}
destinations = ["matrix"]
mention = ["{MATRIX_MENTION}"]
"""
        + extra,
    )


@asynccontextmanager
async def bridge(config: Config) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def body(number: int, status: str, completion: int = 0, trigger: str = TRIGGER) -> bytes:
    """Build `number` ending `status`; a later `completion` is a re-run that ended later."""
    completed = f"2026-01-01T10:{completion:02d}:{number % 60:02d}+00:00"
    return build_body(number, status, completed=completed, trigger=trigger)


async def arrive(
    client: TestClient[Any, Any], builds: Iterable[tuple[int, str, int]], trigger: str = TRIGGER
) -> None:
    """Post each (number, status, completion) as JobServ does, then wait for the lanes."""
    for number, status, completion in builds:
        data = body(number, status, completion, trigger)
        response = await client.post("/webhook", data=data, headers=signed_headers(data))
        assert response.status in (200, 202), await response.text()
    await drained(client.app[RUNTIME].store)


async def drained(store: Store, limit: float = 20.0) -> None:
    """Until no delivery is pending; none may be dead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        counts = await store.counts()
        if not counts["pending"] or loop.time() > deadline:
            break
        await asyncio.sleep(0.02)
    assert counts["pending"] == 0 and counts["dead"] == 0, counts


def in_order(builds: Iterable[tuple[int, str, int]]) -> list[tuple[int, str, int]]:
    """Each build once, by number, with its last completion."""
    last: dict[int, tuple[int, str, int]] = {}
    for number, status, completion in builds:
        if number not in last or completion >= last[number][2]:
            last[number] = (number, status, completion)
    return [last[n] for n in sorted(last)]


def simple(*builds: Build) -> list[tuple[int, str, int]]:
    return [(number, status, index) for index, (number, status) in enumerate(builds)]


def both(slack: FakeSlack, matrix: FakeMatrix) -> tuple[dict[str, Any], dict[str, Any]]:
    return slack.state(), matrix.state()


def slack_view(state: dict[str, frozenset[str]]) -> dict[str, set[str]]:
    """Headlines without the factory and trigger."""
    return {
        head.removeprefix(WHERE + " "): {r.removeprefix(WHERE + " ") for r in replies}
        for head, replies in state.items()
    }


def matrix_view(state: dict[str, frozenset[str]]) -> dict[str, set[str]]:
    """Matrix headlines say "<where> #N STATUS — note" and "<where>: <summary>"."""
    return {
        head.removeprefix(WHERE + ": ").removeprefix(WHERE + " "): {
            r.removeprefix(WHERE + " ") for r in replies
        }
        for head, replies in state.items()
    }


# -- the cases of the issue ---------------------------------------------------------------


async def test_a_late_failure_after_a_newer_pass_is_an_incident_fixed_from_the_start(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        async with bridge(config(tmp_path, slack, matrix)) as client:
            await arrive(client, simple((3, "PASSED"), (5, "PASSED"), (4, "FAILED")))

        expected = {"Fixed by #5 after 1 failed build (#4)": {"#5 PASSED — Fixed"}}
        assert slack_view(slack.state()) == expected
        assert matrix_view(matrix.state()) == expected
        # Old news: no one is mentioned, and the root was never red.
        assert not any(m.mentioned for m in slack.messages.values())
        assert not any(e.mentioned for e in matrix.events.values())
        [root] = slack.top()
        assert root.edits == 0 and root.text.startswith(":large_green_circle:")


async def test_the_example_of_the_docs(tmp_path: Path) -> None:
    """docs/incidents.md: #43 arrives last; the channel ends as in-order arrival leaves it."""
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        async with bridge(config(tmp_path, slack, matrix)) as client:
            builds = simple((41, "FAILED"), (42, "FAILED"), (44, "PASSED"), (43, "FAILED"))
            await arrive(client, builds)

        expected = {
            "Fixed by #44 after 3 failed builds (#41-#43)": {
                "#42 FAILED — Still failing",
                "#43 FAILED — Still failing",
                "#44 PASSED — Fixed",
            }
        }
        assert slack_view(slack.state()) == expected
        assert matrix_view(matrix.state()) == expected
        told = sorted(subject(m.posted) for m in slack.messages.values() if m.mentioned)
        assert told == [41, 42]


async def test_matrix_threads_and_edits_as_the_spec_says(tmp_path: Path) -> None:
    async with (
        FakeSlack() as slack,
        FakeMatrix() as matrix,
        bridge(config(tmp_path, slack, matrix)) as client,
    ):
        await arrive(client, simple((1, "FAILED")))
        await arrive(client, simple((2, "FAILED")))

    [root] = matrix.top()
    [reply] = [e for e in matrix.events.values() if e.thread]
    # A thread reply, shown as a reply to the root by clients without threads.
    assert reply.content["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": root.event_id,
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": root.event_id},
    }
    assert reply.mentioned == [MATRIX_MENTION]  # #2 was news
    # The root edited in place: its new content, a starred fallback, and no one pinged again.
    [edit] = matrix.edit_events
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": root.event_id}
    assert edit["body"] == "* " + edit["m.new_content"]["body"]
    assert edit["m.mentions"] == {}
    assert "Failing since #1 (2 failed builds, latest #2)" in root.content["body"]


async def test_a_late_failure_in_a_closed_incident_is_a_reply_in_its_thread(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        async with bridge(config(tmp_path, slack, matrix)) as client:
            await arrive(client, simple((1, "FAILED"), (3, "PASSED"), (2, "FAILED"), (4, "FAILED")))

        expected = {
            "Fixed by #3 after 2 failed builds (#1-#2)": {
                "#2 FAILED — Still failing",
                "#3 PASSED — Fixed",
            },
            "Failing since #4 (1 failed build)": set(),
        }
        assert slack_view(slack.state()) == expected
        assert matrix_view(matrix.state()) == expected
        assert len(slack.top()) == 2  # no orphan


async def test_the_root_keeps_the_first_failed_build_and_follows_the_latest(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        async with bridge(config(tmp_path, slack, matrix)) as client:
            await arrive(client, simple((6, "FAILED"), (8, "FAILED"), (7, "FAILED")))
            [root] = slack.top()
            blocks = json.dumps(root.blocks)
            assert (
                "First failed build <https://ci.foundries.io/projects/andy-corp/lmp/builds/6|#6>"
                in blocks
            )
            assert (
                "Latest failed build <https://ci.foundries.io/projects/andy-corp/lmp/builds/8|#8>"
                in blocks
            )
            await arrive(client, simple((9, "PASSED")))

        expected = {
            "Fixed by #9 after 3 failed builds (#6-#8)": {
                "#7 FAILED — Still failing",
                "#8 FAILED — Still failing",
                "#9 PASSED — Fixed",
            }
        }
        assert slack_view(slack.state()) == expected
        assert matrix_view(matrix.state()) == expected
        [root] = slack.top()
        assert "builds/6|#6>" in json.dumps(root.blocks)  # the first failure stays on top


async def test_a_root_edited_back_to_what_it_showed_before_shows_it_again(
    tmp_path: Path,
) -> None:
    """A homeserver answers a transaction id it took before with its old event and changes
    nothing: an edit back to an earlier content must not reuse the earlier edit's id."""
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        async with bridge(config(tmp_path, slack, matrix)) as client:
            await arrive(client, [(2, "FAILED", 0)])
            await arrive(client, [(3, "FAILED", 0)])  # edited: since #2, latest #3
            await arrive(client, [(1, "FAILED", 0)])  # edited: since #1
            await arrive(client, [(1, "PASSED", 1)])  # re-run: back to since #2, latest #3

        expected = {"Failing since #2 (2 failed builds, latest #3)": {"#3 FAILED — Still failing"}}
        assert slack_view(slack.state()) == expected
        assert matrix_view(matrix.state()) == expected


async def test_a_deleted_root_is_posted_again_saying_so(tmp_path: Path) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        async with bridge(config(tmp_path, slack, matrix)) as client:
            await arrive(client, simple((1, "FAILED"), (2, "FAILED")))
            [root] = slack.top()
            slack.delete(root.ts)
            [event] = matrix.top()
            matrix.redact(event.event_id)
            await arrive(client, simple((3, "FAILED")))

        deleted = " — the first message of this incident was deleted"
        expected = {
            "Failing since #1 (3 failed builds, latest #3)" + deleted: {
                "#2 FAILED — Still failing",
                "#3 FAILED — Still failing",
            }
        }
        assert slack_view(slack.state()) == expected
        assert matrix_view(matrix.state()) == expected


async def test_a_chat_that_answers_5xx_is_retried_to_the_same_state(tmp_path: Path) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        slack.fail_next(503, 503)
        matrix.fail_next(502, 502)
        async with bridge(config(tmp_path, slack, matrix)) as client:
            await arrive(client, simple((1, "FAILED"), (3, "FAILED"), (2, "FAILED")))

        expected = {
            "Failing since #1 (3 failed builds, latest #3)": {
                "#2 FAILED — Still failing",
                "#3 FAILED — Still failing",
            }
        }
        assert slack_view(slack.state()) == expected
        assert matrix_view(matrix.state()) == expected


async def test_every_chat_call_of_a_delivery_keeps_to_the_rate_limit(tmp_path: Path) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        limited = config(tmp_path, slack, matrix).path.read_text()
        limited = limited.replace("rate_limit = 0", "rate_limit = 4\nburst = 1", 1)
        async with bridge(make_config(tmp_path, limited)) as client:
            await arrive(client, simple((1, "FAILED")))
            await asyncio.sleep(0.5)  # the bucket is full again
            slack.times.clear()
            await arrive(client, simple((2, "FAILED")))  # edits the root, posts a reply

        edit, reply = slack.times
        assert reply - edit >= 0.2  # a token every 0.25 s, not both calls at once


async def test_mentions_go_to_news_only(tmp_path: Path) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        async with bridge(config(tmp_path, slack, matrix)) as client:
            builds = simple((2, "FAILED"), (4, "FAILED"), (3, "FAILED"), (1, "FAILED"))
            await arrive(client, builds)

        # #2 and #4 were news when they arrived; #3 and #1 were late. Each piece of news is
        # told once, in whichever message first shows it.
        told = sorted(subject(m.posted) for m in slack.messages.values() if m.mentioned)
        assert told == [2, 4]
        pinged = sorted(subject(e.posted) for e in matrix.events.values() if e.mentioned)
        assert pinged == [2, 4]
        assert all(e.mentioned == [MATRIX_MENTION] for e in matrix.events.values() if e.mentioned)


async def test_a_chat_without_threads_says_a_newer_build_passed(
    tmp_path: Path, fake_chat: FakeChat
) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        extra = generic_destination(fake_chat, "plain") + (
            '\n[[routes]]\nnotify = ["failed", "fixed"]\ndestinations = ["plain"]\n'
            'mention = ["@oncall"]\n'
        )
        async with bridge(config(tmp_path, slack, matrix, extra=extra)) as client:
            await arrive(client, simple((3, "PASSED"), (5, "PASSED"), (4, "FAILED")))

            await arrive(client, simple((8, "PASSED"), (7, "FAILED")), trigger="other")

        first, second = [r.json for r in fake_chat.requests_to("/plain")]
        assert first["note"] == "New failure after #3 passed; #5 has passed since"
        assert first["mentions"] == []
        # Nothing known before it: it still says that a newer build passed.
        assert (second["build_id"], second["note"]) == (7, "#8 has passed since")
        assert second["mentions"] == []


async def test_the_same_on_postgresql(tmp_path: Path) -> None:
    async with fresh_database() as url, FakeSlack() as slack, FakeMatrix() as matrix:
        shared = config(tmp_path, slack, matrix, extra=f'\n[store]\nurl = "{url}"\n')
        async with bridge(shared) as client:
            builds = [(1, "FAILED", 0), (3, "PASSED", 0), (2, "FAILED", 0), (2, "PASSED", 1)]
            await arrive(client, builds)

        # #2 passed when re-run: #1 is fixed by it, and #3 fixes nothing.
        expected = {"Fixed by #2 after 1 failed build (#1)": {"#2 PASSED — Fixed"}}
        assert slack_view(slack.state()) == expected
        assert matrix_view(matrix.state()) == expected


# -- any order, with repeats and re-runs ----------------------------------------------------


@st.composite
def arrivals(draw: st.DrawFn) -> list[tuple[int, str, int]]:
    count = draw(st.integers(1, 6))
    statuses = st.sampled_from(["FAILED", "FAILED", "PASSED"])
    completions = [
        (number, status, index)
        for number in range(1, count + 1)
        for index, status in enumerate(draw(st.lists(statuses, min_size=1, max_size=2)))
    ]
    repeats = draw(st.lists(st.sampled_from(completions), max_size=2))
    return draw(st.permutations(completions + repeats))


async def final_state(
    folder: Path, builds: list[tuple[int, str, int]], notify: Iterable[str] = NOTIFY
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        async with bridge(config(folder, slack, matrix, notify)) as client:
            await arrive(client, builds)
        mentioned = [m.posted for m in slack.messages.values() if m.mentioned]
        return slack.state(), matrix.state(), mentioned


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(arrivals(), st.sampled_from([NOTIFY, ("failed", "passed")]))
# Failed once on a busy machine: Matrix's root went back to an earlier content, and the edit
# reused that earlier edit's transaction id (see the test of a root edited back above).
@example(
    builds=[
        (6, "FAILED", 0),
        (5, "FAILED", 0),
        (4, "FAILED", 1),
        (1, "FAILED", 0),
        (3, "FAILED", 0),
        (2, "PASSED", 0),
        (4, "FAILED", 1),
        (4, "FAILED", 1),
        (1, "PASSED", 1),
        (4, "FAILED", 0),
        (3, "PASSED", 1),
    ],
    notify=("failed", "passed"),
)
def test_any_arrival_order_leaves_both_chats_as_in_order_arrival_does(
    tmp_path_factory: Any, builds: list[tuple[int, str, int]], notify: tuple[str, ...]
) -> None:
    async def check() -> None:
        folder = tmp_path_factory.mktemp("any")
        slack, matrix, mentioned = await final_state(folder, builds, notify)
        reference = in_order(builds)
        slack_in_order, matrix_in_order, _ = await final_state(
            tmp_path_factory.mktemp("in-order"), reference, notify
        )
        assert slack == slack_in_order
        assert matrix == matrix_in_order
        # No root says failing when the trigger's newest build passed.
        if reference[-1][1] == "PASSED":
            assert not any("Failing since" in head for head in slack)
        # Mentions are news: a failure newer than every build that arrived before it.
        news = set()
        seen: set[int] = set()
        for number, status, _ in builds:
            if status == "FAILED" and all(number >= other for other in seen):
                news.add(number)
            seen.add(number)
        assert {subject(headline) for headline in mentioned} <= news

    asyncio.run(check())


# -- through `jobserv-bridge serve` ----------------------------------------------------------


def serve_config(folder: Path, port: int, slack: FakeSlack, matrix: FakeMatrix) -> Path:
    text = config(folder, slack, matrix).path.read_text()
    path = folder / "serve.toml"
    server = f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout = "2s"\n'
    store = '[store]\npath = "serve.sqlite3"\n[admin]\nenabled = false\n'
    path.write_text(server + store + text.replace('[server]\nshutdown_timeout = "0.5s"\n', ""))
    return path


def per_trigger(state: dict[str, frozenset[str]]) -> dict[str, dict[str, set[str]]]:
    """{trigger: {headline: {reply headlines}}}, headlines without the factory and trigger."""
    found: dict[str, dict[str, set[str]]] = {}
    for head, replies in state.items():
        trigger, _, shown = head.removeprefix("andy-corp / ").partition(" ")
        trigger = trigger.removesuffix(":")
        found.setdefault(trigger, {})[shown] = {r.split(" ", 3)[3] for r in replies}
    return found


async def test_the_cases_through_jobserv_bridge_serve(tmp_path: Path) -> None:
    async with FakeSlack() as slack, FakeMatrix() as matrix:
        port = free_port()
        logs = tmp_path / "logs"
        logs.mkdir()
        process = BridgeProcess(serve_config(tmp_path, port, slack, matrix), port, logs)
        try:
            await process.start()
            cases = {
                "platform-late-fix": [(3, "PASSED"), (5, "PASSED"), (4, "FAILED")],
                "platform-closed": [(1, "FAILED"), (3, "PASSED"), (2, "FAILED"), (4, "FAILED")],
                "platform-between": [(6, "FAILED"), (8, "FAILED"), (7, "FAILED")],
            }
            for trigger, builds in cases.items():
                for index, (number, status) in enumerate(builds):
                    assert await process.post(body(number, status, index, trigger)) == 202
            await served(tmp_path / "serve.sqlite3")
            # A user deletes a root; the next failure posts it again, saying so.
            [root] = [m for m in slack.top() if "platform-between" in m.headline]
            slack.delete(root.ts)
            assert await process.post(body(9, "FAILED", 0, "platform-between")) == 202
            await served(tmp_path / "serve.sqlite3")
        finally:
            await process.close()

        deleted = " — the first message of this incident was deleted"
        between = {f"#{n} FAILED — Still failing" for n in (7, 8, 9)}
        expected = {
            "platform-late-fix": {"Fixed by #5 after 1 failed build (#4)": {"#5 PASSED — Fixed"}},
            "platform-closed": {
                "Fixed by #3 after 2 failed builds (#1-#2)": {
                    "#2 FAILED — Still failing",
                    "#3 PASSED — Fixed",
                },
                "Failing since #4 (1 failed build)": set(),
            },
            "platform-between": {
                "Failing since #6 (4 failed builds, latest #9)" + deleted: between
            },
        }
        assert per_trigger(slack.state()) == expected
        # Matrix kept its root: edited, not posted again.
        expected["platform-between"] = {"Failing since #6 (4 failed builds, latest #9)": between}
        assert per_trigger(matrix.state()) == expected
        assert not any(m.mentioned for m in slack.messages.values() if "#7" in m.posted)


async def served(store_path: Path, limit: float = 20.0) -> None:
    """Until the serve process's outbox has nothing pending; nothing may be dead."""
    store = open_store(str(store_path))
    await store.open(serving=False)
    try:
        await drained(store, limit)
    finally:
        await store.close()
