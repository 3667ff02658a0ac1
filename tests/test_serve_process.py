"""`python -m bridge serve` as a real process: signals, kill -9, restarts, the store lock.

The fake chat runs in the test process, so what it received is kept across bridge
restarts. Each event is the failed fixture with its own build_id, url and completed
time, which the generic template writes into every message as `build_id`.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from bridge.store import State, open_store
from tests.conftest import FAILED, SECRET, fixture_body
from tests.fakes.chat_server import Delay, FakeChat, Hang, Reply
from tests.serve import (
    START_DEADLINE,
    BridgeProcess,
    event_body,
    free_port,
    resent_after_a_crash,
)


def generic_destination(name: str, url: str, timeout: str = "5s") -> str:
    return f"""
        [[destinations]]
        name = "{name}"
        type = "generic"
        url = "{url}"
        timeout = "{timeout}"
        rate_limit = 0
        """


def write_config(
    folder: Path, port: int, destinations: dict[str, str], store: str = "bridge.sqlite3"
) -> Path:
    """A serve config in `folder`, its store beside it, every build routed to every destination."""
    names = ", ".join(f'"{name}"' for name in destinations)
    text = f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        shutdown_timeout = "5s"

        [admin]
        enabled = false

        [store]
        path = "{store}"

        [delivery]
        retry_initial = "0.05s"
        retry_max = "0.2s"
        poll_interval = "0.05s"

        [[sources]]
        name = "docs-example"
        secret = "{SECRET}"
        factories = ["*"]
        {"".join(destinations.values())}
        [[routes]]
        notify = ["failed", "passed"]
        destinations = [{names}]
        """
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
async def bridges(tmp_path: Path) -> AsyncIterator[Callable[[Path, int], BridgeProcess]]:
    """Makes bridge processes; every one still running at the end is killed."""
    made: list[BridgeProcess] = []

    def make(config: Path, port: int) -> BridgeProcess:
        logs = tmp_path / f"logs-{len(made)}"
        logs.mkdir()
        bridge = BridgeProcess(config, port, logs)
        made.append(bridge)
        return bridge

    try:
        yield make
    finally:
        for bridge in made:
            await bridge.close()


def build_ids(fake: FakeChat, path: str, since: int = 0) -> list[int]:
    """The build_id of every message to `path`, in arrival order, from request `since` on."""
    return [r.json["build_id"] for r in fake.requests[since:] if r.path == path]


async def store_counts(store_path: Path) -> dict[State, int]:
    store = open_store(str(store_path))
    await store.open(serving=False)
    try:
        return await store.counts()
    finally:
        await store.close()


async def wait_until_all_delivered(store_path: Path, deadline: float = 8.0) -> None:
    """Poll the outbox until nothing is pending; after that the bridge sends nothing more."""
    store = open_store(str(store_path))
    await store.open(serving=False)
    try:
        end = time.monotonic() + deadline
        while (counts := await store.counts())["pending"]:
            if time.monotonic() > end:
                pytest.fail(f"deliveries still pending after {deadline}s: {counts}")
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def test_sigterm_finishes_the_send_in_flight_and_keeps_the_rest_queued(
    fake_chat: FakeChat, bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, port, {"hook": generic_destination("hook", fake_chat.url("/hook"))}
    )
    fake_chat.script("/hook", Delay(1.0, Reply(200)))
    bridge = bridges(config, port)
    await bridge.start()

    await bridge.accept(1)
    await fake_chat.wait_for(1, path="/hook")  # build 1 is now in flight, for a second
    await bridge.accept(2, 3)
    bridge.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert await bridge.wait_exit(timeout=5.0) == 0
    assert time.monotonic() - signalled < 4.0
    log = bridge.stderr()
    assert "stopped" in log
    assert "Traceback" not in log

    # Build 1 was answered before the exit; 2 and 3 were never started and wait in the outbox.
    assert build_ids(fake_chat, "/hook") == [1]
    assert await store_counts(tmp_path / "bridge.sqlite3") == {"pending": 2, "sent": 1, "dead": 0}

    await bridge.start()
    await wait_until_all_delivered(tmp_path / "bridge.sqlite3")
    assert build_ids(fake_chat, "/hook") == [1, 2, 3]
    bridge.send_signal(signal.SIGTERM)
    assert await bridge.wait_exit(timeout=5.0) == 0


