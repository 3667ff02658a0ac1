"""The SQLite outbox's lanes: claims, outcomes, and the threads a threaded destination keeps."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Collection

from bridge.incidents import Key, Record, Seen, Window
from bridge.store.records import LATEST_COPY, Claim, Delivery, State, StoreUnavailable
from bridge.store.sqlite_writer import HIGHEST, JOB_ROWS, LOWEST, SqliteWriter, bound, scalar
from bridge.transitions import (
    Transition,
)

log = logging.getLogger("bridge.store")
SENT_RETRY = 1.0  # seconds before sent outcomes that could not be written are tried again
# How long a sent outcome waits for others to share its write: a few sends of a busy lane,
# far less than a send to a chat over a network (a crash resends at most these).
SENT_GATHER = 0.002


def _restore(claims: dict[int, float], before: dict[int, float | None]) -> None:
    for delivery_id, until in before.items():
        if until is None:
            claims.pop(delivery_id, None)
        else:
            claims[delivery_id] = until


class SqliteLanes(SqliteWriter):
    async def own_lane(self, destination: str) -> bool:
        """One process serves a SQLite file (it holds the file's lock): it owns every lane."""
        return True

    async def release_lane(self, destination: str) -> None:
        return None

    def on_queued(self, wake: Callable[[list[str]], None]) -> None:
        """No other process serves the file: nobody else queues for its lanes."""

    def announce_queued(self, destinations: list[str]) -> None:
        """No other process serves the file: there is nobody to tell."""

    async def claim(
        self,
        destination: str,
        now: float,
        limit: int,
        lease: float,
        passing: Collection[int] = (),
    ) -> Claim:
        # The lane's sent outcomes go first: a claim must see them written.
        self._flush_sent()
        passed = frozenset(passing)  # the lane's, in flight: not to be claimed, nor waited for

        def work(c: sqlite3.Connection) -> Claim:
            rows = c.execute(
                "SELECT d.id, d.event_id, d.attempts, d.created_at, d.next_attempt_at,"
                " e.body, e.factory, e.build_id, e.trigger, e.transition,"
                " d.mentions, e.key"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.destination = ? AND d.state = 'pending' ORDER BY d.id LIMIT ?",
                (destination, limit + len(passed)),
            ).fetchall()
            taken: list[Delivery] = []
            next_due, drained = None, False
            for id_, event_id, attempts, created_at, due, *event in rows:
                if id_ in self._unwritten or id_ in passed:
                    continue  # sent, its outcome on its way to the file; or being sent
                if len(taken) == limit:
                    break
                if self._claims.get(id_, now) > now:
                    break  # another claim holds the head: keep the lane in order
                if due > now:
                    next_due, drained = due, True  # the rest waits behind it
                    break
                body, factory, build_id, trigger, change, mentions, event_key = event
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
                        event_key,
                    )
                )
            else:
                drained = len(rows) < limit + len(passed)  # it read to the lane's end
            self._hold([d.id for d in taken], now + lease)
            return Claim(taken, next_due, drained)

        return await self._call(work, quick=True)

    async def release(self, ids: list[int]) -> None:
        self._flush_sent()
        await self._call(lambda c: self._let_go(ids), quick=True)

    # -- claims, in memory (changed by jobs alone) ------------------------------

    def _hold(self, ids: list[int], until: float) -> None:
        before = {i: self._claims.get(i) for i in ids}
        self._claims.update(dict.fromkeys(ids, until))
        self._undo.append(lambda: _restore(self._claims, before))

    def _let_go(self, ids: list[int]) -> None:
        before = {i: self._claims.get(i) for i in ids}
        for i in ids:
            self._claims.pop(i, None)
        self._undo.append(lambda: _restore(self._claims, before))

    # -- outcomes ------------------------------------------------------------

    async def _finish(
        self, delivery_id: int, state: State, at: float, error: str | None, now: float
    ) -> None:
        self._flush_sent()

        def work(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = coalesce(?, last_error), updated_at = ? WHERE id = ?",
                (state, at, error, now, delivery_id),
            )
            self._let_go([delivery_id])

        await self._call(work, quick=True)

    async def mark_sent(self, delivery_id: int, now: float) -> None:
        await self._finish(delivery_id, "sent", now, None, now)

    def note_sent(self, delivery_id: int, now: float) -> None:
        """Queue the outcome `sent`, written in a batch with the others queued meanwhile;
        the delivery stays claimed until it is written."""
        self._sent.append((delivery_id, now))
        self._unwritten.add(delivery_id)
        if len(self._sent) == 1 and self._loop is not None:
            self._loop.call_later(SENT_GATHER, self._flush_sent)

    def _flush_sent(self) -> None:
        """Queue one writer job for the sent outcomes noted so far (none: nothing)."""
        batch, self._sent = self._sent, []
        if not batch:
            return

        def work(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE deliveries SET state = 'sent', attempts = attempts + 1,"
                " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                [(now, now, delivery_id) for delivery_id, now in batch],
            )
            self._let_go([delivery_id for delivery_id, _ in batch])

        try:
            written = self._submit(work, quick=True)
        except StoreUnavailable as exc:
            self._sent_failed(batch, exc)
            return
        written.add_done_callback(lambda done: self._sent_written(batch, done))
        self._sent_writes.add(written)

    def _sent_written(self, batch: list[tuple[int, float]], done: asyncio.Future[None]) -> None:
        self._sent_writes.discard(done)
        if done.cancelled() or done.exception() is not None:
            self._sent_failed(batch, None if done.cancelled() else done.exception())
        else:
            self._unwritten.difference_update(delivery_id for delivery_id, _ in batch)

    def _sent_failed(self, batch: list[tuple[int, float]], exc: BaseException | None) -> None:
        """Not written: try again shortly; meanwhile the deliveries stay claimed, so this
        process sends none of them again (a crash before they are written may)."""
        log.warning("could not record %d sent deliveries, trying again: %s", len(batch), exc)
        if self._loop is None or self._closing:
            return
        self._loop.call_later(SENT_RETRY, self._requeue_sent, batch)

    def _requeue_sent(self, batch: list[tuple[int, float]]) -> None:
        if self._closing:
            return
        self._sent[:0] = batch
        self._flush_sent()

    async def _before_close(self) -> None:
        await self._write_sent_now()

    async def _write_sent_now(self) -> None:
        """Write every sent outcome noted (before closing): wait for them, failed or not."""
        self._flush_sent()
        if self._sent_writes:
            await asyncio.wait(set(self._sent_writes))

    async def mark_retry(self, delivery_id: int, at: float, error: str, now: float) -> None:
        await self._finish(delivery_id, "pending", at, error, now)

    async def mark_dead(self, delivery_id: int, error: str, now: float) -> None:
        await self._finish(delivery_id, "dead", now, error, now)

    async def kill_orphans(self, destinations: set[str], now: float) -> int:
        """In writer jobs of JOB_ROWS at most, as a purge: a destination removed by a
        reload may leave a backlog of any size, and the webhooks go on meanwhile."""
        names = sorted(destinations)
        marks = ",".join("?" * len(names))

        def work(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE deliveries SET state = 'dead', updated_at = ?, claimed_until = NULL,"
                " last_error = 'destination ' || destination || ' is no longer configured'"
                " WHERE id IN (SELECT id FROM deliveries WHERE state = 'pending'"
                f" AND destination NOT IN ({marks}) LIMIT ?)",
                (now, *names, JOB_ROWS),
            ).rowcount

        killed = 0
        while (chunk := await self._call(work)) > 0:
            killed += chunk
            if chunk < JOB_ROWS:
                break
        return killed

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
            lower = scalar(c, _LOWER_PASSED, key)
            upper = scalar(c, _UPPER_PASSED, key)
            span = (factory, trigger, bound(lower, LOWEST), bound(upper, HIGHEST))
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
            lower, upper = bound(window.lower, LOWEST), bound(window.upper, HIGHEST)
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


# A window's bounds: the passed builds nearest below and above a build.
_LOWER_PASSED = (
    "SELECT build_id FROM builds WHERE factory = ? AND trigger = ? AND build_id < ?"
    " AND status = 'PASSED' ORDER BY build_id DESC LIMIT 1"
)
_UPPER_PASSED = (
    "SELECT build_id FROM builds WHERE factory = ? AND trigger = ? AND build_id > ?"
    " AND status = 'PASSED' ORDER BY build_id LIMIT 1"
)
# Each build in a window, with the event of its latest completion (`LATEST_COPY`).
_WINDOW_BUILDS = (
    "SELECT b.build_id, b.status, (SELECT e.id FROM events e WHERE e.factory = b.factory"
    " AND e.trigger = b.trigger AND e.build_id = b.build_id AND e.status = b.status"
    f" {LATEST_COPY}) FROM builds b WHERE b.factory = ? AND b.trigger = ? AND b.build_id > ?"
    " AND b.build_id <= ? ORDER BY b.build_id"
)
