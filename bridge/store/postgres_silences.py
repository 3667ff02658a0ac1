"""The PostgreSQL outbox's silences and acknowledgements (bridge.silences), and the delivery
that redraws an incident's messages after a press of a Slack button."""

from __future__ import annotations

from dataclasses import astuple
from typing import Any

from bridge.silences import Acknowledgement, NewSilence, Silence
from bridge.store.postgres_pool import PostgresPool
from bridge.store.records import LATEST_COPY

_COLUMNS = "factory, trigger, destination, starts_at, ends_at, comment, author, id, created_at"


def _silence(row: Any) -> Silence:
    return Silence(
        factory=row["factory"],
        trigger=row["trigger"],
        destination=row["destination"],
        starts_at=float(row["starts_at"]),
        ends_at=float(row["ends_at"]),
        comment=row["comment"],
        author=row["author"],
        id=int(row["id"]),
        created_at=float(row["created_at"]),
    )


async def in_force(c: Any, now: float | None) -> list[Silence]:
    """The silences not ended at `now` (every one when None), newest first."""
    rows = await c.fetch(
        f"SELECT {_COLUMNS} FROM silences"
        " WHERE $1::double precision IS NULL OR ends_at > $1 ORDER BY id DESC",
        now,
    )
    return [_silence(row) for row in rows]


class SilencesOnce:
    """The silences in force for the events of one transaction, read when first wanted
    (`since`: the earliest of them came then)."""

    def __init__(self, since: float) -> None:
        self._since = since
        self._found: list[Silence] | None = None

    async def read(self, c: Any) -> list[Silence]:
        if self._found is None:
            self._found = await in_force(c, self._since)
        return self._found


class PostgresSilences(PostgresPool):
    async def add_silence(self, silence: NewSilence, now: float) -> Silence:
        async def work(c: Any) -> Silence:
            row = await c.fetchrow(
                "INSERT INTO silences (factory, trigger, destination, starts_at, ends_at,"
                f" comment, author, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                f" RETURNING {_COLUMNS}",
                *astuple(silence),
                now,
            )
            return _silence(row)

        return await self._run(work)

    async def silences(self, now: float | None) -> list[Silence]:
        return await self._run(lambda c: in_force(c, now))

    async def expire_silence(self, silence_id: int, now: float) -> Silence | None:
        async def work(c: Any) -> Silence | None:
            await c.execute(
                "UPDATE silences SET ends_at = $1, starts_at = least(starts_at, $1)"
                " WHERE id = $2 AND ends_at > $1",
                now,
                silence_id,
            )
            row = await c.fetchrow(f"SELECT {_COLUMNS} FROM silences WHERE id = $1", silence_id)
            return None if row is None else _silence(row)

        return await self._run(work, transaction=True)

    async def acknowledge(self, ack: Acknowledgement) -> None:
        await self._execute(
            "INSERT INTO acknowledgements (destination, factory, trigger, anchor, user_id,"
            " user_name, at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            *astuple(ack),
        )

    async def acknowledgements(
        self, destination: str, factory: str, trigger: str
    ) -> list[Acknowledgement]:
        async def work(c: Any) -> list[Acknowledgement]:
            rows = await c.fetch(
                "SELECT anchor, user_id, user_name, at FROM acknowledgements"
                " WHERE destination = $1 AND factory = $2 AND trigger = $3",
                destination,
                factory,
                trigger,
            )
            return [
                Acknowledgement(
                    destination=destination,
                    factory=factory,
                    trigger=trigger,
                    anchor=int(row["anchor"]),
                    user_id=row["user_id"],
                    user_name=row["user_name"],
                    at=float(row["at"]),
                )
                for row in rows
            ]

        return await self._run(work)

    async def silenced_events(self, destination: str, event_ids: list[int]) -> set[int]:
        async def work(c: Any) -> set[int]:
            rows = await c.fetch(
                "SELECT DISTINCT event_id FROM deliveries WHERE destination = $1"
                " AND state = 'silenced' AND event_id = ANY($2::bigint[])",
                destination,
                event_ids,
            )
            return {int(row["event_id"]) for row in rows}

        return await self._run(work) if event_ids else set()

    async def redraw(
        self, destination: str, factory: str, trigger: str, build_id: int, now: float
    ) -> bool:
        inserted = await self._execute(
            "INSERT INTO deliveries (event_id, destination, created_at, updated_at,"
            " next_attempt_at) SELECT id, $1, $2, $2, $2 FROM events"
            f" WHERE factory = $3 AND trigger = $4 AND build_id = $5 {LATEST_COPY}",
            destination,
            now,
            factory,
            trigger,
            build_id,
        )
        return inserted > 0
