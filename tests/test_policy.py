"""Notify policies: each build's place in its trigger's history decides which routes fire.

Signed webhooks go to the real app; every route posts to its own generic destination on a
local fake chat, so a test sees which policies a build answered to and what each message
says (`note`, `transition`). The history lives in the real SQLite store: late, repeated
and re-run builds do not corrupt it, and it outlives the app.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from bridge.config import Config
from bridge.server import RUNTIME, create_app
from bridge.store import State, Store
from tests.conftest import (
    FAILED,
    FAST_DELIVERY,
    SECRET,
    fixture_body,
    generic_destination,
    jobserv_source,
    make_config,
    signed_headers,
)
from tests.fakes.chat_server import FakeChat

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

TRIGGER = "containers-devel"
# A destination per policy, and one for a combination: name -> the route's notify.
POLICY_ROUTES: dict[str, list[str]] = {
    "first": ["first_failure"],
    "still": ["still_failing"],
    "fixed": ["fixed"],
    "passed": ["passed"],
    "failed": ["failed"],
    "changes": ["first_failure", "fixed"],
}


def settings(secret: str = SECRET) -> str:
    return FAST_DELIVERY + jobserv_source(secret)


def policy_config(folder: Path, fake: FakeChat) -> Config:
    """One route and one generic destination for each entry of POLICY_ROUTES."""
    text = settings()
    for name, notify in POLICY_ROUTES.items():
        text += generic_destination(fake, name)
        text += f'\n[[routes]]\nnotify = {json.dumps(notify)}\ndestinations = ["{name}"]\n'
    return make_config(folder, text)


def build_body(
    build_id: int,
    status: str = "FAILED",
    *,
    trigger: str = TRIGGER,
    completed: str = "2021-07-27T09:03:20+00:00",
    reason: str = "bump to test webhooks",
    run_names: tuple[str, ...] = (),
) -> bytes:
    """The failed sample webhook as build `build_id` of `trigger`, ending with `status`.

    A passed build's runs all passed; `run_names` renames the runs in order.
    """
    data = json.loads(fixture_body(FAILED))
    data["build_id"] = build_id
    data["status"] = status
    data["trigger_name"] = trigger
    data["completed"] = completed
    data["reason"] = reason
    data["url"] = f"https://api.foundries.io/projects/andy-corp/lmp/builds/{build_id}/"
    data["web_url"] = f"https://ci.foundries.io/projects/andy-corp/lmp/builds/{build_id}"
    for run, name in zip(data["runs"], run_names, strict=False):
        run["name"] = name
    if status == "PASSED":
        for run in data["runs"]:
            run["status"] = "PASSED"
    return json.dumps(data).encode()


async def post(client: TestClient[Any, Any], body: bytes, expected: int = 202) -> dict[str, Any]:
    response = await client.post("/webhook", data=body, headers=signed_headers(body))
    assert response.status == expected, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def announce(
    client: TestClient[Any, Any], fake: FakeChat, body: bytes, expected: int = 202
) -> dict[str, Any]:
    """Post a build and wait for its messages: {destination: the JSON posted there}.

    Each lane sends in order, so a message left over from an earlier build would
    arrive before these and show up here under the wrong build.
    """
    before = len(fake.requests)
    answer = await post(client, body, expected)
    new = 0 if answer.get("duplicate") else answer["deliveries"]
    arrived = (await fake.wait_for(before + new))[before:]
    messages = {request.path.strip("/"): request.json for request in arrived}
    assert len(messages) == len(arrived), "a destination got two messages for one build"
    build_id = json.loads(body)["build_id"]
    assert {m["build_id"] for m in messages.values()} <= {build_id}
    return messages


async def settled(store: Store) -> dict[State, int]:
    """The outbox's counts once nothing is pending (a lane records a send after it)."""
    deadline = time.monotonic() + 5.0
    while True:
        counts = await store.counts()
        if not counts["pending"] or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.02)


def notes(messages: dict[str, Any]) -> dict[str, str]:
    return {name: message["note"] for name, message in messages.items()}


# --- every transition, through the app -----------------------------------------------------


