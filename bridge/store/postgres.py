"""The shared outbox: PostgreSQL through asyncpg, for several replicas of the bridge.

Any replica accepts any webhook: a repeat is recognised by the UNIQUE key of
events (INSERT ... ON CONFLICT DO NOTHING), never by a read before the write. A
new event, its place in its trigger's build history and its deliveries go in in
one transaction, under a lock per (factory, trigger) so that the events of one
trigger are accepted one at a time over all replicas. Concurrent accepts share
the server's WAL flushes (its own group commit), so there is no batching here.

A lane (a destination's deliveries, in id order) is owned by one replica at a
time through a session-level advisory lock held on a connection of its own: the
server drops the lock as soon as that connection ends, so the lanes of a replica
that dies are free at once. Only the owner claims; a claim is still a lease, with
FOR UPDATE SKIP LOCKED so that two claimers never wait on each other and the one
that loses the race takes nothing rather than rows behind the head. Taking a lane
over releases the claims its previous owner left, as opening the SQLite file does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bridge.incidents import Key, Record, Seen, Window
from bridge.policy import (
    STREAK_LIMIT,
    History,
    Transition,
    above,
    streak_history,
    transition,
)
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
from bridge.store.postgres_schema import migrate

T = TypeVar("T")
log = logging.getLogger("bridge.store")

# Advisory locks: the first key of each use (see postgres_schema.LOCK_CLASS for "JB").
LANE_LOCK_CLASS = 0x4A43  # the second key is hashtext(destination)
HISTORY_LOCK_CLASS = 0x4A44  # the second key is hashtext(factory, newline, trigger)

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
# How often the connection that holds the lanes is checked, and how long it may take to answer.
LANE_CHECK_INTERVAL = 5.0
LANE_CHECK_TIMEOUT = 3.0
# The server's keepalive probes on that connection: a replica that vanished without
# closing it (a cut network) lets go of its lanes within about idle + interval * count.
LANE_KEEPALIVE = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}

# A new event also takes its (factory, trigger)'s history lock, held until commit: the
# events of one trigger are accepted one at a time over all replicas, each reading the
# history that the ones before it wrote (a later statement, so a later snapshot).
_INSERT_EVENT = """
WITH event AS (
    INSERT INTO events (key, factory, trigger, build_id, status, body, received_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (key) DO NOTHING
    RETURNING id
)
SELECT id, pg_advisory_xact_lock($8, hashtext($2 || E'\\n' || $3)) FROM event
"""

# What a store reads of a trigger's history for a new event (see `policy.streak_history`).
_RERUN = """SELECT status FROM builds WHERE factory = $1 AND trigger = $2 AND build_id = $3
    AND status <> $4 AND coalesce(completed_at, 0) <= coalesce($5::double precision, 0)"""
_PRIOR = """SELECT build_id, status FROM builds WHERE factory = $1 AND trigger = $2
    AND build_id < $3 ORDER BY build_id DESC LIMIT 1"""
_ENDED = """coalesce((SELECT build_id FROM builds WHERE factory = $1 AND trigger = $2
    AND build_id < $3 AND status <> 'FAILED' ORDER BY build_id DESC LIMIT 1),
    -9223372036854775808)"""
_STREAK = f"""
SELECT
    (SELECT build_id FROM builds WHERE factory = $1 AND trigger = $2
        AND build_id > {_ENDED} AND build_id < $3 ORDER BY build_id LIMIT 1) AS since,
    (SELECT count(*) FROM (SELECT 1 FROM builds WHERE factory = $1 AND trigger = $2
        AND build_id > {_ENDED} AND build_id < $3 LIMIT $4) AS streak) AS count
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
INSERT INTO deliveries (event_id, destination, created_at, updated_at, next_attempt_at, mentions)
SELECT $7, wanted.name, $8, $8, $8, wanted.mentions::jsonb
FROM unnest($9::text[], $10::text[]) WITH ORDINALITY AS wanted (name, mentions, position)
ORDER BY wanted.position
"""

# What is known above a late build: its newest, and the failing streak just above it.
_LATER = """SELECT max(build_id) FROM builds WHERE factory = $1 AND trigger = $2
    AND build_id > $3"""
_ENDED_ABOVE = """SELECT build_id, status FROM builds WHERE factory = $1 AND trigger = $2
    AND build_id > $3 AND status <> 'FAILED' ORDER BY build_id LIMIT 1"""
_FAILED_ABOVE = """SELECT count(*) FROM (SELECT 1 FROM builds WHERE factory = $1
    AND trigger = $2 AND build_id > $3 AND build_id < $4 LIMIT $5) AS streak"""

LOWEST, HIGHEST = -(2**63), 2**63 - 1
# A window (see `incidents.Window`): the passed builds nearest below and above a build ...
_WINDOW_BOUNDS = """
SELECT
    (SELECT build_id FROM builds WHERE factory = $1 AND trigger = $2 AND build_id < $3
        AND status = 'PASSED' ORDER BY build_id DESC LIMIT 1) AS lower,
    (SELECT build_id FROM builds WHERE factory = $1 AND trigger = $2 AND build_id > $3
        AND status = 'PASSED' ORDER BY build_id LIMIT 1) AS upper
"""
# ... and each build between, with the newest event that gave it its status.
_WINDOW_BUILDS = """
SELECT b.build_id, b.status, (SELECT max(e.id) FROM events e WHERE e.factory = b.factory
    AND e.trigger = b.trigger AND e.build_id = b.build_id AND e.status = b.status) AS event_id
FROM builds b WHERE b.factory = $1 AND b.trigger = $2 AND b.build_id > $3 AND b.build_id <= $4
ORDER BY b.build_id
"""
_THREAD_RECORDS = """
SELECT kind, anchor, build_id, ref, digest, reposted FROM thread_messages
WHERE destination = $1 AND factory = $2 AND trigger = $3
    AND ((anchor > $4 AND anchor < $5) OR (build_id > $4 AND build_id <= $5))
"""

_EXISTING = """
SELECT id, (SELECT count(*) FROM deliveries WHERE event_id = events.id) AS deliveries
FROM events WHERE key = $1
"""

# Rows another transaction is claiming or finishing are skipped, not waited for ...
_LOCK_HEAD = """
SELECT d.id, d.event_id, d.attempts, d.created_at, d.next_attempt_at, d.claimed_until,
    d.mentions, e.body, e.factory, e.build_id, e.trigger, e.transition, e.key
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.destination = $1 AND d.state = 'pending'
ORDER BY d.id LIMIT $2
FOR UPDATE OF d SKIP LOCKED
"""
# ... and the lane's real head says where the rows we hold stop being its front.
_HEAD = """
SELECT id FROM deliveries WHERE destination = $1 AND state = 'pending' ORDER BY id LIMIT $2
"""

_DELIVERY_ROW = """
SELECT d.id, d.event_id, d.destination, d.state, d.attempts, d.created_at, d.updated_at,
    d.next_attempt_at, d.last_error, e.factory, e.trigger, e.build_id, e.status
FROM deliveries d JOIN events e ON e.id = d.event_id
"""

# What the driver raises when the server or the connection fails. Not all: asyncpg
# also has InternalClientError ("cannot switch to state ...; another operation is in
# progress") on a connection cut in the middle of a query, and the odd plain error
# of a connection in a state it did not expect. A store call turns any exception
# into StoreUnavailable (`unavailable`), so that a store failure is always a 503.
_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    EOFError,  # asyncio.IncompleteReadError: the server went away mid-message
    TimeoutError,
)


def _unavailable(what: str, exc: Exception) -> StoreUnavailable:
    return unavailable(what, exc, _ERRORS)


def _count(status: str) -> int:
    """The row count of a command status such as "UPDATE 3"."""
    return int(status.rsplit(" ", 1)[-1])


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable PostgreSQL URL)"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


async def _keep_session(connection: Any) -> None:
    """Nothing to reset: the pool's connections never change their session state.

    (asyncpg still rolls back a transaction left open; this only saves the default
    RESET ALL and friends, a round trip on every release.)
    """


class PostgresStore(Store):
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.where = safe_url(url)
        self.pool_size = pool_size
        self._pool: Any = None
        self._lanes = _LaneLocks(url, self.where)

    async def open(self, *, serving: bool) -> None:
        size = self.pool_size if serving else 1
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                reset=_keep_session,
                server_settings={"application_name": "jobserv-bridge"},
            )
            async with self._pool.acquire() as connection:
                await migrate(connection)
        except StoreUnavailable:
            await self.close()
            raise
        except (*_ERRORS, ValueError) as exc:
            await self.close()
            raise StoreUnavailable(
                f"cannot open the PostgreSQL store {self.where}: {exc}"
            ) from None
        except Exception as exc:
            await self.close()
            raise _unavailable(f"cannot open the PostgreSQL store {self.where}", exc) from None

    async def close(self) -> None:
        await self._lanes.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except Exception:
                pool.terminate()  # gone or stuck: close the sockets without a goodbye
            except asyncio.CancelledError:
                pool.terminate()
                raise

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        try:
            async with self._pool.acquire() as connection:
                yield connection
        except Exception as exc:
            # The pool closes a connection that fails its release, so the next call
            # gets a sound one: the store recovers once the server is back.
            raise _unavailable("store error", exc) from None

    async def _run(self, work: Callable[[Any], Awaitable[T]], *, transaction: bool = False) -> T:
        async with self._connection() as connection:
            if not transaction:
                return await work(connection)
            async with connection.transaction():
                return await work(connection)

    async def _execute(self, query: str, *args: object) -> int:
        async def work(c: Any) -> int:
            return _count(await c.execute(query, *args))

        return await self._run(work)

    # -- the store interface --------------------------------------------------

    async def accept(self, event: NewEvent, plan: Plan) -> Accepted:
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
                    )
                    if row is not None:
                        return await _record(c, int(row["id"]), event, plan)
                row = await c.fetchrow(_EXISTING, event.key)
                if row is not None:
                    return Accepted(int(row["id"]), int(row["deliveries"]), duplicate=True)
            raise StoreUnavailable(f"event {event.key} keeps being purged as it is stored")

        return await self._run(work)

    async def thread(self, destination: str, factory: str, trigger: str) -> str | None:
        async def work(c: Any) -> str | None:
            found = await c.fetchval(
                "SELECT thread FROM threads"
                " WHERE destination = $1 AND factory = $2 AND trigger = $3",
                destination,
                factory,
                trigger,
            )
            return None if found is None else str(found)

        return await self._run(work)

    async def set_thread(
        self, destination: str, factory: str, trigger: str, thread: str | None
    ) -> None:
        if thread is None:
            await self._execute(
                "DELETE FROM threads WHERE destination = $1 AND factory = $2 AND trigger = $3",
                destination,
                factory,
                trigger,
            )
        else:
            await self._execute(
                "INSERT INTO threads (destination, factory, trigger, thread)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (destination, factory, trigger)"
                " DO UPDATE SET thread = excluded.thread",
                destination,
                factory,
                trigger,
                thread,
            )

    async def claim(self, destination: str, now: float, limit: int, lease: float) -> Claim:
        async def work(c: Any) -> Claim:
            held = {row["id"]: row for row in await c.fetch(_LOCK_HEAD, destination, limit)}
            head = [row["id"] for row in await c.fetch(_HEAD, destination, limit)]
            taken: list[Delivery] = []
            next_due = None
            for id_ in head:
                row = held.get(id_)
                if row is None:
                    break  # another transaction holds the head: keep the lane in order
                claimed_until = row["claimed_until"]
                if claimed_until is not None and claimed_until > now:
                    break  # another claim holds it
                due = float(row["next_attempt_at"])
                if due > now:
                    next_due = due if not taken else None
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
                        _transition(row["transition"]),
                        tuple(json.loads(row["mentions"])) if row["mentions"] else (),
                        str(row["key"]),
                    )
                )
            if taken:
                await c.execute(
                    "UPDATE deliveries SET claimed_until = $1 WHERE id = ANY($2::bigint[])",
                    now + lease,
                    [d.id for d in taken],
                )
            return Claim(taken, next_due)

        return await self._run(work, transaction=True)

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

    async def list_deliveries(
        self, state: State | None = None, destination: str | None = None, limit: int = 100
    ) -> list[DeliveryRow]:
        async def work(c: Any) -> list[DeliveryRow]:
            rows = await c.fetch(
                _DELIVERY_ROW + " WHERE ($1::text IS NULL OR d.state = $1) AND ($2::text IS NULL"
                " OR d.destination = $2) ORDER BY d.id DESC LIMIT $3",
                state,
                destination,
                limit,
            )
            return [_delivery_row(row) for row in rows]

        return await self._run(work)

    async def requeue_dead(self, ids: list[int] | None, now: float) -> int:
        update = (
            "UPDATE deliveries SET state = 'pending', next_attempt_at = $1, updated_at = $1,"
            " attempts = 0 WHERE state = 'dead'"
        )
        if ids is None:
            return await self._execute(update, now)
        return await self._execute(update + " AND id = ANY($2::bigint[])", now, ids)

    async def purge(self, before: float, states: tuple[State, ...]) -> int:
        async def work(c: Any) -> int:
            deleted = _count(
                await c.execute(
                    "DELETE FROM deliveries WHERE state = ANY($1::text[]) AND updated_at < $2",
                    list(states),
                    before,
                )
            )
            await c.execute(
                "DELETE FROM events WHERE received_at < $1 AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
                before,
            )
            return deleted

        return await self._run(work, transaction=True)

    async def counts(self) -> dict[State, int]:
        async def work(c: Any) -> dict[State, int]:
            rows = await c.fetch("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
            found = {row["state"]: int(row["n"]) for row in rows}
            return {s: found.get(s, 0) for s in ("pending", "sent", "dead")}

        return await self._run(work)

    async def destination_stats(self) -> dict[str, DestinationStats]:
        async def work(c: Any) -> dict[str, DestinationStats]:
            rows = await c.fetch(
                "SELECT destination, count(*) FILTER (WHERE state = 'pending') AS pending,"
                " min(created_at) FILTER (WHERE state = 'pending') AS oldest_pending,"
                " count(*) FILTER (WHERE state = 'dead') AS dead,"
                " min(created_at) FILTER (WHERE state = 'dead') AS oldest_dead"
                " FROM deliveries WHERE state <> 'sent' GROUP BY destination"
            )
            return {
                row["destination"]: DestinationStats(
                    int(row["pending"]), row["oldest_pending"], int(row["dead"]), row["oldest_dead"]
                )
                for row in rows
            }

        return await self._run(work)

    async def ping(self) -> None:
        await self._execute(
            "INSERT INTO heartbeat (id, at) VALUES (1, $1)"
            " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            time.time(),
        )

    async def recent_events(
        self, limit: int, factory: str | None = None, build_id: int | None = None
    ) -> list[EventRow]:
        async def work(c: Any) -> list[EventRow]:
            events = await c.fetch(
                "SELECT id, factory, trigger, build_id, status, received_at, body FROM events"
                " WHERE ($1::text IS NULL OR factory = $1) AND ($2::bigint IS NULL"
                " OR build_id = $2) ORDER BY id DESC LIMIT $3",
                factory,
                build_id,
                limit,
            )
            ids = [row["id"] for row in events]
            deliveries: dict[int, list[DeliveryRow]] = {i: [] for i in ids}
            for row in await c.fetch(
                _DELIVERY_ROW + " WHERE d.event_id = ANY($1::bigint[]) ORDER BY d.id", ids
            ):
                deliveries[row["event_id"]].append(_delivery_row(row))
            return [
                EventRow(
                    int(row["id"]),
                    str(row["factory"]),
                    str(row["trigger"]),
                    int(row["build_id"]),
                    str(row["status"]),
                    float(row["received_at"]),
                    bytes(row["body"]),
                    deliveries=deliveries[row["id"]],
                )
                for row in events
            ]

        return await self._run(work, transaction=True)

    async def hourly_activity(self, since: float, hours: int) -> list[HourActivity]:
        async def work(c: Any) -> list[HourActivity]:
            until = since + hours * 3600.0
            received = {
                row["hour"]: (int(row["events"]), int(row["failed"]))
                for row in await c.fetch(
                    "SELECT floor((received_at - $1) / 3600)::int AS hour, count(*) AS events,"
                    " count(*) FILTER (WHERE status = 'FAILED') AS failed FROM events"
                    " WHERE received_at >= $1 AND received_at < $2 GROUP BY 1",
                    since,
                    until,
                )
            }
            died = {
                row["hour"]: int(row["dead"])
                for row in await c.fetch(
                    "SELECT floor((updated_at - $1) / 3600)::int AS hour, count(*) AS dead"
                    " FROM deliveries WHERE state = 'dead' AND updated_at >= $1"
                    " AND updated_at < $2 GROUP BY 1",
                    since,
                    until,
                )
            }
            return [
                HourActivity(since + hour * 3600.0, *received.get(hour, (0, 0)), died.get(hour, 0))
                for hour in range(hours)
            ]

        return await self._run(work, transaction=True)

    async def trigger_window(self, factory: str, trigger: str, build_id: int) -> Window:
        async def work(c: Any) -> Window:
            bounds = await c.fetchrow(_WINDOW_BOUNDS, factory, trigger, build_id)
            lower, upper = bounds["lower"], bounds["upper"]
            rows = await c.fetch(
                _WINDOW_BUILDS,
                factory,
                trigger,
                LOWEST if lower is None else lower,
                HIGHEST if upper is None else upper,
            )
            builds = {
                int(row["build_id"]): Seen(
                    str(row["status"]), None if row["event_id"] is None else int(row["event_id"])
                )
                for row in rows
            }
            return Window(
                None if lower is None else int(lower), None if upper is None else int(upper), builds
            )

        return await self._run(work, transaction=True)

    async def event_bodies(self, ids: list[int]) -> dict[int, bytes]:
        async def work(c: Any) -> dict[int, bytes]:
            rows = await c.fetch("SELECT id, body FROM events WHERE id = ANY($1::bigint[])", ids)
            return {int(row["id"]): bytes(row["body"]) for row in rows}

        return await self._run(work)

    async def delivery_mentions(
        self, destination: str, event_ids: list[int]
    ) -> dict[int, tuple[str, ...]]:
        async def work(c: Any) -> dict[int, tuple[str, ...]]:
            rows = await c.fetch(
                "SELECT event_id, mentions FROM deliveries WHERE destination = $1"
                " AND mentions IS NOT NULL AND event_id = ANY($2::bigint[])",
                destination,
                event_ids,
            )
            return {int(row["event_id"]): tuple(json.loads(row["mentions"])) for row in rows}

        return await self._run(work)

    async def thread_records(
        self, destination: str, factory: str, trigger: str, window: Window
    ) -> list[Record]:
        async def work(c: Any) -> list[Record]:
            rows = await c.fetch(
                _THREAD_RECORDS,
                destination,
                factory,
                trigger,
                LOWEST if window.lower is None else window.lower,
                HIGHEST if window.upper is None else window.upper,
            )
            return [
                Record(
                    row["kind"],
                    int(row["anchor"]),
                    int(row["build_id"]),
                    str(row["ref"]),
                    str(row["digest"]),
                    bool(row["reposted"]),
                )
                for row in rows
            ]

        return await self._run(work)

    async def save_thread_record(
        self, destination: str, factory: str, trigger: str, record: Record
    ) -> None:
        await self._execute(
            "INSERT INTO thread_messages (destination, factory, trigger, anchor, kind, build_id,"
            " ref, digest, reposted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (destination, factory, trigger, anchor, kind, build_id) DO UPDATE"
            " SET ref = excluded.ref, digest = excluded.digest, reposted = excluded.reposted",
            destination,
            factory,
            trigger,
            record.anchor,
            record.kind,
            record.build,
            record.ref,
            record.digest,
            record.reposted,
        )

    async def drop_thread_records(
        self, destination: str, factory: str, trigger: str, keys: list[Key]
    ) -> None:
        async def work(c: Any) -> None:
            await c.executemany(
                "DELETE FROM thread_messages WHERE destination = $1 AND factory = $2"
                " AND trigger = $3 AND kind = $4 AND anchor = $5 AND build_id = $6",
                [(destination, factory, trigger, *key) for key in keys],
            )

        await self._run(work)

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


async def _record(c: Any, event_id: int, event: NewEvent, plan: Plan) -> Accepted:
    """The new event's place in its trigger's history, and the deliveries `plan` picks."""
    change = transition(event.build_id, event.status, await _history(c, event))
    targets = plan(change)
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
        [name for name, _ in targets],
        [json.dumps(list(mentions)) if mentions else None for _, mentions in targets],
    )
    names = tuple(name for name, _ in targets)
    return Accepted(event_id, len(targets), False, names, change)


async def _history(c: Any, event: NewEvent) -> History:
    """The build before this one and the failing streak it ends, reading only that far."""
    trigger = (event.factory, event.trigger, event.build_id)
    rerun = await c.fetchval(_RERUN, *trigger, event.status, event.completed_at)
    found = await c.fetchrow(_PRIOR, *trigger)
    prior = (int(found["build_id"]), str(found["status"])) if found else None
    streak = None
    if prior is not None and prior[1] == "FAILED":
        row = await c.fetchrow(_STREAK, *trigger, STREAK_LIMIT)
        streak = (int(row["since"]), int(row["count"]))
    before = streak_history(event.build_id, rerun, prior, streak)
    later = await c.fetchval(_LATER, *trigger)
    if later is None:
        return before
    found = await c.fetchrow(_ENDED_ABOVE, *trigger)
    ended = (int(found["build_id"]), str(found["status"])) if found else None
    failed = await c.fetchval(_FAILED_ABOVE, *trigger, ended[0] if ended else HIGHEST, STREAK_LIMIT)
    return above(before, int(later), ended, int(failed))


def _transition(stored: str | None) -> Transition | None:
    return None if stored is None else Transition.from_dict(json.loads(stored))


def _delivery_row(row: Any) -> DeliveryRow:
    return DeliveryRow(
        int(row["id"]),
        int(row["event_id"]),
        str(row["destination"]),
        row["state"],
        int(row["attempts"]),
        float(row["created_at"]),
        float(row["updated_at"]),
        float(row["next_attempt_at"]),
        row["last_error"],
        str(row["factory"]),
        str(row["trigger"]),
        int(row["build_id"]),
        str(row["status"]),
    )


class _LaneLocks:
    """The lanes this process owns: advisory locks held on one connection of its own.

    Not a pool connection: a pool resets released connections, and that unlocks all.
    """

    def __init__(self, url: str, where: str) -> None:
        self.url = url
        self.where = where
        self.held: set[str] = set()
        self.fresh: set[str] = set()  # taken, their old claims not yet released
        self._connection: Any = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    async def hold(self, name: str) -> bool:
        """Whether this process holds lane `name`; takes it when it is free."""
        async with self._lock:
            try:
                connection = await self._connect()
                if name in self.held:
                    if time.monotonic() - self._checked > LANE_CHECK_INTERVAL:
                        await asyncio.wait_for(connection.fetchval("SELECT 1"), LANE_CHECK_TIMEOUT)
                        self._checked = time.monotonic()
                    return True
                taken = await asyncio.wait_for(
                    connection.fetchval(
                        "SELECT pg_try_advisory_lock($1, hashtext($2))", LANE_LOCK_CLASS, name
                    ),
                    LANE_CHECK_TIMEOUT,
                )
            except Exception as exc:
                self._lose()
                raise _unavailable(f"lost the lanes' connection to {self.where}", exc) from None
            if taken:
                self.held.add(name)
                self.fresh.add(name)
            return bool(taken)

    async def drop(self, name: str) -> None:
        async with self._lock:
            if name not in self.held:
                return
            self.held.discard(name)
            self.fresh.discard(name)
            connection = self._connection
            if connection is None or connection.is_closed():
                return
            try:
                await asyncio.wait_for(
                    connection.fetchval(
                        "SELECT pg_advisory_unlock($1, hashtext($2))", LANE_LOCK_CLASS, name
                    ),
                    LANE_CHECK_TIMEOUT,
                )
            except Exception:
                self._lose()  # closing the connection lets go of every lane it held

    async def close(self) -> None:
        async with self._lock:
            connection, self._connection = self._connection, None
            self.held.clear()
            self.fresh.clear()
            if connection is not None and not connection.is_closed():
                try:
                    await asyncio.wait_for(connection.close(), LANE_CHECK_TIMEOUT)
                except Exception:
                    connection.terminate()
                except asyncio.CancelledError:
                    connection.terminate()
                    raise

    async def _connect(self) -> Any:
        connection = self._connection
        if connection is not None and connection.is_closed():
            self._lose()
            connection = None
        if connection is None:
            # Says which replica holds which lane, in pg_stat_activity (63 characters at most).
            name = f"jobserv-bridge lanes {os.getpid()}@{socket.gethostname()}"
            connection = await asyncpg.connect(
                self.url,
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": name[:63], **LANE_KEEPALIVE},
            )
            self._connection = connection
            self._checked = time.monotonic()
        return connection

    def _lose(self) -> None:
        """The connection is gone or not to be trusted: so are the lanes it held."""
        connection, self._connection = self._connection, None
        self.held.clear()
        self.fresh.clear()
        if connection is not None:
            connection.terminate()
