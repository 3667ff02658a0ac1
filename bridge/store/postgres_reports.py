"""The PostgreSQL outbox's reports (CLI, status page, metrics) and operations (requeue,
purge)."""

from __future__ import annotations

from typing import Any

from bridge.store.postgres_pool import PostgresPool, row_count
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

_DELIVERY_ROW = """
SELECT d.id, d.event_id, d.destination, d.state, d.attempts, d.created_at, d.updated_at,
    d.next_attempt_at, d.last_error, e.factory, e.trigger, e.build_id, e.status
FROM deliveries d JOIN events e ON e.id = d.event_id
"""


class PostgresReports(PostgresPool):
    async def list_deliveries(
        self, state: State | None = None, destination: str | None = None, limit: int = 100
    ) -> list[DeliveryRow]:
        async def work(c: Any) -> list[DeliveryRow]:
            where = "($1::text IS NULL OR d.state = $1)"
            if state in LISTED_FROM_INDEX:
                where = f"{LISTED_FROM_INDEX[state]} AND $1::text = d.state"
            rows = await c.fetch(
                f"{_DELIVERY_ROW} WHERE {where} AND ($2::text IS NULL OR d.destination = $2)"
                " ORDER BY d.id DESC LIMIT $3",
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
            deleted = row_count(
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
            await c.execute("DELETE FROM silences WHERE ends_at < $1", before)
            for statement in FORGET_INCIDENTS:
                await c.execute(statement)
            return deleted

        return await self._run(work, transaction=True)

    async def counts(self) -> dict[State, int]:
        async def work(c: Any) -> dict[State, int]:
            rows = await c.fetch(STATE_COUNTS)
            return state_counts({state: int(n) for state, n in rows})

        return await self._run(work)

    async def destination_stats(self) -> dict[str, DestinationStats]:
        async def work(c: Any) -> dict[str, DestinationStats]:
            rows = await c.fetch(DESTINATION_STATS)
            return {
                name: DestinationStats(int(pending), oldest_pending, int(dead), oldest_dead)
                for name, pending, oldest_pending, dead, oldest_dead in rows
            }

        return await self._run(work)

    async def recent_events(
        self, limit: int, factory: str | None = None, build_id: int | None = None
    ) -> list[EventRow]:
        async def work(c: Any) -> list[EventRow]:
            # Only the filters given, so that the planner may read the events' index of
            # builds for them rather than every event (bodies and all) in id order.
            args: list[object] = []
            filters = []
            for column, value in (("factory", factory), ("build_id", build_id)):
                if value is not None:
                    args.append(value)
                    filters.append(f"{column} = ${len(args)}")
            args.append(limit)
            events = await c.fetch(
                "SELECT id, factory, trigger, build_id, status, received_at, body FROM events"
                f" WHERE {' AND '.join(filters) or 'true'} ORDER BY id DESC LIMIT ${len(args)}",
                *args,
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
