"""The embedded outbox: one SQLite file in WAL mode, written by one thread with group commit.

Every store call becomes a job for the writer thread. The thread takes all the jobs
waiting, runs them in one transaction (each in its own savepoint, so one failure
does not sink the others), commits once with a full sync, and only then answers
them all. Concurrent webhooks thus share one fsync, each still answered after its
data is durable, and the event loop never waits on the disk.

Only accepted events need that fsync before the answer. A batch of nothing but
delivery bookkeeping (claims, outcomes) commits without one: a process killed at
any moment loses none of it (the operating system has it), and a power cut can at
worst make a sent message go out again, which at-least-once delivery allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bridge.incidents import Key, Record, Seen, Window
from bridge.store import (
    Accepted,
    Claim,
    Delivery,
    DeliveryRow,
    DestinationStats,
    EventRow,
    HourActivity,
    NewEvent,
    Plan,
    State,
    Store,
    StoreUnavailable,
    unavailable,
)
from bridge.transitions import (
    STREAK_LIMIT,
    History,
    Transition,
    above,
    streak_history,
    transition,
)

T = TypeVar("T")
# The work, where its answer goes, and whether its commit must reach the disk first.
Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], bool]

# Enough to amortise one fsync over a burst, small enough to keep each commit short.
MAX_BATCH = 512

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    factory TEXT NOT NULL,
    trigger TEXT NOT NULL,
    build_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL,
    transition TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    claimed_until REAL,
    last_error TEXT,
    mentions TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_lane
    ON deliveries (destination, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event_id);
CREATE INDEX IF NOT EXISTS deliveries_done ON deliveries (state, updated_at)
    WHERE state != 'pending';
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE TABLE IF NOT EXISTS builds (
    factory TEXT NOT NULL,
    trigger TEXT NOT NULL,
    build_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    completed_at REAL,
    PRIMARY KEY (factory, trigger, build_id)
) WITHOUT ROWID;
-- The newest build below one that did not fail, found without reading a failing streak.
CREATE INDEX IF NOT EXISTS builds_ended ON builds (factory, trigger, build_id)
    WHERE status != 'FAILED';
CREATE TABLE IF NOT EXISTS threads (
    destination TEXT NOT NULL,
    factory TEXT NOT NULL,
    trigger TEXT NOT NULL,
    thread TEXT NOT NULL,
    PRIMARY KEY (destination, factory, trigger)
) WITHOUT ROWID;
-- Incidents: the events of one build, and a threaded destination's messages.
CREATE INDEX IF NOT EXISTS events_build ON events (factory, trigger, build_id);
CREATE TABLE IF NOT EXISTS thread_messages (
    destination TEXT NOT NULL,
    factory TEXT NOT NULL,
    trigger TEXT NOT NULL,
    anchor INTEGER NOT NULL,
    kind TEXT NOT NULL,
    build_id INTEGER NOT NULL,
    ref TEXT NOT NULL,
    digest TEXT NOT NULL,
    reposted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (destination, factory, trigger, anchor, kind, build_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS thread_messages_build
    ON thread_messages (destination, factory, trigger, build_id);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
"""


