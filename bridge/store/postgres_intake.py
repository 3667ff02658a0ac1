"""The PostgreSQL outbox's intake: accepting an event, its place in its trigger's history,
its deliveries; and the write that `/readyz` checks."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from bridge.store.postgres_batches import GroupCommit
from bridge.store.postgres_pool import HIGHEST, HISTORY_LOCK_CLASS, PostgresPool
from bridge.store.postgres_silences import SilencesOnce
from bridge.store.records import Accepted, NewEvent, Plan, StoreUnavailable, muted, planned
from bridge.transitions import (
    STREAK_LIMIT,
    History,
    above,
    streak_history,
    transition,
)

log = logging.getLogger("bridge.store")

# A new event first takes its (factory, trigger)'s history lock, held until commit: the
# events of one trigger are accepted one at a time over all replicas, each reading the
# history that the ones before it wrote (a later statement, so a later snapshot). The lock
# comes before the row (the insert's source row is the lock's): every transaction holds a
# trigger's lock before it writes that trigger's events, so two never wait on each other's
# new row of one key while each holds a lock the other wants.
_INSERT_EVENT = """
INSERT INTO events (key, factory, trigger, build_id, status, body, received_at, completed_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $9
FROM (SELECT pg_advisory_xact_lock($8, hashtext($2 || E'\\n' || $3))) AS locked
ON CONFLICT (key) DO NOTHING
RETURNING id
"""

# A batch takes the history locks of all its triggers first, in the order of their lock
# keys: any two transactions take the locks they share in the same order, so batches of
# two replicas never deadlock (a hash collision of two triggers is one lock, taken once).
_LOCK_TRIGGERS = """
SELECT pg_advisory_xact_lock($1, lock) FROM (
    SELECT DISTINCT hashtext(name) AS lock FROM unnest($2::text[]) AS name ORDER BY lock
) AS wanted
"""

# Then its new events, in one statement (a repeat, within the batch or not, is skipped).
_INSERT_EVENTS = """
INSERT INTO events (key, factory, trigger, build_id, status, body, received_at, completed_at)
SELECT key, factory, trigger, build_id, status, body, received_at, completed_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bytea[],
    $7::double precision[], $8::double precision[]) WITH ORDINALITY
    AS new (key, factory, trigger, build_id, status, body, received_at, completed_at, position)
ORDER BY position
ON CONFLICT (key) DO NOTHING
RETURNING key, id
"""

# What a store reads of a trigger's history for a new event (see `policy.streak_history`).
_RERUN = """SELECT status FROM builds WHERE factory = $1 AND trigger = $2 AND build_id = $3
    AND status <> $4 AND coalesce(completed_at, 0) <= coalesce($5::double precision, 0)"""
_PRIOR = """SELECT build_id, status FROM builds WHERE factory = $1 AND trigger = $2
    AND build_id < $3 ORDER BY build_id DESC LIMIT 1"""
_ENDED = """coalesce((SELECT build_id FROM builds WHERE factory = $1 AND trigger = $2
    AND build_id < $3 AND status <> 'FAILED' ORDER BY build_id DESC LIMIT 1),
    -9223372036854775808)"""
# All of it in one round trip: the streak is read whatever the build before (when that one
# did not fail, its lookups stop at once) and is used only when that one failed.
_HISTORY = f"""
SELECT
    ({_RERUN}) AS rerun,
    prior.build_id AS prior_id,
    prior.status AS prior_status,
    (SELECT build_id FROM builds WHERE factory = $1 AND trigger = $2
        AND build_id > {_ENDED} AND build_id < $3 ORDER BY build_id LIMIT 1) AS since,
    (SELECT count(*) FROM (SELECT 1 FROM builds WHERE factory = $1 AND trigger = $2
        AND build_id > {_ENDED} AND build_id < $3 LIMIT $6) AS streak) AS count,
    (SELECT max(build_id) FROM builds WHERE factory = $1 AND trigger = $2
        AND build_id > $3) AS later