async def test_sigint_stops_cleanly(
    fake_chat: FakeChat, bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, port, {"hook": generic_destination("hook", fake_chat.url("/hook"))}
    )
    bridge = bridges(config, port)
    await bridge.start()
    await bridge.accept(1)
    await fake_chat.wait_for(1, path="/hook")

    bridge.send_signal(signal.SIGINT)
    assert await bridge.wait_exit(timeout=5.0) == 0
    assert "stopped" in bridge.stderr()
    assert "Traceback" not in bridge.stderr()


async def test_kill_9_before_the_chat_answers_delivers_after_restart(
    fake_chat: FakeChat, bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, port, {"hook": generic_destination("hook", fake_chat.url("/hook"))}
    )
    fake_chat.script("/hook", Hang())  # then the default: 200
    bridge = bridges(config, port)
    await bridge.start()

    await bridge.accept(1)
    await fake_chat.wait_for(1, path="/hook")  # build 1 hangs in flight
    await bridge.accept(2, 3)
    await bridge.kill()
    assert build_ids(fake_chat, "/hook") == [1]

    restarted_at = len(fake_chat.requests)
    await bridge.start()
    await wait_until_all_delivered(tmp_path / "bridge.sqlite3")
    # Build 1 was in flight, so it is sent again; 2 and 3 exactly once, all in order.
    assert build_ids(fake_chat, "/hook", since=restarted_at) == [1, 2, 3]


async def test_kill_9_while_the_chat_is_down_loses_nothing_and_repeats_nothing(
    fake_chat: FakeChat, bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, port, {"hook": generic_destination("hook", fake_chat.url("/hook"))}
    )
    fake_chat.default("/hook", Reply(503, "down for maintenance"))
    bridge = bridges(config, port)
    await bridge.start()

    events = range(1, 31)
    await bridge.accept(*events)
    await fake_chat.wait_for(3, path="/hook")  # a few retries of the lane's head
    await bridge.kill()
    # The lane holds on its head while the chat fails: nothing overtook build 1.
    assert set(build_ids(fake_chat, "/hook")) == {1}

    fake_chat.default("/hook", Reply(200))
    restarted_at = len(fake_chat.requests)
    await bridge.start()
    await wait_until_all_delivered(tmp_path / "bridge.sqlite3")
    assert build_ids(fake_chat, "/hook", since=restarted_at) == list(events)
    assert await store_counts(tmp_path / "bridge.sqlite3") == {"pending": 0, "sent": 30, "dead": 0}


