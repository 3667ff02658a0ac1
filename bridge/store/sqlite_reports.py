"""The SQLite outbox's reports (CLI, status page, metrics) and operations (requeue, purge)."""

from __future__ import annotations

import sqlite3

from bridge.store.records import (
    DESTINATION_STATS,
    FORGET_INCIDENTS,
    LISTED_FROM_INDEX,
    STATE_COUNTS,
    DeliveryRow,
    DestinationStats,
    EventRow,
    HourActivity,
    State,
    state_counts,
)
from bridge.store.sqlite_writer import JOB_ROWS, SqliteWriter


def listing(state: State | None) -> str:
    """The statement listing deliveries in `state` (any if None), for ?1 destination (any
    if NULL), ?2 of them at most, ?3 the state."""
    where, order = "(?3 IS NULL OR d.state = ?3)", "d.id DESC"
    if state in LISTED_FROM_INDEX:
        # '+': sorted after, not found by walking the table in id order
        where, order = f"{LISTED_FROM_INDEX[state]} AND ?3 = d.state", "+d.id DESC"
    return (
        "SELECT d.id, d.event_id, d.destination, d.state, d.attempts, d.created_at,"
        " d.updated_at, d.next_attempt_at, d.last_error, e.factory, e.trigger, e.build_id,"
        " e.status FROM deliveries d JOIN events e ON e.id = d.event_id"
        f" WHERE {where} AND (?1 IS NULL OR d.destination = ?1) ORDER BY {order} LIMIT ?2"
    )


# The chart's events of each hour since ?1 until ?2, and how many failed: from the index of
# (received_at, status) alone.
HOURLY_EVENTS = (
    "SELECT CAST((received_at - ?1) / 3600 AS INTEGER), count(*), sum(status = 'FAILED')"
    " FROM events WHERE received_at >= ?1 AND received_at < ?2 GROUP BY 1"
)
# How many of the newest events a search by factory reads first, in id order.
RECENT_SEARCHED = 1_000


def _event_ids(
    c: sqlite3.Connection, limit: int, factory: str | None, build_id: int | None
) -> list[int]:
    """The ids of the newest `limit` events of `factory` and `build_id` (either None: any),
    found without reading the events table through (its rows hold the bodies: a store of a
    million events is gigabytes): a build through the events' index of builds (ids only); a
    factory among the newest events first, else through that index alone."""
    if build_id is not None:
        query = (
            "SELECT id FROM events INDEXED BY events_build WHERE build_id = ?1"
            " AND (?2 IS NULL OR factory = ?2) ORDER BY id DESC LIMIT ?3"
        )
        return [id_ for (id_,) in c.execute(query, (build_id, factory, limit))]
    if factory is None:
        query = "SELECT id FROM events ORDER BY id DESC LIMIT ?1"
        return [id_ for (id_,) in c.execute(query, (limit,))]
    newest = c.execute(
        "SELECT id FROM events WHERE id > (SELECT max(id) FROM events) - ?3"
        " AND +factory = ?1 ORDER BY id DESC LIMIT ?2",  # '+': by id, not the index
        (factory, limit, RECENT_SEARCHED),
    ).fetchall()
    if len(newest) < limit:  # a factory seldom seen lately, or not at all
        newest = c.execute(
            "SELECT id FROM events INDEXED BY events_build WHERE factory = ?1"
            " ORDER BY id DESC LIMIT ?2",
            (factory, limit),
        ).fetchall()
    return [id_ for (id_,) in newest]


class SqliteReports(SqliteWriter):
    async def list_deliveries(
        self, state: State | None = None, destination: str | None = None, limit: int = 100
    ) -> list[DeliveryRow]:
        def work(c: sqlite3.Connection) -> list[DeliveryRow]:
            rows = c.execute(listing(state), (destination, limit, state)).fetchall()
            return [DeliveryRow(*row) for row in rows]

        return await self._reader.read(work)

    async def requeue_dead(self, ids: list[int] | None, now: float) -> int:
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
        """In writer jobs of JOB_ROWS deliveries and events at most (one job, mostly): the
        webhooks and the lanes' jobs go between them (the first purge after days down, or
        after a shorter retention, has a great many rows to delete: in one job, every write
        waited for all of them)."""
        marks = ",".join("?" * len(states))

        def deliveries(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                f" WHERE state IN ({marks}) AND updated_at < ? LIMIT ?)",
                (*states, before, JOB_ROWS),
            ).rowcount

        def events(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < ?"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)"
                " LIMIT ?)",
                (before, JOB_ROWS),
            ).rowcount

        def step(c: sqlite3.Connection) -> tuple[int, bool]:
            """Some of it: the deliveries deleted, and whether that was the last of it."""
            deleted = deliveries(c)
            if deleted == JOB_ROWS or events(c) == JOB_ROWS:
                return deleted, False
            c.execute("DELETE FROM silences WHERE ends_at < ?", (before,))
            for statement in FORGET_INCIDENTS:
                c.execute(statement)
            return deleted, True

        deleted, done = 0, False
        while not done:
            chunk, done = await self._call(step)
            deleted += chunk
        return deleted

    async def counts(self) -> dict[State, int]:
        def work(c: sqlite3.Connection) -> dict[State, int]:
            return state_counts(dict(c.execute(STATE_COUNTS)))

        return await self._reader.read(work)

    async def destination_stats(self) -> dict[str, DestinationStats]:
        def work(c: sqlite3.Connection) -> dict[str, DestinationStats]:
            rows = c.execute(DESTINATION_STATS)
            return {name: DestinationStats(*stats) for name, *stats in rows}

        return await self._reader.read(work)

    async def recent_events(
        self, limit: int, factory: str | None = None, build_id: int | None = None
    ) -> list[EventRow]:
        def work(c: sqlite3.Connection) -> list[EventRow]:
            ids = _event_ids(c, limit, factory, build_id)
            marks = ",".join("?" * len(ids))
            events = c.execute(
                "SELECT id, factory, trigger, build_id, status, received_at, body FROM events"
                f" WHERE id IN ({marks}) ORDER BY id DESC",
                ids,
            ).fetchall()
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

        return await self._reader.read(work)

    async def hourly_activity(self, since: float, hours: int) -> list[HourActivity]:
        def work(c: sqlite3.Connection) -> list[HourActivity]:
            until = since + hours * 3600.0
            received = {
                hour: (count, failed)
                for hour, count, failed in c.execute(HOURLY_EVENTS, (since, until))
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

        return await self._reader.read(work)