async def test_a_first_failure_with_no_history_is_a_plain_failure(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))

    messages = await announce(client, fake_chat, build_body(41))

    assert set(messages) == {"first", "failed", "changes"}
    message = messages["first"]
    assert message["transition"] == {
        "kind": "first_failure",
        "summary": "Failed",
        "since": 41,
        "failed_count": 1,
        "previous": None,
        "previous_status": None,
        "later": None,
        "fixed_by": None,
    }
    # Nothing is known before it: the status says it all.
    assert message["note"] == ""
    assert message["summary"] == "andy-corp / containers-devel #41 FAILED: 1 of 3 runs failed"


async def test_a_streak_from_its_first_failure_to_its_fix(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))

    first_pass = await announce(client, fake_chat, build_body(40, "PASSED"))
    broken = await announce(client, fake_chat, build_body(41))
    still = await announce(client, fake_chat, build_body(42))
    still_more = await announce(client, fake_chat, build_body(43))
    fixed = await announce(client, fake_chat, build_body(44, "PASSED"))
    passed_again = await announce(client, fake_chat, build_body(45, "PASSED"))

    assert notes(first_pass) == {"passed": ""}
    assert first_pass["passed"]["transition"]["kind"] == "passed"
    assert notes(broken) == {
        "first": "New failure after #40 passed",
        "failed": "New failure after #40 passed",
        "changes": "New failure after #40 passed",
    }
    assert broken["first"]["summary"] == (
        "andy-corp / containers-devel #41 FAILED — New failure after #40 passed: 1 of 3 runs failed"
    )
    assert notes(still) == {
        "still": "Still failing since #41 (2 failed builds)",
        "failed": "Still failing since #41 (2 failed builds)",
    }
    assert notes(still_more) == {
        "still": "Still failing since #41 (3 failed builds)",
        "failed": "Still failing since #41 (3 failed builds)",
    }
    assert still_more["still"]["transition"]["failed_count"] == 3
    assert still_more["still"]["transition"]["since"] == 41
    assert notes(fixed) == {
        "fixed": "Fixed after 3 failed builds (#41-#43)",
        "passed": "Fixed after 3 failed builds (#41-#43)",
        "changes": "Fixed after 3 failed builds (#41-#43)",
    }
    assert fixed["fixed"]["summary"] == (
        "andy-corp / containers-devel #44 PASSED — Fixed after 3 failed builds (#41-#43)"
    )
    assert notes(passed_again) == {"passed": ""}


async def test_a_fix_after_one_failure_says_so_in_the_singular(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(7))

    fixed = await announce(client, fake_chat, build_body(8, "PASSED"))

    assert fixed["fixed"]["note"] == "Fixed after 1 failed build (#7)"


async def test_each_trigger_has_its_own_history(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(41, trigger="platform-main"))

    other = await announce(client, fake_chat, build_body(42, trigger="platform-devel"))
    same = await announce(client, fake_chat, build_body(43, trigger="platform-main"))

    assert set(other) == {"first", "failed", "changes"}
    assert notes(same) == {
        "still": "Still failing since #41 (2 failed builds)",
        "failed": "Still failing since #41 (2 failed builds)",
    }


async def test_builds_arriving_out_of_order_take_their_place_by_number(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(41, "PASSED"))

    newer = await announce(client, fake_chat, build_body(43))
    late = await announce(client, fake_chat, build_body(42))  # completed before 43
    fixed = await announce(client, fake_chat, build_body(44, "PASSED"))

    assert newer["first"]["note"] == "New failure after #41 passed"
    # #42 is judged by the builds before it, not by #43 that happened to arrive first.
    assert late["first"]["note"] == "New failure after #41 passed"
    assert set(late) == {"first", "failed", "changes"}
    # And the builds after it see it in its place.
    assert fixed["fixed"]["note"] == "Fixed after 2 failed builds (#42-#43)"
    assert fixed["fixed"]["transition"]["failed_count"] == 2


async def test_a_late_pass_breaks_the_streak_it_falls_into(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(41))
    await announce(client, fake_chat, build_body(43))

    late = await announce(client, fake_chat, build_body(42, "PASSED"))
    after = await announce(client, fake_chat, build_body(44))

    assert late["fixed"]["note"] == "Fixed after 1 failed build (#41)"
    assert notes(after) == {
        "still": "Still failing since #43 (2 failed builds)",
        "failed": "Still failing since #43 (2 failed builds)",
    }


