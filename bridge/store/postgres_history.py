"""The PostgreSQL intake's history: a new event's place in its trigger's history (the build
before it, the failing streak it ends or extends, what is known above it), its transition,
and the deliveries its plan picks, written with it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.store.postgres_pool import HIGHEST
from bridge.store.postgres_silences import SilencesOnce
from bridge.store.records import Accepted, NewEvent, Plan, Planned, muted, planned
from bridge.transitions import (
    STREAK_LIMIT,
    History,
    Transition,
    above,
    streak_history,
    transition,
)

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

# New events' places in their triggers' histories and their deliveries, many at once: each
# event's build, its transition, then the deliveries, in the order given.
_RECORDS = """
WITH new AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],
        $5::double precision[], $6::text[], $7::bigint[])
        AS new (factory, trigger, build_id, status, completed_at, transition, event_id)
), build AS (
    INSERT INTO builds (factory, trigger, build_id, status, completed_at)
    SELECT factory, trigger, build_id, status, completed_at FROM new
    ON CONFLICT (factory, trigger, build_id) DO UPDATE
    SET status = excluded.status, completed_at = excluded.completed_at
    WHERE coalesce(excluded.completed_at, 0) >= coalesce(builds.completed_at, 0)
), event AS (
    UPDATE events SET transition = new.transition::jsonb FROM new WHERE events.id = new.event_id
)
INSERT INTO deliveries
    (event_id, destination, created_at, updated_at, next_attempt_at, mentions, state, last_error)
SELECT wanted.event_id, wanted.name, wanted.at, wanted.at, wanted.at, wanted.mentions::jsonb,
    wanted.state, wanted.note
FROM unnest($8::bigint[], $9::text[], $10::double precision[], $11::text[], $12::text[],
    $13::text[]) WITH ORDINALITY AS wanted (event_id, name, at, mentions, state, note, position)
ORDER BY wanted.position
"""

# The newest build of each trigger, and the failing streak that ends at it (its first build
# and its length, counted up to $3; none when it did not fail).
_TIPS = """
SELECT w.factory, w.trigger, tip.build_id, tip.status,
    (SELECT build_id FROM builds WHERE factory = w.factory AND trigger = w.trigger
        AND build_id > ended.build_id ORDER BY build_id LIMIT 1) AS since,
    (SELECT count(*) FROM (SELECT 1 FROM builds WHERE factory = w.factory
        AND trigger = w.trigger AND build_id > ended.build_id LIMIT $3) AS streak) AS count
FROM unnest($1::text[], $2::text[]) AS w (factory, trigger)
LEFT JOIN LATERAL (SELECT build_id, status FROM builds
    WHERE factory = w.factory AND trigger = w.trigger ORDER BY build_id DESC LIMIT 1) AS tip
    ON true
CROSS JOIN LATERAL (SELECT coalesce((SELECT build_id FROM builds
    WHERE factory = w.factory AND trigger = w.trigger AND status <> 'FAILED'
    ORDER BY build_id DESC LIMIT 1), -9223372036854775808) AS build_id) AS ended
"""

# What is known above a late build: the failing streak just above it.
_ENDED_ABOVE = """SELECT build_id, status FROM builds WHERE factory = $1 AND trigger = $2
    AND build_id > $3 AND status <> 'FAILED' ORDER BY build_id LIMIT 1"""
_FAILED_ABOVE = """SELECT count(*) FROM (SELECT 1 FROM builds WHERE factory = $1
    AND trigger = $2 AND build_id > $3 AND build_id < $4 LIMIT $5) AS streak"""


@dataclass(frozen=True)
class _Tip:
    """A trigger's newest build, and the failing streak that ends at it (first, length)."""

    build_id: int | None
    status: str | None
    streak: tuple[int, int] | None

    def history(self, build_id: int) -> History:
        """What `_history` reads for a new build above this one."""
        prior = None if self.build_id is None else (self.build_id, str(self.status))
        return streak_history(build_id, None, prior, self.streak)

    def after(self, build_id: int, status: str) -> _Tip:
        if status != "FAILED":
            return _Tip(build_id, status, None)
        since, count = self.streak or (build_id, 0)
        return _Tip(build_id, status, (since, min(count + 1, STREAK_LIMIT)))