class SqliteStore(Store):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock_file: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synchronous = "FULL"  # the connection's setting, switched per batch

    # -- the writer thread --------------------------------------------------

    async def open(self, *, serving: bool) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if serving:
                self._lock_file = _exclusive_lock(self.path)
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            self._synchronous = "FULL"
            connection.executescript(SCHEMA)
            _add_columns(connection)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
        self._thread = threading.Thread(
            target=self._run, args=(connection,), name="sqlite-store", daemon=True
        )
        self._thread.start()
        if serving:
            # We hold the lock: no other process serves from this file, so every
            # claim left in it belongs to a process that is gone.
            await self._call(lambda c: c.execute("UPDATE deliveries SET claimed_until = NULL"))

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def _run(self, connection: sqlite3.Connection) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                break
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._run_batch(connection, batch)
            if stop:
                break
        connection.close()

    def _run_batch(self, connection: sqlite3.Connection, batch: list[Job]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        synchronous = "FULL" if any(durable for _, _, durable in batch) else "NORMAL"
        try:
            if connection.in_transaction:  # a batch before could not even roll back
                connection.execute("ROLLBACK")
            if synchronous != self._synchronous:
                connection.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            connection.execute("BEGIN IMMEDIATE")
            for work, future, _ in batch:
                connection.execute("SAVEPOINT job")
                try:
                    result = work(connection)
                except Exception as exc:
                    connection.execute("ROLLBACK TO job")
                    results.append((future, None, _unavailable("store error", exc)))
                else:
                    results.append((future, result, None))
                connection.execute("RELEASE job")
            connection.execute("COMMIT")
        except BaseException as exc:
            # The commit (or SQLite itself) failed: nothing of the batch is stored, so
            # every job in it fails, and the thread lives on for the next batch.
            with contextlib.suppress(sqlite3.Error):
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            failure = _unavailable("store write failed", exc)
            results = [(future, None, failure) for _, future, _ in batch]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_settle_all, results)

    async def _call(self, work: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run `work` in the writer thread; `durable`: answer only once it is on disk."""
        if self._thread is None or self._loop is None:
            raise StoreUnavailable("store is not open")
        if not self._thread.is_alive():
            raise StoreUnavailable("the store's writer thread has stopped")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((work, future, durable))
        return await future

    # -- the store interface --------------------------------------------------

    async def accept(self, event: NewEvent, plan: Plan) -> Accepted:
        def work(c: sqlite3.Connection) -> Accepted:
            change = transition(event.build_id, event.status, _history(c, event))
            row = c.execute(
                "INSERT INTO events"
                " (key, factory, trigger, build_id, status, body, received_at, transition)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING RETURNING id",
                (
                    event.key,
                    event.factory,
                    event.trigger,
                    event.build_id,
                    event.status,
                    event.body,
                    event.received_at,
                    json.dumps(change.as_dict()),
                ),
            ).fetchone()
            if row is None:
                (event_id,) = c.execute(
                    "SELECT id FROM events WHERE key = ?", (event.key,)
                ).fetchone()
                (count,) = c.execute(
                    "SELECT count(*) FROM deliveries WHERE event_id = ?", (event_id,)
                ).fetchone()
                return Accepted(event_id, count, duplicate=True)
            (event_id,) = row
            c.execute(
                "INSERT INTO builds (factory, trigger, build_id, status, completed_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET status = excluded.status,"
                " completed_at = excluded.completed_at"
                " WHERE coalesce(excluded.completed_at, 0) >= coalesce(builds.completed_at, 0)",
                (event.factory, event.trigger, event.build_id, event.status, event.completed_at),
            )
            targets = plan(change)
            now = event.received_at
            c.executemany(
                "INSERT INTO deliveries (event_id, destination, created_at, updated_at,"
                " next_attempt_at, mentions) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (event_id, name, now, now, now, json.dumps(mentions) if mentions else None)
                    for name, mentions in targets
                ],
            )
            names = tuple(name for name, _ in targets)
            return Accepted(event_id, len(targets), False, names, change)

        return await self._call(work, durable=True)

    async def claim(self, destination: str, now: float, limit: int, lease: float) -> Claim:
        def work(c: sqlite3.Connection) -> Claim:
            rows = c.execute(
                "SELECT d.id, d.event_id, d.attempts, d.created_at, d.next_attempt_at,"
                " d.claimed_until, e.body, e.factory, e.build_id, e.trigger, e.transition,"
                " d.mentions"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.destination = ? AND d.state = 'pending' ORDER BY d.id LIMIT ?",
                (destination, limit),
            ).fetchall()
            taken: list[Delivery] = []
            next_due = None
            for id_, event_id, attempts, created_at, due, claimed_until, *event in rows:
                if claimed_until is not None and claimed_until > now:
                    break  # another claim holds the head: keep the lane in order
                if due > now:
                    next_due = due if not taken else None
                    break
                body, factory, build_id, trigger, change, mentions = event
                taken.append(
                    Delivery(
                        id_,
                        event_id,
                        destination,
                        attempts,
                        created_at,
                        body,
                        factory,
                        build_id,
                        trigger,
                        Transition.from_dict(json.loads(change)) if change else None,
                        tuple(json.loads(mentions)) if mentions else (),
                    )
                )
            c.executemany(
                "UPDATE deliveries SET claimed_until = ? WHERE id = ?",
                [(now + lease, d.id) for d in taken],
            )
            return Claim(taken, next_due)

        return await self._call(work)

    async def release(self, ids: list[int]) -> None:
        await self._call(
            lambda c: c.executemany(
                "UPDATE deliveries SET claimed_until = NULL WHERE id = ?", [(i,) for i in ids]
            )
        )

    async def _finish(
        self, delivery_id: int, state: State, at: float, error: str | None, now: float
    ) -> None:
        await self._call(
            lambda c: c.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = coalesce(?, last_error), updated_at = ?, claimed_until = NULL"
                " WHERE id = ?",
                (state, at, error, now, delivery_id),
            )
        )

    async def mark_sent(self, delivery_id: int, now: float) -> None:
        await self._finish(delivery_id, "sent", now, None, now)

    async def mark_retry(self, delivery_id: int, at: float, error: str, now: float) -> None:
        await self._finish(delivery_id, "pending", at, error, now)

    async def mark_dead(self, delivery_id: int, error: str, now: float) -> None:
        await self._finish(delivery_id, "dead", now, error, now)

    async def kill_orphans(self, destinations: set[str], now: float) -> int:
        def work(c: sqlite3.Connection) -> int:
            names = sorted(destinations)
            marks = ",".join("?" * len(names))
            return c.execute(
                "UPDATE deliveries SET state = 'dead', updated_at = ?, claimed_until = NULL,"
                " last_error = 'destination ' || destination || ' is no longer configured'"
                f" WHERE state = 'pending' AND destination NOT IN ({marks})",
                (now, *names),
            ).rowcount

        return await self._call(work)

    async def list_deliveries(
        self, state: State | None = None, destination: str | None = None, limit: int = 100
    ) -> list[DeliveryRow]:
        def work(c: sqlite3.Connection) -> list[DeliveryRow]:
            rows = c.execute(
                "SELECT d.id, d.event_id, d.destination, d.state, d.attempts, d.created_at,"
                " d.updated_at, d.next_attempt_at, d.last_error,"
                " e.factory, e.trigger, e.build_id, e.status"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE (?1 IS NULL OR d.state = ?1) AND (?2 IS NULL OR d.destination = ?2)"
                " ORDER BY d.id DESC LIMIT ?3",
                (state, destination, limit),
            ).fetchall()
            return [DeliveryRow(*row) for row in rows]

        return await self._call(work)

    async def retry(self, ids: list[int] | None, now: float) -> int:
        def work(c: sqlite3.Connection) -> int:
            update = (
                "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, updated_at = ?,"
                " attempts = 0 WHERE state = 'dead'"
            )
            if ids is None:
                return c.execute(update, (now, now)).rowcount
            return sum(c.execute(update + " AND id = ?", (now, now, i)).rowcount for i in ids)

        return await self._call(work)

    async def purge(self, before: float, states: tuple[State, ...]) -> int:
        def work(c: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(states))
            deleted = c.execute(
                f"DELETE FROM deliveries WHERE state IN ({marks}) AND updated_at < ?",
                (*states, before),
            ).rowcount
            c.execute(
                "DELETE FROM events WHERE received_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
                (before,),
            )
            return deleted

        return await self._call(work)

    async def counts(self) -> dict[State, int]:
        def work(c: sqlite3.Connection) -> dict[State, int]:
            found = dict(c.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
            return {s: found.get(s, 0) for s in ("pending", "sent", "dead")}

        return await self._call(work)

    async def destination_stats(self) -> dict[str, DestinationStats]:
        def work(c: sqlite3.Connection) -> dict[str, DestinationStats]:
            rows = c.execute(
                "SELECT destination, sum(state = 'pending'),"
                " min(CASE WHEN state = 'pending' THEN created_at END), sum(state = 'dead'),"
                " min(CASE WHEN state = 'dead' THEN created_at END)"
                " FROM deliveries WHERE state != 'sent' GROUP BY destination"
            )
            return {name: DestinationStats(*stats) for name, *stats in rows}

        return await self._call(work)

    async def thread(self, destination: str, factory: str, trigger: str) -> str | None:
        def work(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT thread FROM threads WHERE destination = ? AND factory = ? AND trigger = ?",
                (destination, factory, trigger),
            ).fetchone()
            return str(row[0]) if row else None

        return await self._call(work)

    async def set_thread(
        self, destination: str, factory: str, trigger: str, thread: str | None
    ) -> None:
        key = (destination, factory, trigger)
        if thread is None:
            sql = "DELETE FROM threads WHERE destination = ? AND factory = ? AND trigger = ?"
            await self._call(lambda c: c.execute(sql, key))
        else:
            sql = (
                "INSERT INTO threads (destination, factory, trigger, thread) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET thread = excluded.thread"
            )
            await self._call(lambda c: c.execute(sql, (*key, thread)))

    async def trigger_window(self, factory: str, trigger: str, build_id: int) -> Window:
        def work(c: sqlite3.Connection) -> Window:
            key = (factory, trigger, build_id)
            lower = _one(c, _LOWER_PASSED, key)
            upper = _one(c, _UPPER_PASSED, key)
            span = (factory, trigger, _bound(lower, LOWEST), _bound(upper, HIGHEST))
            builds = {
                number: Seen(status, event_id)
                for number, status, event_id in c.execute(_WINDOW_BUILDS, span)
            }
            return Window(lower, upper, builds)

        return await self._call(work)

    async def event_bodies(self, ids: list[int]) -> dict[int, bytes]:
        def work(c: sqlite3.Connection) -> dict[int, bytes]:
            marks = ",".join("?" * len(ids))
            rows = c.execute(f"SELECT id, body FROM events WHERE id IN ({marks})", ids)
            return {int(id_): bytes(body) for id_, body in rows}

        return await self._call(work)

    async def delivery_mentions(
        self, destination: str, event_ids: list[int]
    ) -> dict[int, tuple[str, ...]]:
        def work(c: sqlite3.Connection) -> dict[int, tuple[str, ...]]:
            marks = ",".join("?" * len(event_ids))
            rows = c.execute(
                "SELECT event_id, mentions FROM deliveries WHERE destination = ?"
                f" AND mentions IS NOT NULL AND event_id IN ({marks})",
                (destination, *event_ids),
            )
            return {int(event): tuple(json.loads(found)) for event, found in rows}

        return await self._call(work)

    async def thread_records(
        self, destination: str, factory: str, trigger: str, window: Window
    ) -> list[Record]:
        def work(c: sqlite3.Connection) -> list[Record]:
            lower, upper = _bound(window.lower, LOWEST), _bound(window.upper, HIGHEST)
            rows = c.execute(
                "SELECT kind, anchor, build_id, ref, digest, reposted FROM thread_messages"
                " WHERE destination = ?1 AND factory = ?2 AND trigger = ?3"
                " AND ((anchor > ?4 AND anchor < ?5) OR (build_id > ?4 AND build_id <= ?5))",
                (destination, factory, trigger, lower, upper),
            )
            return [Record(k, a, b, ref, d, bool(r)) for k, a, b, ref, d, r in rows]

        return await self._call(work)

    async def save_thread_record(
        self, destination: str, factory: str, trigger: str, record: Record
    ) -> None:
        values = (destination, factory, trigger, record.anchor, record.kind, record.build)
        await self._call(
            lambda c: c.execute(
                "INSERT INTO thread_messages (destination, factory, trigger, anchor, kind,"
                " build_id, ref, digest, reposted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET ref = excluded.ref, digest = excluded.digest,"
                " reposted = excluded.reposted",
                (*values, record.ref, record.digest, int(record.reposted)),
            )
        )

    async def drop_thread_records(
        self, destination: str, factory: str, trigger: str, keys: list[Key]
    ) -> None:
        await self._call(
            lambda c: c.executemany(
                "DELETE FROM thread_messages WHERE destination = ? AND factory = ?"
                " AND trigger = ? AND kind = ? AND anchor = ? AND build_id = ?",
                [(destination, factory, trigger, *key) for key in keys],
            )
        )

    async def ping(self) -> None:
        now = time.time()
        await self._call(
            lambda c: c.execute(
                "INSERT INTO heartbeat (id, at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (now,),
            )
        )

    async def recent_events(
        self, limit: int, factory: str | None = None, build_id: int | None = None
    ) -> list[EventRow]:
        def work(c: sqlite3.Connection) -> list[EventRow]:
            events = c.execute(
                "SELECT id, factory, trigger, build_id, status, received_at, body FROM events"
                " WHERE (?1 IS NULL OR factory = ?1) AND (?2 IS NULL OR build_id = ?2)"
                " ORDER BY id DESC LIMIT ?3",
                (factory, build_id, limit),
            ).fetchall()
            ids = [row[0] for row in events]
            marks = ",".join("?" * len(ids))
            deliveries: dict[int, list[DeliveryRow]] = {i: [] for i in ids}
            for row in c.execute(
                "SELECT d.id, d.event_id, d.destination, d.state, d.attempts, d.created_at,"
                " d.updated_at, d.next_attempt_at, d.last_error,"
                " e.factory, e.trigger, e.build_id, e.status"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                f" WHERE d.event_id IN ({marks}) ORDER BY d.id",
                ids,
            ):
                deliveries[row[1]].append(DeliveryRow(*row))
            return [
                EventRow(id_, factory_, trigger, build, status, received_at, body, deliveries[id_])
                for id_, factory_, trigger, build, status, received_at, body in events
            ]

        return await self._call(work)

    async def hourly_activity(self, since: float, hours: int) -> list[HourActivity]:
        def work(c: sqlite3.Connection) -> list[HourActivity]:
            until = since + hours * 3600.0
            received = {
                hour: (count, failed)
                for hour, count, failed in c.execute(
                    "SELECT CAST((received_at - ?1) / 3600 AS INTEGER), count(*),"
                    " sum(status = 'FAILED') FROM events"
                    " WHERE received_at >= ?1 AND received_at < ?2 GROUP BY 1",
                    (since, until),
                )
            }
            died = dict(
                c.execute(
                    "SELECT CAST((updated_at - ?1) / 3600 AS INTEGER), count(*) FROM deliveries"
                    " WHERE state = 'dead' AND updated_at >= ?1 AND updated_at < ?2 GROUP BY 1",
                    (since, until),
                ).fetchall()
            )
            return [
                HourActivity(since + hour * 3600.0, *received.get(hour, (0, 0)), died.get(hour, 0))
                for hour in range(hours)
            ]

        return await self._call(work)


def _history(c: sqlite3.Connection, event: NewEvent) -> History:
    """The build before this one and the failing streak it ends, reading only that far.

    A re-run that completed the same build earlier with another status counts as the
    build before: a re-run that passes fixes the build that had failed.
    """
    trigger = (event.factory, event.trigger)
    rerun = c.execute(
        "SELECT status FROM builds WHERE factory = ? AND trigger = ? AND build_id = ?"
        " AND status != ? AND coalesce(completed_at, 0) <= coalesce(?, 0)",
        (*trigger, event.build_id, event.status, event.completed_at),
    ).fetchone()
    prior = c.execute(
        "SELECT build_id, status FROM builds WHERE factory = ? AND trigger = ? AND build_id < ?"
        " ORDER BY build_id DESC LIMIT 1",
        (*trigger, event.build_id),
    ).fetchone()
    failed_before = prior is not None and prior[1] == "FAILED"
    before = streak_history(
        event.build_id,
        rerun[0] if rerun else None,
        (prior[0], prior[1]) if prior else None,
        _streak(c, trigger, event.build_id) if failed_before else None,
    )
    return _above(c, before, event)


def _above(c: sqlite3.Connection, before: History, event: NewEvent) -> History:
    """What is known above a late build: its newest, and the failing streak just above."""
    key = (event.factory, event.trigger, event.build_id)
    later = _one(
        c,
        "SELECT max(build_id) FROM builds WHERE factory = ? AND trigger = ? AND build_id > ?",
        key,
    )
    if later is None:
        return before
    ended = c.execute(
        "SELECT build_id, status FROM builds INDEXED BY builds_ended WHERE factory = ?"
        " AND trigger = ? AND build_id > ? AND status != 'FAILED' ORDER BY build_id LIMIT 1",
        key,
    ).fetchone()
    (failed,) = c.execute(
        "SELECT count(*) FROM (SELECT 1 FROM builds WHERE factory = ? AND trigger = ?"
        " AND build_id > ? AND build_id < ? LIMIT ?)",
        (*key, ended[0] if ended else HIGHEST, STREAK_LIMIT),
    ).fetchone()
    return above(before, later, (ended[0], ended[1]) if ended else None, failed)


LOWEST, HIGHEST = -(2**63), 2**63 - 1
# A window's bounds: the passed builds nearest below and above a build.
_LOWER_PASSED = (
    "SELECT build_id FROM builds WHERE factory = ? AND trigger = ? AND build_id < ?"
    " AND status = 'PASSED' ORDER BY build_id DESC LIMIT 1"
)
_UPPER_PASSED = (
    "SELECT build_id FROM builds WHERE factory = ? AND trigger = ? AND build_id > ?"
    " AND status = 'PASSED' ORDER BY build_id LIMIT 1"
)
# Each build in a window, with the newest event that gave it its status.
_WINDOW_BUILDS = (
    "SELECT b.build_id, b.status, (SELECT max(e.id) FROM events e WHERE e.factory = b.factory"
    " AND e.trigger = b.trigger AND e.build_id = b.build_id AND e.status = b.status)"
    " FROM builds b WHERE b.factory = ? AND b.trigger = ? AND b.build_id > ?"
    " AND b.build_id <= ? ORDER BY b.build_id"
)


def _one(c: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> int | None:
    row = c.execute(sql, args).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _bound(value: int | None, default: int) -> int:
    return default if value is None else value


def _streak(c: sqlite3.Connection, trigger: tuple[str, str], build_id: int) -> tuple[int, int]:
    """The first build and the length (counted up to STREAK_LIMIT) of the failing streak
    just below `build_id`; index lookups, however long the streak."""
    ended = c.execute(
        "SELECT build_id FROM builds INDEXED BY builds_ended"
        " WHERE factory = ? AND trigger = ? AND build_id < ? AND status != 'FAILED'"
        " ORDER BY build_id DESC LIMIT 1",
        (*trigger, build_id),
    ).fetchone()
    span = (*trigger, ended[0] if ended else -(2**63), build_id)
    since, count = c.execute(
        "SELECT (SELECT build_id FROM builds WHERE factory = ?1 AND trigger = ?2"
        "  AND build_id > ?3 AND build_id < ?4 ORDER BY build_id LIMIT 1),"
        " (SELECT count(*) FROM (SELECT 1 FROM builds"
        "  WHERE factory = ?1 AND trigger = ?2 AND build_id > ?3 AND build_id < ?4 LIMIT ?5))",
        (*span, STREAK_LIMIT),
    ).fetchone()
    return since, count


def _unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    return unavailable(what, exc, (sqlite3.Error,))


def _settle_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


# Columns newer than the first schema: a store file written before them gets them on open.
_ADDED_COLUMNS = (("events", "transition", "TEXT"), ("deliveries", "mentions", "TEXT"))


def _add_columns(connection: sqlite3.Connection) -> None:
    for table, column, kind in _ADDED_COLUMNS:
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _exclusive_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreUnavailable(
            f"{path} is in use by another jobserv-bridge serve (lock {lock_path})"
        ) from None
    return fd
