"""The PostgreSQL outbox's intake: accepting events, in batches or one at a time (their
places in their triggers' histories are postgres_history's), and the write that `/readyz`
checks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from bridge.store.postgres_batches import GroupCommit
from bridge.store.postgres_history import accept_in_order, record, repeat_of
from bridge.store.postgres_pool import HISTORY_LOCK_CLASS, PostgresPool
from bridge.store.postgres_silences import SilencesOnce
from bridge.store.records import Accepted, NewEvent, Plan, StoreUnavailable

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
                        return await record(c, int(row["id"]), event, plan, silences)
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
    in_order = await accept_in_order(c, batch, new, silences)
    answered = {event.key: answer for (event, _), answer in zip(batch, in_order, strict=False)}
    answers: list[Accepted | StoreUnavailable] = list(in_order)
    for event, plan in batch[len(answers) :]:
        first = answered.get(event.key)
        if first is not None:  # the same event earlier in this batch: a repeat of it
            answers.append(repeat_of(first))
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
            return await record(c, event_id, event, plan, silences)
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
