"""SIGHUP on a running `python -m bridge serve`: a new config applies, a bad one is refused.

The fake chats run in this process; the bridge is a real process whose config
file the tests rewrite before each SIGHUP.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import load_config
from bridge.server import RUNTIME, create_app
from bridge.store import DeliveryRow, open_store
from tests.conftest import SECRET, signed_headers
from tests.fakes.chat_server import Delay, FakeChat, Reply
from tests.serve import BridgeProcess, event_body, free_port, run_cli

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

UNSET_VARIABLE = "BRIDGE_TEST_UNSET_URL"


def destination(fake: FakeChat, name: str, url: str | None = None, timeout: str = "0.5s") -> str:
    return f"""
        [[destinations]]
        name = "{name}"
        type = "generic"
        url = "{url or fake.url("/" + name)}"
        timeout = "{timeout}"
        rate_limit = 0
        """


def write_config(
    path: Path, port: int, destinations: str, routed: list[str], grace: str = "1s"
) -> None:
    """The serve config at `path`: every build goes to the `routed` destinations."""
    text = f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        shutdown_timeout = "{grace}"

        [store]
        path = "bridge.sqlite3"

        [delivery]
        retry_initial = "0.05s"
        retry_max = "0.2s"
        poll_interval = "0.05s"

        [[sources]]
        name = "docs-example"
        secret = "{SECRET}"
        factories = ["*"]
        {destinations}
        [[routes]]
        notify = ["failed", "passed"]
        destinations = {json.dumps(routed)}
        """
    path.write_text(textwrap.dedent(text))


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[BridgeProcess]:
    """A bridge process (not yet started) on a free port; killed at the end if still running."""
    logs = tmp_path / "logs"
    logs.mkdir()
    process = BridgeProcess(tmp_path / "config.toml", free_port(), logs)
    try:
        yield process
    finally:
        await process.close()


async def wait_for_log(
    bridge: BridgeProcess,
    text: str,
    count: int = 1,
    timeout: float = 5.0,  # noqa: ASYNC109 (a deadline, in seconds)
) -> str:
    """Poll the bridge's stderr until `text` is in it `count` times; returns the whole log."""
    deadline = time.monotonic() + timeout
    while (log := bridge.stderr()).count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged {count} times within {timeout}s:\n{log}")
        await asyncio.sleep(0.05)
    return log


async def wait_for_delivery(
    store_path: Path,
    done: Callable[[list[DeliveryRow]], bool],
    timeout: float = 5.0,  # noqa: ASYNC109 (a deadline, in seconds)
) -> list[DeliveryRow]:
    """Poll the outbox (read from beside the running bridge) until `done(rows)`."""
    store = open_store(str(store_path))
    await store.open(serving=False)
    try:
        deadline = time.monotonic() + timeout
        while not done(rows := await store.list_deliveries()):
            if time.monotonic() > deadline:
                pytest.fail(f"the outbox did not get there within {timeout}s: {rows}")
            await asyncio.sleep(0.05)
        return rows
    finally:
        await store.close()


def by_destination(rows: list[DeliveryRow], name: str) -> list[DeliveryRow]:
    return sorted((row for row in rows if row.destination == name), key=lambda row: row.id)


