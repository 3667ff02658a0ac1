"""The PostgreSQL outbox's lanes: ownership, claims and outcomes (and, from
postgres_threads, the threads a threaded destination keeps)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Collection
from typing import Any

from bridge.store.postgres_pool import log, stored_transition
from bridge.store.postgres_threads import PostgresThreads
from bridge.store.records import Claim, Delivery, State

# The lane's head, in order, but for the ids in $3, each row with what it holds when this
# claim could lock it: rows another transaction is claiming or finishing are skipped, not
# waited for, and the first of them ends the claim (the lane keeps its order). The rows
# before the first one that ends it (locked elsewhere, claimed until after $4, or due after
# it: as `PostgresLanes._take` reads them) are held until $5, in the same statement: one
# round trip, committed without waiting for the server's log to be synced (a claim is a
# lease: one lost in a server crash is taken again, at least once).
#
# Both reads use the lane's own index (its pending deliveries, in order), whatever the
# table's statistics say: the destination is matched as a range (an equality all the same),
# so that only that index gives the order asked for. As an equality, statistics taken while
# the lanes were full (most rows pending) have had the planner walk the whole table in id
# order instead, every sent delivery before the lane's head: each claim as slow as the
# table is long, until the next ANALYZE.
_CLAIM = """
WITH locked AS (
    SELECT d.id, d.event_id, d.attempts, d.created_at, d.next_attempt_at, d.claimed_until,
        d.mentions, e.body, e.factory, e.build_id, e.trigger, e.transition, e.key
    FROM deliveries d JOIN events e ON e.id = d.event_id
    WHERE d.destination >= $1 AND d.destination <= $1 AND d.state = 'pending'
        AND d.id <> ALL($3::bigint[])
    ORDER BY d.destination, d.id LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
), head AS (
    SELECT id FROM deliveries
    WHERE destination >= $1 AND destination <= $1 AND state = 'pending'
        AND id <> ALL($3::bigint[])
    ORDER BY destination, id LIMIT $2
), lane AS (
    SELECT head.id AS head_id, locked.* FROM head LEFT JOIN locked ON locked.id = head.id
), stop AS (
    SELECT coalesce(min(head_id), 9223372036854775807) AS head_id FROM lane
    WHERE id IS NULL OR claimed_until > $4 OR next_attempt_at > $4
), held AS (
    UPDATE deliveries d SET claimed_until = $5
    FROM lane, stop WHERE d.id = lane.id AND lane.head_id < stop.head_id
)
SELECT lane.*, set_config('synchronous_commit', 'off', true) AS unsynced
FROM lane ORDER BY lane.head_id
"""
# Sent outcomes, many at once: (ids, times) as two arrays.
_MARK_SENT = """
UPDATE deliveries d SET state = 'sent', attempts = d.attempts + 1, next_attempt_at = s.at,
    updated_at = s.at, claimed_until = NULL