async def accept_in_order(
    c: Any, batch: Sequence[tuple[NewEvent, Plan]], new: dict[str, int], silences: SilencesOnce
) -> list[Accepted]:
    """The answers to the batch's first events, as long as each is new and above every build
    of its trigger (builds arriving in order, the usual case): their histories follow from
    each trigger's newest stored build and the batch's events before them, and they are
    written in one statement. The rest go one at a time after them (postgres_intake)."""
    triggers = sorted({(event.factory, event.trigger) for event, _ in batch})
    rows = await c.fetch(_TIPS, [f for f, _ in triggers], [t for _, t in triggers], STREAK_LIMIT)
    tips = {
        (str(r["factory"]), str(r["trigger"])): _Tip(
            r["build_id"],
            r["status"],
            (int(r["since"]), int(r["count"])) if r["status"] == "FAILED" else None,
        )
        for r in rows
    }
    answers: list[Accepted] = []
    records: list[_Record] = []
    answered: dict[str, Accepted] = {}
    for event, plan in batch:
        first = answered.get(event.key)
        if first is not None:
            answers.append(repeat_of(first))
            continue
        event_id = new.get(event.key)
        tip = tips[(event.factory, event.trigger)]
        if event_id is None or (tip.build_id is not None and event.build_id <= tip.build_id):
            break
        record = await _decided(c, event_id, event, plan, tip.history(event.build_id), silences)
        tips[(event.factory, event.trigger)] = tip.after(event.build_id, event.status)
        records.append(record)
        answered[event.key] = record.accepted
        answers.append(record.accepted)
    await _write(c, records)
    return answers


def repeat_of(first: Accepted) -> Accepted:
    return Accepted(first.event_id, first.deliveries, duplicate=True)


@dataclass(frozen=True)
class _Record:
    """A new event's place in its trigger's history, and the deliveries its plan picks."""

    event: NewEvent
    change: Transition
    targets: list[Planned]
    accepted: Accepted


async def record(
    c: Any, event_id: int, event: NewEvent, plan: Plan, silences: SilencesOnce
) -> Accepted:
    """The new event's place in its trigger's history, and the deliveries `plan` picks."""
    decided = await _decided(c, event_id, event, plan, await _history(c, event), silences)
    await _write(c, [decided])
    return decided.accepted


async def _decided(
    c: Any, event_id: int, event: NewEvent, plan: Plan, before: History, silences: SilencesOnce
) -> _Record:
    change = transition(event.build_id, event.status, before)
    targets = planned(plan, change)
    if targets:
        targets = muted(targets, event, await silences.read(c))
    names = tuple(t.destination for t in targets if t.silenced_by is None)
    return _Record(event, change, targets, Accepted(event_id, len(targets), False, names, change))


async def _write(c: Any, records: Sequence[_Record]) -> None:
    """The records' builds, transitions and deliveries, in one statement."""
    if not records:
        return
    events = [r.event for r in records]
    wanted = [(r, t) for r in records for t in r.targets]
    await c.execute(
        _RECORDS,
        [e.factory for e in events],
        [e.trigger for e in events],
        [e.build_id for e in events],
        [e.status for e in events],
        [e.completed_at for e in events],
        [json.dumps(r.change.as_dict()) for r in records],
        [r.accepted.event_id for r in records],
        [r.accepted.event_id for r, _ in wanted],
        [t.destination for _, t in wanted],
        [r.event.received_at for r, _ in wanted],
        [json.dumps(list(t.mentions)) if t.mentions else None for _, t in wanted],
        [t.state for _, t in wanted],
        [t.note for _, t in wanted],
    )


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