async def test_kill_9_in_a_steady_stream_repeats_only_sends_in_flight(
    fake_chat: FakeChat, bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    port = free_port()
    lanes = {"/a": "lane-a", "/b": "lane-b"}
    config = write_config(
        tmp_path,
        port,
        {name: generic_destination(name, fake_chat.url(path)) for path, name in lanes.items()},
    )
    for path in lanes:
        fake_chat.default(path, Delay(0.05, Reply(200)))
    bridge = bridges(config, port)
    await bridge.start()

    accepted: list[int] = []

    async def post_steadily(numbers: range) -> None:
        for number in numbers:
            try:
                status = await bridge.post(event_body(number))
            except aiohttp.ClientError:
                return  # the bridge is gone: this one may or may not have been stored
            assert status == 202
            accepted.append(number)
            await asyncio.sleep(0.01)

    poster = asyncio.create_task(post_steadily(range(1, 1000)))
    try:
        await fake_chat.wait_for(16)  # both lanes busy, a send just arrived and is in flight
        await bridge.kill()
    finally:
        await poster
    assert len(accepted) >= 8

    await bridge.start()
    more = range(1000, 1005)
    await bridge.accept(*more)
    accepted += more
    await wait_until_all_delivered(tmp_path / "bridge.sqlite3")

    for path in lanes:
        received = build_ids(fake_chat, path)
        assert set(accepted) <= set(received)
        # Only the send in flight at the kill, and those sent just before it whose outcome
        # was not written yet, go again; in order.
        resent_after_a_crash(received)


async def test_a_second_serve_on_the_same_store_refuses_to_start(
    fake_chat: FakeChat, bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    hook = {"hook": generic_destination("hook", fake_chat.url("/hook"))}
    first_port, second_port = free_port(), free_port()
    first = bridges(write_config(tmp_path, first_port, hook), first_port)
    await first.start()
    # Same store file, another port: only the store lock can stop it.
    second_folder = tmp_path / "second"
    second_folder.mkdir()
    second_config = write_config(
        second_folder, second_port, hook, store=str(tmp_path / "bridge.sqlite3")
    )
    second = bridges(second_config, second_port)
    await second.launch()

    assert await second.wait_exit(timeout=START_DEADLINE) != 0
    [line] = second.stderr().splitlines()
    assert "in use by another jobserv-bridge serve" in line
    assert str(tmp_path / "bridge.sqlite3") in line
    # The first one is unharmed and still delivers.
    await first.accept(1)
    await wait_until_all_delivered(tmp_path / "bridge.sqlite3")
    assert build_ids(fake_chat, "/hook") == [1]


async def test_a_webhook_that_comes_while_serve_starts_is_answered_once_it_has(
    fake_chat: FakeChat, bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    """serve listens before it opens its store (migrated on an upgrade: seconds for a large
    one). JobServ gives up on a refused connection after four quick tries, but waits for an
    answer as long as it takes: its webhook waits in the kernel's queue, then is taken."""
    port = free_port()
    config = write_config(
        tmp_path, port, {"hook": generic_destination("hook", fake_chat.url("/hook"))}
    )
    bridge = bridges(config, port)
    await bridge.start()  # the store is made
    bridge.send_signal(signal.SIGTERM)
    assert await bridge.wait_exit(timeout=START_DEADLINE) == 0

    # Another connection holds the store's write lock: serve's start waits for it.
    holder = sqlite3.connect(tmp_path / "bridge.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        await bridge.launch()
        deadline = time.monotonic() + START_DEADLINE / 2
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "serve refused connections while starting"
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        posting = asyncio.create_task(bridge.post(event_body(1)))
        await asyncio.sleep(1.0)
        assert not posting.done()  # taken by the kernel, answered once the store is open
    finally:
        holder.execute("COMMIT")
        holder.close()

    assert await asyncio.wait_for(posting, START_DEADLINE) == 202
    await fake_chat.wait_for(1)
    assert build_ids(fake_chat, "/hook") == [1]


async def test_a_port_in_use_is_a_one_line_error(
    fake_chat: FakeChat, bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path, port, {"hook": generic_destination("hook", fake_chat.url("/hook"))}
        )
        bridge = bridges(config, port)
        await bridge.launch()
        assert await bridge.wait_exit(timeout=START_DEADLINE) != 0
    [line] = bridge.stderr().splitlines()
    assert f"127.0.0.1:{port}" in line
    assert "address already in use" in line.lower()


async def test_console_destination_prints_the_message_on_stdout(
    bridges: Callable[[Path, int], BridgeProcess], tmp_path: Path
) -> None:
    port = free_port()
    console = """
        [[destinations]]
        name = "console"
        type = "console"
        """
    bridge = bridges(write_config(tmp_path, port, {"console": console}), port)
    await bridge.start()
    body = fixture_body(FAILED)
    assert await bridge.post(body) == 202

    deadline = time.monotonic() + 5.0
    log_url = (
        "https://api.foundries.io/projects/andy-corp/lmp/builds/68/runs/build-armhf/console.log"
    )
    while log_url not in bridge.stdout():
        if time.monotonic() > deadline:
            pytest.fail(f"no message on stdout within 5s; stdout:\n{bridge.stdout()}")
        await asyncio.sleep(0.05)
    printed = bridge.stdout()
    assert "andy-corp / containers-devel #68 FAILED" in printed
    assert "FAILED build-armhf" in printed
    # Only the failed run is listed, and the logs stay on stderr.
    assert "build-aarch64" not in printed
    assert "INFO" not in printed