async def test_a_repeated_event_is_answered_200_and_changes_nothing(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(41))
    await announce(client, fake_chat, build_body(42))

    repeat = await post(client, build_body(41), expected=200)
    again = await post(client, build_body(42), expected=200)
    fixed = await announce(client, fake_chat, build_body(43, "PASSED"))
    broken = await announce(client, fake_chat, build_body(44))
    late_repeat = await post(client, build_body(42), expected=200)
    still = await announce(client, fake_chat, build_body(45))

    assert repeat["duplicate"] and again["duplicate"] and late_repeat["duplicate"]
    assert fixed["fixed"]["note"] == "Fixed after 2 failed builds (#41-#42)"
    assert broken["first"]["note"] == "New failure after #43 passed"
    assert still["still"]["note"] == "Still failing since #44 (2 failed builds)"
    # One message per build and destination: the repeats were not sent again.
    sent = [(r.path, r.json["build_id"]) for r in fake_chat.requests]
    assert len(sent) == len(set(sent))
    assert await settled(client.app[RUNTIME].store) == {"pending": 0, "sent": len(sent), "dead": 0}


async def test_a_rerun_that_passes_fixes_its_own_failed_build(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(41, "PASSED"))
    broken = await announce(
        client, fake_chat, build_body(42, completed="2021-07-27T09:00:00+00:00")
    )

    rerun = await announce(
        client, fake_chat, build_body(42, "PASSED", completed="2021-07-27T10:00:00+00:00")
    )
    after = await announce(client, fake_chat, build_body(43))

    assert set(broken) == {"first", "failed", "changes"}
    assert notes(rerun) == {
        "fixed": "Fixed after 1 failed build (#42)",
        "passed": "Fixed after 1 failed build (#42)",
        "changes": "Fixed after 1 failed build (#42)",
    }
    # The history now holds the re-run's outcome.
    assert after["first"]["note"] == "New failure after #42 passed"


async def test_a_rerun_failing_again_is_announced_as_its_build_was(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(41))
    first = await announce(client, fake_chat, build_body(42, completed="2021-07-27T09:00:00+00:00"))

    rerun = await announce(client, fake_chat, build_body(42, completed="2021-07-27T10:00:00+00:00"))

    assert (
        notes(first)
        == notes(rerun)
        == {
            "still": "Still failing since #41 (2 failed builds)",
            "failed": "Still failing since #41 (2 failed builds)",
        }
    )


async def test_a_rerun_failing_after_its_build_passed_says_so(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(41, "PASSED"))
    await announce(
        client, fake_chat, build_body(42, "PASSED", completed="2021-07-27T09:00:00+00:00")
    )

    rerun = await announce(client, fake_chat, build_body(42, completed="2021-07-27T10:00:00+00:00"))

    # Not "New failure after #42 passed": #42 is this build.
    assert notes(rerun) == {
        "first": "Failed when re-run (it had passed)",
        "failed": "Failed when re-run (it had passed)",
        "changes": "Failed when re-run (it had passed)",
    }


async def test_the_original_run_arriving_after_its_rerun_does_not_undo_it(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(policy_config(tmp_path, fake_chat)))
    await announce(client, fake_chat, build_body(41, "PASSED"))
    await announce(
        client, fake_chat, build_body(42, "PASSED", completed="2021-07-27T10:00:00+00:00")
    )

    original = await announce(
        client, fake_chat, build_body(42, completed="2021-07-27T09:00:00+00:00")
    )
    after = await announce(client, fake_chat, build_body(43))

    assert original["first"]["note"] == "New failure after #41 passed"
    # #42 ended passing (its re-run completed last): #43 is a new failure, not a streak.
    assert notes(after) == {
        "first": "New failure after #42 passed",
        "failed": "New failure after #42 passed",
        "changes": "New failure after #42 passed",
    }


