"""Lanes that do not wait for a sync per message: a sent outcome is recorded in a batch
without the lane waiting for it, the delivery stays claimed until it is written, and the
SQLite store's bookkeeping never commits inside (nor waits for) the intake's synced batch.

The store is made slow or unwilling for real: another connection holds SQLite's write lock
(as a backup or a second writer would), or a trigger refuses the update that records a send.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bridge.store import Store, StoreUnavailable
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from tests.conftest import accept_body, plan
from tests.conftest import generic_destination as generic
from tests.fakes.chat_server import Delay, FakeChat, Reply
from tests.postgres import fresh_database
from tests.serve import BridgeProcess, free_port
from tests.test_delivery import (
    allow_updates,
    build_body,
    build_ids,
    config_for,
    dispatching,
    refuse_updates,
    wait_rows,
)
from tests.test_serve_process import build_ids as received_ids
from tests.test_serve_process import (
    generic_destination,
    store_counts,
    wait_until_all_delivered,
    write_config,
)
from tests.test_store import LEASE, claim_ids, event

REFUSE_SENT = "NEW.state = 'sent'"  # a trigger's condition: every send's record is refused


@pytest.fixture(params=["sqlite", "postgres"])
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open outbox, serving: SQLite, then PostgreSQL (skipped without a server)."""
    if request.param == "sqlite":
        store: Store = SqliteStore(tmp_path / "outbox.sqlite3")
        await store.open(serving=True)
        yield store
        await store.close()
        return
    async with fresh_database() as url:
        store = PostgresStore(url)
        await store.open(serving=True)
        yield store
        await store.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "outbox.sqlite3")
    await store.open(serving=True)
    yield store
    await store.close()


@pytest.fixture
async def bridge_process(tmp_path: Path) -> AsyncIterator[Callable[[Path, int], BridgeProcess]]:
    """Makes one serve process; still running at the end, it is killed."""
    made: list[BridgeProcess] = []

    def make(config: Path, port: int) -> BridgeProcess:
        logs = tmp_path / f"logs-{len(made)}"
        logs.mkdir()
        made.append(BridgeProcess(config, port, logs))
        return made[-1]

    try:
        yield make
    finally:
        for bridge in made:
            await bridge.close()