FROM unnest('{{{ids}}}'::bigint[], '{{{times}}}'::float8[]) AS s(id, at)
WHERE d.id = s.id
"""
SENT_RETRY = 1.0  # seconds before sent outcomes that could not be written are tried again
SENT_WAIT = 5.0  # the longest a close waits for them


async def _mark_sent(c: Any, batch: list[tuple[int, float]]) -> None:
    """One round trip for the whole batch: its numbers written into the statement (our own
    ints and floats: nothing to escape), which is bookkeeping, so it commits without waiting
    for the server's log to reach its disk (a server crash that loses it resends them)."""
    update = _MARK_SENT.format(
        ids=",".join(str(int(i)) for i, _ in batch),
        times=",".join(repr(float(at)) for _, at in batch),
    )
    try:
        await c.execute(f"BEGIN; SET LOCAL synchronous_commit = off; {update}; COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            if c.is_in_transaction():
                await c.execute("ROLLBACK")
        raise


class PostgresLanes(PostgresThreads):
    async def claim(
        self,
        destination: str,
        now: float,
        limit: int,
        lease: float,
        passing: Collection[int] = (),
    ) -> Claim:
        # Passed over at the lane's head: the lane's sends in flight, and the sent deliveries
        # whose outcome is not written yet (still pending there). A claim does not wait for
        # that write, which waits for the other lanes' sends: it was half of a claim's time
        # at 200 events/s to ten destinations.
        skipped = [*passing, *self._unwritten]

        async def work(c: Any) -> Claim:
            rows = await c.fetch(_CLAIM, destination, limit, skipped, now, now + lease)
            return self._take(destination, now, rows, limit)

        return await self._run(work)

    def _take(self, destination: str, now: float, rows: list[Any], limit: int) -> Claim:
        """The deliveries at the head of the lane that are due, in order."""
        taken: list[Delivery] = []
        next_due, drained = None, False
        for row in rows:
            id_ = row["head_id"]
            if row["id"] is None:
                break  # another transaction holds the head: keep the lane in order
            claimed_until = row["claimed_until"]
            if claimed_until is not None and claimed_until > now:
                break  # another claim holds it
            due = float(row["next_attempt_at"])
            if due > now:
                next_due, drained = due, True  # the rest waits behind it
                break
            taken.append(
                Delivery(
                    int(id_),
                    int(row["event_id"]),
                    destination,
                    int(row["attempts"]),
                    float(row["created_at"]),
                    bytes(row["body"]),
                    str(row["factory"]),
                    int(row["build_id"]),
                    str(row["trigger"]),
                    stored_transition(row["transition"]),
                    tuple(json.loads(row["mentions"])) if row["mentions"] else (),
                    str(row["key"]),
                )
            )
        else:
            drained = len(rows) < limit  # it read to the lane's end
        return Claim(taken, next_due, drained)

    async def release(self, ids: list[int]) -> None:
        if ids:
            await self._execute(
                "UPDATE deliveries SET claimed_until = NULL WHERE id = ANY($1::bigint[])", ids
            )

    async def _finish(
        self, delivery_id: int, state: State, at: float, error: str | None, now: float
    ) -> None:
        await self._execute(
            "UPDATE deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2,"
            " last_error = coalesce($3, last_error), updated_at = $4, claimed_until = NULL"
            " WHERE id = $5",
            state,
            at,
            error,
            now,
            delivery_id,
        )

    async def mark_sent(self, delivery_id: int, now: float) -> None:
        await self._finish(delivery_id, "sent", now, None, now)

    def note_sent(self, delivery_id: int, now: float) -> None:
        """Queue the outcome `sent`; one statement writes all those queued meanwhile."""
        self._sent.append((delivery_id, now))
        self._unwritten.add(delivery_id)
        if self._sent_writer is None or self._sent_writer.done():
            self._sent_writer = asyncio.create_task(self._write_sent(), name="sent outcomes")

    async def _write_sent(self) -> None:
        """Write the queued sent outcomes, batch after batch, until none is left; a batch
        that fails is tried again after a pause (its deliveries stay claimed meanwhile)."""
        while self._sent:
            batch, self._sent = self._sent, []

            try:
                await self._run(functools.partial(_mark_sent, batch=batch))
                self._unwritten.difference_update(delivery_id for delivery_id, _ in batch)
            except Exception as exc:
                self._sent[:0] = batch
                log.warning(
                    "could not record %d sent deliveries, trying again: %s", len(batch), exc
                )
                if self._pool is None:
                    return
                await asyncio.sleep(SENT_RETRY)

    async def _before_close(self) -> None:
        writer = self._sent_writer
        if writer is not None and not writer.done():
            await asyncio.wait({writer}, timeout=SENT_WAIT)
            writer.cancel()

    async def mark_retry(self, delivery_id: int, at: float, error: str, now: float) -> None:
        await self._finish(delivery_id, "pending", at, error, now)

    async def mark_dead(self, delivery_id: int, error: str, now: float) -> None:
        await self._finish(delivery_id, "dead", now, error, now)

    async def kill_orphans(self, destinations: set[str], now: float) -> int:
        return await self._execute(
            "UPDATE deliveries SET state = 'dead', updated_at = $1, claimed_until = NULL,"
            " last_error = 'destination ' || destination || ' is no longer configured'"
            " WHERE state = 'pending' AND destination <> ALL($2::text[])",
            now,
            sorted(destinations),
        )

    async def own_lane(self, destination: str) -> bool:
        if not await self._lanes.hold(destination):
            return False
        if destination in self._lanes.fresh:
            # We just took the lane: every claim left in it is its previous owner's,
            # and that owner is gone or has stopped the lane.
            released = await self._execute(
                "UPDATE deliveries SET claimed_until = NULL"
                " WHERE destination = $1 AND state = 'pending' AND claimed_until IS NOT NULL",
                destination,
            )
            self._lanes.fresh.discard(destination)
            if released:
                log.info(
                    "lane %s: released %d claim(s) its previous owner left", destination, released
                )
        return True

    async def release_lane(self, destination: str) -> None:
        await self._lanes.drop(destination)