async def test_the_history_outlives_the_app(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    config = policy_config(tmp_path, fake_chat)
    first = await aiohttp_client(create_app(config))
    await announce(first, fake_chat, build_body(41))
    await announce(first, fake_chat, build_body(42))
    await first.close()

    second = await aiohttp_client(create_app(config))
    fixed = await announce(second, fake_chat, build_body(43, "PASSED"))
    await post(second, build_body(42), expected=200)  # and still knows its events

    assert fixed["fixed"]["note"] == "Fixed after 2 failed builds (#41-#42)"


# Before histories, the outbox had no transition or mentions columns.
OLD_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, factory TEXT NOT NULL,
    trigger TEXT NOT NULL, build_id INTEGER NOT NULL, status TEXT NOT NULL,
    body BLOB NOT NULL, received_at REAL NOT NULL
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL REFERENCES events(id),
    destination TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL, claimed_until REAL, last_error TEXT
);
"""


async def test_an_outbox_from_before_histories_keeps_working(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    config = policy_config(tmp_path, fake_chat)
    old = build_body(40)
    config.store.path.parent.mkdir(parents=True)
    with sqlite3.connect(config.store.path) as connection:
        connection.executescript(OLD_SCHEMA)
        connection.execute(
            "INSERT INTO events VALUES (1, 'pending-before', 'andy-corp', ?, 40, 'FAILED', ?, 0)",
            (TRIGGER, old),
        )
        connection.execute(
            "INSERT INTO deliveries (event_id, destination, created_at, updated_at,"
            " next_attempt_at) VALUES (1, 'failed', 0, 0, 0)"
        )
    connection.close()

    client = await aiohttp_client(create_app(config))
    [left_over] = await fake_chat.wait_for(1, path="/failed")
    messages = await announce(client, fake_chat, build_body(41))

    assert left_over.json["build_id"] == 40  # queued by the old version, sent by this one
    assert set(messages) == {"first", "failed", "changes"}


# --- previews on the command line -----------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_config(folder: Path) -> Path:
    (folder / "config.toml").write_text(
        settings()
        + """
[[destinations]]
name = "news"
type = "generic"
url = "https://example.com/news"

[[destinations]]
name = "streaks"
type = "console"

[[routes]]
notify = ["first_failure", "fixed"]
destinations = ["news"]

[[routes]]
notify = ["still_failing"]
destinations = ["streaks"]
mention = ["@oncall"]
"""
    )
    return folder / "config.toml"


def test_render_previews_a_build_still_failing(tmp_path: Path) -> None:
    payload = tmp_path / "build.json"
    payload.write_bytes(build_body(68))

    result = run_cli(
        "render",
        "--config",
        str(cli_config(tmp_path)),
        "--payload",
        str(payload),
        "--previous",
        "FAILED,FAILED",
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "✖ andy-corp / containers-devel #68 FAILED — Still failing since #66 (3 failed builds):"
        " 1 of 3 runs failed"
    )
    assert "  cc:     @oncall" in lines
    assert '"source"' not in result.stdout  # a streak is not news: only the console is routed


def test_render_previews_a_fix_for_a_chosen_destination(tmp_path: Path) -> None:
    payload = tmp_path / "build.json"
    payload.write_bytes(build_body(68, "PASSED"))

    result = run_cli(
        "render",
        "--config",
        str(cli_config(tmp_path)),
        "--payload",
        str(payload),
        "--destination",
        "news",
        "--previous",
        "failed, FAILED, PASSED",
    )

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["note"] == "Fixed after 2 failed builds (#66-#67)"
    assert document["transition"]["kind"] == "fixed"
    assert document["mentions"] == []


def test_routes_previews_which_routes_a_transition_reaches(tmp_path: Path) -> None:
    payload = tmp_path / "build.json"
    payload.write_bytes(build_body(68))
    config = cli_config(tmp_path)

    after_pass = run_cli(
        "routes", "--config", str(config), "--payload", str(payload), "--previous", "PASSED"
    )
    streak = run_cli(
        "routes", "--config", str(config), "--payload", str(payload), "--previous", "FAILED"
    )

    assert after_pass.returncode == streak.returncode == 0, after_pass.stderr + streak.stderr
    assert after_pass.stdout.splitlines()[0] == (
        "build: factory andy-corp, trigger containers-devel,"
        " #68 FAILED (New failure after #67 passed)"
    )
    assert "routes[0]: match" in after_pass.stdout
    assert "routes[1]: no match: FAILED (first failure) is not in notify" in after_pass.stdout
    assert after_pass.stdout.splitlines()[-1] == "destinations: news"
    assert "routes[0]: no match: FAILED (still failing) is not in notify" in streak.stdout
    assert streak.stdout.splitlines()[-1] == "destinations: streaks (mentions @oncall)"


def test_previous_must_name_statuses(tmp_path: Path) -> None:
    payload = tmp_path / "build.json"
    payload.write_bytes(build_body(68))

    result = run_cli(
        "routes",
        "--config",
        str(cli_config(tmp_path)),
        "--payload",
        str(payload),
        "--previous",
        " , ",
    )

    assert result.returncode == 2
    assert "expected statuses such as FAILED or PASSED,FAILED" in result.stderr