@contextmanager
def write_lock_held(database: Path) -> Iterator[None]:
    """Hold the SQLite file's write lock from another connection until the block ends."""
    with closing(sqlite3.connect(database, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 5.0,  # noqa: ASYNC109 (a deadline, in seconds)
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


# --- the store ------------------------------------------------------------------------------


async def test_noted_sends_are_written_and_never_claimed_again_meanwhile(outbox: Store) -> None:
    t0 = time.time()
    for n in range(3):
        await outbox.accept(event(n, at=t0), plan(["ci-alerts"]))
    taken = await claim_ids(outbox, "ci-alerts", t0)

    for delivery_id in taken:
        outbox.note_sent(delivery_id, t0 + 1)  # returns at once: nothing to wait for
    assert await claim_ids(outbox, "ci-alerts", t0 + 1) == []

    async def all_sent() -> bool:
        rows = await outbox.list_deliveries(state="sent")
        return sorted(r.id for r in rows) == sorted(taken)

    await eventually(all_sent)
    rows = {r.id: r for r in await outbox.list_deliveries()}
    assert [(rows[i].attempts, rows[i].updated_at) for i in taken] == [(1, t0 + 1)] * 3
    assert await claim_ids(outbox, "ci-alerts", t0 + 2 * LEASE) == []  # done, for good


@contextmanager
def log_sync_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold every sync of a write-ahead log (`-wal`) until the event is set: the real
    fsync, made as slow as a disk that takes that long. Set on leaving."""
    real_fsync = os.fsync
    release = threading.Event()

    def held_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    try:
        yield release
    finally:
        release.set()


async def test_the_intake_is_answered_after_its_sync_and_the_lanes_do_not_wait_for_it(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sqlite_store
    t0 = time.time()
    await store.accept(event(0, at=t0), plan(["ci-alerts"]))
    with log_sync_held(monkeypatch) as release:
        accepted = asyncio.ensure_future(store.accept(event(1, at=t0), plan(["ci-alerts"])))
        await asyncio.sleep(0.2)
        # The event is committed (its delivery can be claimed), but not on the disk: no
        # answer yet. The lanes' claims and outcomes go on all the same.
        assert not accepted.done()
        claimed = await asyncio.wait_for(store.claim("ci-alerts", t0, 32, LEASE), 5)
        assert sorted(d.build_id for d in claimed.deliveries) == [0, 1]
        await asyncio.wait_for(store.mark_retry(claimed.deliveries[0].id, t0, "429", t0), 5)
        assert not accepted.done()
        release.set()
        answer = await asyncio.wait_for(accepted, 5)
    assert not answer.duplicate


async def test_the_loops_jobs_and_the_writer_threads_run_in_the_order_queued(
    sqlite_store: SqliteStore,
) -> None:
    """A lane's quick jobs wait for the loop's next turn; a bookkeeping job for the writer
    thread queued after them must still see what they wrote."""
    store = sqlite_store
    await store.accept(event(0), plan(["ci-alerts"]))
    [delivery] = (await store.claim("ci-alerts", time.time(), 32, LEASE)).deliveries
    for number in range(20):
        note = f"note {number}"
        written = store._submit(
            lambda c, note=note: c.execute(
                "UPDATE deliveries SET last_error = ? WHERE id = ?", (note, delivery.id)
            ),
            quick=True,
        )
        read = store._submit(
            lambda c: c.execute(
                "SELECT last_error FROM deliveries WHERE id = ?", (delivery.id,)
            ).fetchone()[0]
        )
        await written
        assert await read == note


async def test_an_event_whose_log_cannot_be_synced_is_refused_then_taken_when_sent_again(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that fails (EIO: the disk may have lost it) refuses the event (503): JobServ
    sends it again, and then it is answered as the event already stored, once synced."""
    store = sqlite_store
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreUnavailable, match="cannot sync the store's log"):
        await store.accept(event(1), plan(["ci-alerts"]))
    monkeypatch.setattr(os, "fsync", real_fsync)
    again = await store.accept(event(1), plan(["ci-alerts"]))
    assert again.duplicate and again.deliveries == 1


async def test_a_serving_store_checkpoints_its_log_off_the_writer_thread(
    sqlite_store: SqliteStore,
) -> None:
    # Far below SQLite's own threshold (1,000 pages of log), which would checkpoint inside
    # a commit: only the store's checkpointing thread copies these into the file.
    size = sqlite_store.path.stat().st_size
    t0 = time.time()
    for n in range(20):
        await sqlite_store.accept(event(n, at=t0), plan(["ci-alerts"]))

    async def copied_into_the_file() -> bool:
        return sqlite_store.path.stat().st_size > size

    await eventually(copied_into_the_file, timeout=10.0)
    assert (
        await sqlite_store._call(
            lambda c: int(c.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        )
        == 0
    )  # none inside the writer's commits


# --- a lane ---------------------------------------------------------------------------------


async def test_a_lane_sends_on_while_its_outcomes_wait_for_the_store(
    fake_chat: FakeChat,
    tmp_path: Path,
    sqlite_store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    fake_chat.script("/a", Delay(0.3, Reply(200)))  # build 1 is in flight for a while
    config = config_for(tmp_path, generic(fake_chat, "a"))
    for n in range(1, 6):
        await accept_body(sqlite_store, build_body(n), ["a"])

    async with dispatching(config, sqlite_store, session):
        await fake_chat.wait_for(1, path="/a")  # claimed: all five; build 1 in flight
        with write_lock_held(sqlite_store.path):
            # No outcome can be written now, yet the lane goes on with the next sends.
            await fake_chat.wait_for(5, path="/a", timeout=5.0)
        sent = await wait_rows(sqlite_store, "sent", 5)

    assert build_ids(fake_chat.requests_to("/a")) == [1, 2, 3, 4, 5]
    assert [row.attempts for row in sent] == [1] * 5


async def test_a_send_whose_record_fails_is_not_sent_again_while_the_process_lives(
    fake_chat: FakeChat,
    tmp_path: Path,
    sqlite_store: SqliteStore,
    session: aiohttp.ClientSession,
) -> None:
    config = config_for(tmp_path, generic(fake_chat, "a"))
    for n in range(1, 4):
        await accept_body(sqlite_store, build_body(n), ["a"])
    refuse_updates(sqlite_store.path, "no_sent", REFUSE_SENT)

    async with dispatching(config, sqlite_store, session):
        await fake_chat.wait_for(3, path="/a")
        await asyncio.sleep(1.5)  # the records are refused, and tried again (every second)
        assert build_ids(fake_chat.requests_to("/a")) == [1, 2, 3]
        allow_updates(sqlite_store.path, "no_sent")
        sent = await wait_rows(sqlite_store, "sent", 3)

    assert build_ids(fake_chat.requests_to("/a")) == [1, 2, 3]
    assert [row.attempts for row in sent] == [1] * 3


# --- a crash before the outcomes are written ----------------------------------------------


async def test_kill_9_before_sent_outcomes_are_written_resends_them_and_loses_none(
    fake_chat: FakeChat,
    bridge_process: Callable[[Path, int], BridgeProcess],
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, port, {"hook": generic_destination("hook", fake_chat.url("/hook"))}
    )
    database = tmp_path / "bridge.sqlite3"
    bridge = bridge_process(config, port)
    await bridge.start()
    refuse_updates(database, "no_sent", REFUSE_SENT)  # no send can be recorded

    await bridge.accept(1, 2, 3)
    await fake_chat.wait_for(3, path="/hook")
    await asyncio.sleep(1.5)  # the records are refused, and tried again (every second)
    # Sent once each: their outcomes wait in the process, which sends none of them again.
    assert received_ids(fake_chat, "/hook") == [1, 2, 3]
    await bridge.kill()
    allow_updates(database, "no_sent")

    # At least once: what was sent but not recorded goes again, in order; nothing is lost.
    restarted_at = len(fake_chat.requests)
    await bridge.start()
    await bridge.accept(4)
    await wait_until_all_delivered(database)
    assert received_ids(fake_chat, "/hook", since=restarted_at) == [1, 2, 3, 4]
    assert await store_counts(database) == {"pending": 0, "sent": 4, "dead": 0}


async def test_a_postgres_claim_reads_past_sends_whose_outcome_is_not_written_yet() -> None:
    """A claim does not wait for the sent outcomes to be written (that write waits for the
    other lanes' sends): it reads past them at the lane's head and takes what is behind,
    never one of them. Here their write is held by another transaction's row locks."""
    async with fresh_database() as url:
        store = PostgresStore(url)
        await store.open(serving=True)
        other = await asyncpg.connect(url)
        try:
            t0 = time.time()
            for n in range(4):
                await store.accept(event(n, at=t0), plan(["ci-alerts"]))
            sent = await claim_ids(store, "ci-alerts", t0, limit=2)
            transaction = other.transaction()
            await transaction.start()
            await other.execute("SELECT 1 FROM deliveries WHERE id = ANY($1) FOR UPDATE", sent)
            for delivery_id in sent:
                store.note_sent(delivery_id, t0 + 1)  # its write now waits for the locks

            behind = await asyncio.wait_for(claim_ids(store, "ci-alerts", t0 + 1), 1.0)

            assert len(behind) == 2 and not set(behind) & set(sent)
            await transaction.rollback()

            async def all_sent() -> bool:
                rows = await store.list_deliveries(state="sent")
                return sorted(r.id for r in rows) == sorted(sent)

            await eventually(all_sent)
        finally:
            await other.close()
            await store.close()