FROM (SELECT 1) AS one LEFT JOIN LATERAL ({_PRIOR}) AS prior ON true
"""

_RECORD = """
WITH build AS (
    INSERT INTO builds (factory, trigger, build_id, status, completed_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (factory, trigger, build_id) DO UPDATE
    SET status = excluded.status, completed_at = excluded.completed_at
    WHERE coalesce(excluded.completed_at, 0) >= coalesce(builds.completed_at, 0)
), event AS (
    UPDATE events SET transition = $6::jsonb WHERE id = $7
)
INSERT INTO deliveries
    (event_id, destination, created_at, updated_at, next_attempt_at, mentions, state, last_error)
SELECT $7, wanted.name, $8, $8, $8, wanted.mentions::jsonb, wanted.state, wanted.note
FROM unnest($9::text[], $10::text[], $11::text[], $12::text[])
    WITH ORDINALITY AS wanted (name, mentions, state, note, position)
ORDER BY wanted.position
"""

# What is known above a late build: the failing streak just above it.
_ENDED_ABOVE = """SELECT build_id, status FROM builds WHERE factory = $1 AND trigger = $2
    AND build_id > $3 AND status <> 'FAILED' ORDER BY build_id LIMIT 1"""
_FAILED_ABOVE = """SELECT count(*) FROM (SELECT 1 FROM builds WHERE factory = $1
    AND trigger = $2 AND build_id > $3 AND build_id < $4 LIMIT $5) AS streak"""


_EXISTING = """
SELECT id, (SELECT count(*) FROM deliveries WHERE event_id = events.id) AS deliveries
FROM events WHERE key = $1
"""


class PostgresIntake(PostgresPool):
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        super().__init__(url, pool_size=pool_size)
        # Accepts in batches, one commit each (see postgres_batches).
        self._batches = GroupCommit(self._accept_one, self._accept_many)

    async def accept(self, event: NewEvent, plan: Plan) -> Accepted:
        return await self._batches.accept(event, plan)

    async def _accept_one(self, event: NewEvent, plan: Plan) -> Accepted:
        async def work(c: Any) -> Accepted:
            # A repeat may be purged between the two statements: then it is new again.
            for _ in range(3):
                async with c.transaction():
                    row = await c.fetchrow(
                        _INSERT_EVENT,
                        event.key,
                        event.factory,
                        event.trigger,
                        event.build_id,
                        event.status,
                        event.body,
                        event.received_at,
                        HISTORY_LOCK_CLASS,
                        event.completed_at,
                    )
                    if row is not None:
                        silences = SilencesOnce(event.received_at)
                        return await _record(c, int(row["id"]), event, plan, silences)
                row = await c.fetchrow(_EXISTING, event.key)
                if row is not None:
                    return Accepted(int(row["id"]), int(row["deliveries"]), duplicate=True)
            raise _purged(event)

        return await self._run(work)

    async def _accept_many(
        self, batch: Sequence[tuple[NewEvent, Plan]]
    ) -> list[Accepted | StoreUnavailable] | None:
        """The events in one transaction, each in turn as `_accept_one` would; None when
        the server refused the transaction (rolled back, the connection still sound)."""

        async def work(c: Any) -> list[Accepted | StoreUnavailable] | None:
            try:
                async with c.transaction():
                    return await _accept_all(c, batch)
            except asyncpg.PostgresError as exc:
                # Refused and rolled back. Unless the connection went with it (then this
                # raises, and every caller is told the store is unavailable), the events
                # go again one by one.
                await c.execute("SELECT 1")
                log.info("a batch of accepts was rolled back: %s", type(exc).__name__)
                return None

        return await self._run(work)

    async def ping(self) -> None:
        await self._execute(
            "INSERT INTO heartbeat (id, at) VALUES (1, $1)"
            " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            time.time(),
        )


async def _accept_all(
    c: Any, batch: Sequence[tuple[NewEvent, Plan]]
) -> list[Accepted | StoreUnavailable]:
    """The batch's events in arrival order, under the locks of all its triggers."""
    events = [event for event, _ in batch]
    await c.execute(
        _LOCK_TRIGGERS, HISTORY_LOCK_CLASS, sorted({f"{e.factory}\n{e.trigger}" for e in events})
    )
    rows = await c.fetch(
        _INSERT_EVENTS,
        [e.key for e in events],
        [e.factory for e in events],
        [e.trigger for e in events],
        [e.build_id for e in events],
        [e.status for e in events],
        [e.body for e in events],
        [e.received_at for e in events],
        [e.completed_at for e in events],
    )
    new = {str(row["key"]): int(row["id"]) for row in rows}
    silences = SilencesOnce(min(e.received_at for e in events))
    answered: dict[str, Accepted] = {}
    answers: list[Accepted | StoreUnavailable] = []
    for event, plan in batch:
        first = answered.get(event.key)
        if first is not None:  # the same event earlier in this batch: a repeat of it
            answers.append(Accepted(first.event_id, first.deliveries, duplicate=True))
            continue
        answer = await _place(c, event, plan, new.get(event.key), silences)
        if isinstance(answer, Accepted):
            answered[event.key] = answer
        answers.append(answer)
    return answers


async def _place(
    c: Any, event: NewEvent, plan: Plan, event_id: int | None, silences: SilencesOnce
) -> Accepted | StoreUnavailable:
    """A batch's event, stored as `event_id` or a repeat of one stored before the batch."""
    for _ in range(3):
        if event_id is not None:
            return await _record(c, event_id, event, plan, silences)
        row = await c.fetchrow(_EXISTING, event.key)
        if row is not None:
            return Accepted(int(row["id"]), int(row["deliveries"]), duplicate=True)
        # Purged since the batch's insert: new again (its trigger's lock is held already).
        event_id = await c.fetchval(
            _INSERT_EVENT,
            event.key,
            event.factory,
            event.trigger,
            event.build_id,
            event.status,
            event.body,
            event.received_at,
            HISTORY_LOCK_CLASS,
            event.completed_at,
        )
    return _purged(event)


def _purged(event: NewEvent) -> StoreUnavailable:
    return StoreUnavailable(f"event {event.key} keeps being purged as it is stored")


async def _record(
    c: Any, event_id: int, event: NewEvent, plan: Plan, silences: SilencesOnce
) -> Accepted:
    """The new event's place in its trigger's history, and the deliveries `plan` picks."""
    change = transition(event.build_id, event.status, await _history(c, event))
    targets = planned(plan, change)
    if targets:
        targets = muted(targets, event, await silences.read(c))
    await c.execute(
        _RECORD,
        event.factory,
        event.trigger,
        event.build_id,
        event.status,
        event.completed_at,
        json.dumps(change.as_dict()),
        event_id,
        event.received_at,
        [t.destination for t in targets],
        [json.dumps(list(t.mentions)) if t.mentions else None for t in targets],
        [t.state for t in targets],
        [t.note for t in targets],
    )
    names = tuple(t.destination for t in targets if t.silenced_by is None)
    return Accepted(event_id, len(targets), False, names, change)


async def _history(c: Any, event: NewEvent) -> History:
    """The build before this one and the failing streak it ends, reading only that far."""
    trigger = (event.factory, event.trigger, event.build_id)
    row = await c.fetchrow(_HISTORY, *trigger, event.status, event.completed_at, STREAK_LIMIT)
    found = row["prior_id"]
    prior = (int(found), str(row["prior_status"])) if found is not None else None
    streak = None
    if prior is not None and prior[1] == "FAILED":
        streak = (int(row["since"]), int(row["count"]))
    before = streak_history(event.build_id, row["rerun"], prior, streak)
    later = row["later"]
    if later is None:
        return before
    found = await c.fetchrow(_ENDED_ABOVE, *trigger)
    ended = (int(found["build_id"]), str(found["status"])) if found else None
    failed = await c.fetchval(_FAILED_ABOVE, *trigger, ended[0] if ended else HIGHEST, STREAK_LIMIT)
    return above(before, int(later), ended, int(failed))