async def reload_counts(bridge: BridgeProcess) -> dict[str, float]:
    async with bridge.session.get(f"{bridge.base_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    counts = {"success": 0.0, "failure": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "jobserv_bridge_config_reloads_total":
                counts[sample.labels["result"]] = sample.value
    return counts


def delivered_build_ids(fake: FakeChat, path: str) -> list[int]:
    """Build ids that reached `path`, repeats of the same message (retries) counted once."""
    ids: list[int] = []
    for request in fake.requests_to(path):
        if not ids or ids[-1] != request.json["build_id"]:
            ids.append(request.json["build_id"])
    return ids


async def test_a_good_config_applies_and_pending_deliveries_are_kept(
    bridge: BridgeProcess, fake_chat: FakeChat, tmp_path: Path
) -> None:
    # "keep" is down for now and comes back after the reload; "removed" stays down.
    fake_chat.default("/keep", Reply(503, "down", headers={"Retry-After": "0.2"}))
    fake_chat.default("/removed", Reply(503, "down", headers={"Retry-After": "3600"}))
    both = destination(fake_chat, "keep") + destination(fake_chat, "removed")
    write_config(bridge.config, bridge.port, both, ["keep", "removed"])
    await bridge.start()

    await bridge.accept(1)
    store_path = tmp_path / "bridge.sqlite3"
    await wait_for_delivery(
        store_path,
        lambda rows: all(row.attempts >= 1 for row in rows) and len(rows) == 2,
    )
    await fake_chat.wait_for(1, path="/removed")

    new = destination(fake_chat, "keep") + destination(fake_chat, "added")
    write_config(bridge.config, bridge.port, new, ["keep", "added"])
    bridge.send_signal(signal.SIGHUP)
    log = await wait_for_log(bridge, "reloaded")
    assert "1 source, 2 destinations, 1 route\n" in log

    fake_chat.default("/keep", Reply(200))
    await bridge.accept(2)
    rows = await wait_for_delivery(
        store_path, lambda rows: len(rows) == 4 and all(r.state != "pending" for r in rows)
    )

    # The removed destination's delivery is a dead letter that says why, and no more sends.
    [removed] = by_destination(rows, "removed")
    assert removed.state == "dead"
    assert removed.last_error is not None
    assert "no longer configured" in removed.last_error
    assert len(fake_chat.requests_to("/removed")) == 1
    # The pending delivery to the destination that stayed went out, before the new event.
    assert [row.state for row in by_destination(rows, "keep")] == ["sent", "sent"]
    assert delivered_build_ids(fake_chat, "/keep") == [1, 2]
    # New events reach the new destination.
    assert [row.state for row in by_destination(rows, "added")] == ["sent"]
    assert delivered_build_ids(fake_chat, "/added") == [2]

    listing = await asyncio.to_thread(
        run_cli, "outbox", "--config", bridge.config, "list", "--dead"
    )
    assert listing.returncode == 0, listing.stderr
    assert f"{removed.id:>6} dead    removed" in listing.stdout
    assert "no longer configured" in listing.stdout

    assert bridge.process is not None
    assert bridge.process.returncode is None
    assert await reload_counts(bridge) == {"success": 1, "failure": 0}
    bridge.send_signal(signal.SIGTERM)
    assert await bridge.wait_exit(timeout=5.0) == 0
    assert "Traceback" not in bridge.stderr()


async def test_a_bad_config_is_refused_and_the_old_one_keeps_working(
    bridge: BridgeProcess, fake_chat: FakeChat
) -> None:
    write_config(bridge.config, bridge.port, destination(fake_chat, "hook"), ["hook"])
    await bridge.start()
    await bridge.accept(1)
    await fake_chat.wait_for(1, path="/hook")

    # Two problems: a route to a destination that does not exist, an unset variable.
    broken = destination(fake_chat, "hook") + destination(
        fake_chat, "second", url=f"${{{UNSET_VARIABLE}}}"
    )
    write_config(bridge.config, bridge.port, broken, ["hook", "nowhere"])
    bridge.send_signal(signal.SIGHUP)
    log = await wait_for_log(bridge, "refused", count=2)
    refusals = [line for line in log.splitlines() if "refused" in line]
    assert len(refusals) == 2, log
    assert any('routes[0].destinations[1]: no destination named "nowhere"' in r for r in refusals)
    assert any(
        f"destinations[1].url: environment variable {UNSET_VARIABLE} is not set" in r
        for r in refusals
    )
    assert "reloaded" not in log

    # The old config still runs: the process lives, and a new event reaches the old destination.
    assert bridge.process is not None
    assert bridge.process.returncode is None
    await bridge.accept(2)
    await fake_chat.wait_for(2, path="/hook")
    assert delivered_build_ids(fake_chat, "/hook") == [1, 2]
    assert await reload_counts(bridge) == {"success": 0, "failure": 1}

    # Once the file is fixed, the next SIGHUP applies it.
    fixed = destination(fake_chat, "hook") + destination(fake_chat, "second")
    write_config(bridge.config, bridge.port, fixed, ["hook", "second"])
    bridge.send_signal(signal.SIGHUP)
    await wait_for_log(bridge, "reloaded")
    await bridge.accept(3)
    await fake_chat.wait_for(1, path="/second")
    await fake_chat.wait_for(3, path="/hook")
    assert delivered_build_ids(fake_chat, "/second") == [3]
    assert delivered_build_ids(fake_chat, "/hook") == [1, 2, 3]
    assert await reload_counts(bridge) == {"success": 1, "failure": 1}

    bridge.send_signal(signal.SIGTERM)
    assert await bridge.wait_exit(timeout=5.0) == 0
    assert "Traceback" not in bridge.stderr()


# --- a webhook that arrives while a reload swaps the lanes ---------------------------------


async def test_a_webhook_during_a_reload_is_not_left_to_a_removed_destination(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    """A slow store stretches the reload out: an event accepted meanwhile must be routed
    with the new config once the removed destination's deliveries have been made dead
    letters, or its delivery to that destination would wait forever with no lane."""
    path = tmp_path / "config.toml"
    keep = destination(fake_chat, "keep")
    write_config(path, 0, keep + destination(fake_chat, "removed"), ["keep", "removed"])
    client = await aiohttp_client(create_app(load_config(path)))
    store = client.app[RUNTIME].store
    body = event_body(1)
    assert (await client.post("/webhook", data=body, headers=signed_headers(body))).status == 202
    await fake_chat.wait_for(1, path="/keep")
    await fake_chat.wait_for(1, path="/removed")

    write_config(path, 0, keep + destination(fake_chat, "added"), ["keep", "added"])
    blocker = sqlite3.connect(load_config(path).store.path, timeout=5.0, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the store takes nothing for now: the reload waits on it
    try:
        reloading = asyncio.create_task(client.app[RUNTIME].reload())
        # The new lanes are in place once the reload has asked the (blocked) store to
        # make the removed destination's deliveries dead letters.
        deadline = time.monotonic() + 5.0
        while "added" not in client.app[RUNTIME].dispatcher.lanes:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        body = event_body(2)
        posting = asyncio.create_task(
            client.post("/webhook", data=body, headers=signed_headers(body))
        )
        # Time for the webhook to reach the store, behind the reload's own write.
        await asyncio.sleep(0.3)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await reloading
    assert (await posting).status == 202

    rows = await store.list_deliveries()
    assert sorted(row.destination for row in rows if row.build_id == 2) == ["added", "keep"]
    await fake_chat.wait_for(1, path="/added")
    await fake_chat.wait_for(2, path="/keep")


async def test_a_send_in_flight_past_the_grace_is_sent_again_after_the_reload(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    """The reload waits `shutdown_timeout` for sends in flight, then stops them; the lane the
    reload starts sends the stopped message again at once, and what was queued behind it."""
    path = tmp_path / "config.toml"
    slow = destination(fake_chat, "slow", timeout="5s")
    write_config(path, 0, slow, ["slow"], grace="0.2s")
    fake_chat.script("/slow", Delay(1.0, Reply(200)))  # then the default: at once
    client = await aiohttp_client(create_app(load_config(path)))
    for number in (1, 2):
        body = event_body(number)
        answer = await client.post("/webhook", data=body, headers=signed_headers(body))
        assert answer.status == 202
    await fake_chat.wait_for(1, path="/slow")  # build 1 is in flight, for a second

    assert await client.app[RUNTIME].reload()
    # Well before the stopped send's claim (its lease: the timeout and a minute) runs out.
    await fake_chat.wait_for(3, path="/slow", timeout=3.0)
    assert delivered_build_ids(fake_chat, "/slow") == [1, 2]
    assert [request.json["build_id"] for request in fake_chat.requests_to("/slow")] == [1, 1, 2]
