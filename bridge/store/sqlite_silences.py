"""The SQLite outbox's silences and acknowledgements (bridge.silences), and the delivery that
redraws an incident's messages after a press of a Slack button."""

from __future__ import annotations

import sqlite3
from dataclasses import astuple
from typing import Any

from bridge.silences import Acknowledgement, NewSilence, Silence
from bridge.store.records import LATEST_COPY
from bridge.store.sqlite_writer import SqliteWriter

_SILENCE = (
    "SELECT factory, trigger, destination, starts_at, ends_at, comment, author, id, created_at"
    " FROM silences"
)
_ACKNOWLEDGEMENT = (
    "SELECT destination, factory, trigger, anchor, user_id, user_name, at FROM acknowledgements"
)


def _silence(row: tuple[Any, ...]) -> Silence:
    factory, trigger, destination, starts_at, ends_at, comment, author, silence_id, at = row
    return Silence(
        factory=factory,
        trigger=trigger,
        destination=destination,
        starts_at=starts_at,
        ends_at=ends_at,
        comment=comment,
        author=author,
        id=silence_id,
        created_at=at,
    )


def in_force(c: sqlite3.Connection, now: float | None) -> list[Silence]:
    """The silences not ended at `now` (every one when None), newest first."""
    rows = c.execute(_SILENCE + " WHERE ?1 IS NULL OR ends_at > ?1 ORDER BY id DESC", (now,))
    return [_silence(row) for row in rows]


class SqliteSilences(SqliteWriter):
    async def add_silence(self, silence: NewSilence, now: float) -> Silence:
        def work(c: sqlite3.Connection) -> Silence:
            (silence_id,) = c.execute(
                "INSERT INTO silences (factory, trigger, destination, starts_at, ends_at,"
                " comment, author, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (*astuple(silence), now),
            ).fetchone()
            return _silence(c.execute(_SILENCE + " WHERE id = ?", (silence_id,)).fetchone())

        return await self._call(work, durable=True)

    async def silences(self, now: float | None) -> list[Silence]:
        return await self._call(lambda c: in_force(c, now))

    async def expire_silence(self, silence_id: int, now: float) -> Silence | None:
        def work(c: sqlite3.Connection) -> Silence | None:
            c.execute(
                "UPDATE silences SET ends_at = ?1, starts_at = min(starts_at, ?1)"
                " WHERE id = ?2 AND ends_at > ?1",
                (now, silence_id),
            )
            row = c.execute(_SILENCE + " WHERE id = ?", (silence_id,)).fetchone()
            return None if row is None else _silence(row)

        return await self._call(work, durable=True)

    async def acknowledge(self, ack: Acknowledgement) -> None:
        await self._call(
            lambda c: c.execute(
                "INSERT INTO acknowledgements (destination, factory, trigger, anchor, user_id,"
                " user_name, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                astuple(ack),
            ),
            durable=True,
        )

    async def acknowledgements(
        self, destination: str, factory: str, trigger: str
    ) -> list[Acknowledgement]:
        def work(c: sqlite3.Connection) -> list[Acknowledgement]:
            rows = c.execute(
                _ACKNOWLEDGEMENT + " WHERE destination = ? AND factory = ? AND trigger = ?",
                (destination, factory, trigger),
            ).fetchall()
            return [
                Acknowledgement(
                    destination=d, factory=f, trigger=t, anchor=a, user_id=u, user_name=n, at=at
                )
                for d, f, t, a, u, n, at in rows
            ]

        return await self._call(work)

    async def silenced_events(self, destination: str, event_ids: list[int]) -> set[int]:
        def work(c: sqlite3.Connection) -> set[int]:
            marks = ",".join("?" * len(event_ids))
            rows = c.execute(
                "SELECT DISTINCT event_id FROM deliveries WHERE destination = ?"
                f" AND state = 'silenced' AND event_id IN ({marks})",
                (destination, *event_ids),
            )
            return {int(event_id) for (event_id,) in rows}

        return await self._call(work) if event_ids else set()

    async def redraw(
        self, destination: str, factory: str, trigger: str, build_id: int, now: float
    ) -> bool:
        def work(c: sqlite3.Connection) -> bool:
            inserted = c.execute(
                "INSERT INTO deliveries (event_id, destination, created_at, updated_at,"
                " next_attempt_at) SELECT id, ?1, ?2, ?2, ?2 FROM events"
                f" WHERE factory = ?3 AND trigger = ?4 AND build_id = ?5 {LATEST_COPY}",
                (destination, now, factory, trigger, build_id),
            )
            return inserted.rowcount > 0

        return await self._call(work, durable=True)
