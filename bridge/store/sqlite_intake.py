"""The SQLite outbox's intake: accepting an event, its place in its trigger's history, its
deliveries; and the write that `/readyz` checks."""

from __future__ import annotations

import json
import sqlite3
import time

from bridge.store.records import Accepted, NewEvent, Plan, muted, planned
from bridge.store.sqlite_silences import in_force
from bridge.store.sqlite_writer import HIGHEST, LOWEST, SqliteWriter
from bridge.transitions import (
    STREAK_LIMIT,
    History,
    above,
    streak_history,
    transition,
)


class SqliteIntake(SqliteWriter):
    async def accept(self, event: NewEvent, plan: Plan) -> Accepted:
        def work(c: sqlite3.Connection) -> Accepted:
            change = transition(event.build_id, event.status, _history(c, event))
            row = c.execute(
                "INSERT INTO events"
                " (key, factory, trigger, build_id, status, body, received_at, completed_at,"
                " transition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING RETURNING id",
                (
                    event.key,
                    event.factory,
                    event.trigger,
                    event.build_id,
                    event.status,
                    event.body,
                    event.received_at,
                    event.completed_at,
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
            targets = planned(plan, change)
            if not targets:
                return Accepted(event_id, 0, False, (), change)
            targets = muted(targets, event, in_force(c, event.received_at))
            now = event.received_at
            c.executemany(
                "INSERT INTO deliveries (event_id, destination, created_at, updated_at,"
                " next_attempt_at, mentions, state, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        event_id,
                        t.destination,
                        now,
                        now,
                        now,
                        json.dumps(t.mentions) if t.mentions else None,
                        t.state,
                        t.note,
                    )
                    for t in targets
                ],
            )
            names = tuple(t.destination for t in targets if t.silenced_by is None)
            return Accepted(event_id, len(targets), False, names, change)

        return await self._call(work, durable=True)

    async def ping(self) -> None:
        now = time.time()
        await self._call(
            lambda c: c.execute(
                "INSERT INTO heartbeat (id, at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (now,),
            )
        )


def _history(c: sqlite3.Connection, event: NewEvent) -> History:
    """The build before this one and the failing streak it ends, reading only that far.

    A re-run that completed the same build earlier with another status counts as the
    build before: a re-run that passes fixes the build that had failed. What is read is read
    in as few statements as it can be: each one hands the GIL to SQLite and back.
    """
    trigger = (event.factory, event.trigger)
    rerun, prior_id, prior_status, later = c.execute(
        "SELECT (SELECT status FROM builds WHERE factory = ?1 AND trigger = ?2"
        "  AND build_id = ?3 AND status != ?4 AND coalesce(completed_at, 0) <= coalesce(?5, 0)),"
        " (SELECT build_id FROM builds WHERE factory = ?1 AND trigger = ?2 AND build_id < ?3"
        "  ORDER BY build_id DESC LIMIT 1),"
        " (SELECT status FROM builds WHERE factory = ?1 AND trigger = ?2 AND build_id < ?3"
        "  ORDER BY build_id DESC LIMIT 1),"
        " (SELECT max(build_id) FROM builds WHERE factory = ?1 AND trigger = ?2"
        "  AND build_id > ?3)",
        (*trigger, event.build_id, event.status, event.completed_at),
    ).fetchone()
    failed_before = prior_id is not None and prior_status == "FAILED"
    before = streak_history(
        event.build_id,
        rerun,
        (prior_id, prior_status) if prior_id is not None else None,
        _streak(c, trigger, event.build_id) if failed_before else None,
    )
    return before if later is None else _above(c, before, event, later)


def _above(c: sqlite3.Connection, before: History, event: NewEvent, later: int) -> History:
    """What is known above a late build: its newest, and the failing streak just above."""
    key = (event.factory, event.trigger, event.build_id)
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


def _streak(c: sqlite3.Connection, trigger: tuple[str, str], build_id: int) -> tuple[int, int]:
    """The first build and the length (counted up to STREAK_LIMIT) of the failing streak
    just below `build_id`; index lookups, however long the streak."""
    since, count = c.execute(
        "WITH ended (id) AS (SELECT coalesce((SELECT build_id FROM builds"
        "  INDEXED BY builds_ended WHERE factory = ?1 AND trigger = ?2 AND build_id < ?3"
        "  AND status != 'FAILED' ORDER BY build_id DESC LIMIT 1), ?4))"
        " SELECT (SELECT build_id FROM builds WHERE factory = ?1 AND trigger = ?2"
        "  AND build_id > (SELECT id FROM ended) AND build_id < ?3 ORDER BY build_id LIMIT 1),"
        " (SELECT count(*) FROM (SELECT 1 FROM builds WHERE factory = ?1 AND trigger = ?2"
        "  AND build_id > (SELECT id FROM ended) AND build_id < ?3 LIMIT ?5))",
        (*trigger, build_id, LOWEST, STREAK_LIMIT),
    ).fetchone()
    return since, count
