"""The records the outbox stores and gives back, and its one error."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from bridge.silences import Silence, silencing
from bridge.transitions import Transition

# Of a build's events, the copy that shows it: its latest completion, whatever the order
# they arrived in (of two that completed at once, or before `completed_at` was kept, the
# later to arrive).
LATEST_COPY = "ORDER BY coalesce(completed_at, 0) DESC, id DESC LIMIT 1"

# A purge forgets an incident's thread records and acknowledgement once no event of it is
# left: none from its first failed build to the build that fixed it (or on, while none has).
# So an open incident that still gets builds keeps them; a build of a forgotten one that
# arrives later starts a new root.
FORGET_INCIDENTS = tuple(
    f"DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM events e"
    f" WHERE e.factory = {table}.factory AND e.trigger = {table}.trigger"
    f" AND e.build_id >= {table}.anchor AND e.build_id <= coalesce((SELECT min(b.build_id)"
    f" FROM builds b WHERE b.factory = {table}.factory AND b.trigger = {table}.trigger"
    f" AND b.build_id > {table}.anchor AND b.status = 'PASSED'), {2**63 - 1}))"
    for table in ("thread_messages", "acknowledgements")
)

# What /metrics and the status page show of each destination, read from the two partial
# indexes (the lanes', of pending deliveries, and that of finished ones: its condition is
# repeated for SQLite to see it applies), never the whole table, whose sent deliveries are
# most of it: a scrape must not scan them, on the SQLite writer thread least of all.
DESTINATION_STATS = """
SELECT destination, sum(pending), min(oldest_pending), sum(dead), min(oldest_dead) FROM (
    SELECT destination, count(*) AS pending, min(created_at) AS oldest_pending,
        0 AS dead, NULL AS oldest_dead
    FROM deliveries WHERE state = 'pending' GROUP BY destination
    UNION ALL
    SELECT destination, 0, NULL, count(*), min(created_at)
    FROM deliveries WHERE state = 'dead' AND state != 'pending' GROUP BY destination
) AS lanes GROUP BY destination
"""

# Deliveries by state, the same way: the pending from the lanes' index, the others from the
# covering index of finished ones (a scan of the sent ones still, but not of the table).
STATE_COUNTS = """
SELECT 'pending', count(*) FROM deliveries WHERE state = 'pending'
UNION ALL
SELECT state, count(*) FROM deliveries WHERE state != 'pending' GROUP BY state
"""

# The status page lists the pending and the dead deliveries: few (a backlog, dead letters),
# so read from their indexes (the condition of finished ones repeated for SQLite to see
# that index applies) and sorted after, rather than found by walking the table in id order
# through every sent delivery. Any other state (sent: most of the table) is found at once
# in id order, newest first.
LISTED_FROM_INDEX: dict[str, str] = {
    "pending": "d.state = 'pending'",
    "dead": "d.state = 'dead' AND d.state != 'pending'",
}

log = logging.getLogger("bridge.store")

# `silenced`: a delivery a silence muted at intake, kept to be shown and never sent.
State = Literal["pending", "sent", "dead", "silenced"]
STATES: tuple[State, ...] = ("pending", "sent", "dead", "silenced")


class Planned(NamedTuple):
    """A delivery to make: its destination, who it mentions, and the silence that mutes it
    (stored `silenced` then)."""

    destination: str
    mentions: tuple[str, ...] = ()
    silenced_by: int | None = None

    @property
    def state(self) -> State:
        return "pending" if self.silenced_by is None else "silenced"

    @property
    def note(self) -> str | None:
        """What the delivery's row says of it (in `last_error`, which the CLI and page show)."""
        return None if self.silenced_by is None else f"silenced by silence {self.silenced_by}"


# Given an event's transition, the deliveries to make (a `Planned`, or a plain
# (destination, mentions) pair). The store mutes those a silence covers (`muted`).
Plan = Callable[[Transition], Sequence[Planned | tuple[str, tuple[str, ...]]]]


def state_counts(found: dict[str, int]) -> dict[State, int]:
    """Deliveries by state: pending, sent and dead always; silenced when there are any."""
    counts: dict[State, int] = {s: found.get(s, 0) for s in ("pending", "sent", "dead")}
    if found.get("silenced"):
        counts["silenced"] = found["silenced"]
    return counts


def planned(plan: Plan, change: Transition) -> list[Planned]:
    return [Planned(*entry) for entry in plan(change)]


def muted(targets: list[Planned], event: NewEvent, silences: Sequence[Silence]) -> list[Planned]:
    """`targets`, each that a silence in force when `event` came mutes marked with it.

    The store reads the silences in the transaction that stores the event: a silence
    added or expired meanwhile is in force for the event or not, never half."""

    def mute(target: Planned) -> Planned:
        if target.silenced_by is not None:
            return target
        where = (event.factory, event.trigger, target.destination, event.received_at)
        found = silencing(silences, *where)
        return target if found is None else target._replace(silenced_by=found.id)

    return [mute(t) for t in targets]


class StoreUnavailable(Exception):
    """The store cannot take or give data right now (disk full, locked, closed)."""


def unavailable(
    what: str, exc: BaseException, expected: tuple[type[BaseException], ...]
) -> StoreUnavailable:
    """`exc`, raised in a store call, as a StoreUnavailable: the intake answers 503 for
    that whatever failed, never 500. One not of the `expected` kinds (the backend's own
    errors) is logged with its traceback, as it may be a bug rather than an outage."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if not isinstance(exc, expected):
        log.warning("%s: unexpected %s", what, type(exc).__name__, exc_info=exc)
    return StoreUnavailable(f"{what}: {str(exc) or type(exc).__name__}")


@dataclass(frozen=True)
class NewEvent:
    key: str  # the JobServ event identity: one row per (url, status, completed)
    factory: str
    trigger: str
    build_id: int
    status: str
    body: bytes  # exactly as received
    received_at: float
    completed_at: float | None = None  # when JobServ says the build completed


@dataclass(frozen=True)
class Accepted:
    event_id: int
    deliveries: int
    duplicate: bool
    destinations: tuple[str, ...] = ()
    transition: Transition | None = None


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery, with what is needed to render and send it."""

    id: int
    event_id: int
    destination: str
    attempts: int  # attempts made before this one
    created_at: float
    body: bytes
    factory: str = ""
    build_id: int = 0
    trigger: str = ""
    transition: Transition | None = None
    mentions: tuple[str, ...] = ()
    event_key: str = ""  # the stored event's identity (`NewEvent.key`)

    @property
    def key(self) -> str:
        """The delivery's idempotency key for its chat: the same for every attempt (its body
        may render differently from one try to the next), and not one that a new store's
        delivery of the same number, for another event, repeats."""
        identity = f"{self.event_key}\n{self.destination}\n{self.id}"
        return f"jobserv-bridge-{hashlib.sha256(identity.encode()).hexdigest()[:32]}"


@dataclass(frozen=True)
class Claim:
    deliveries: list[Delivery]
    next_due: float | None  # when the lane's first delivery not yet due is due, if known
    # It took all that was due in the lane: nothing else is pending in it but what is due at
    # `next_due` (or nothing at all), until something new is queued.
    drained: bool = False


@dataclass(frozen=True)
class DeliveryRow:
    """A delivery as the outbox CLI shows it."""

    id: int
    event_id: int
    destination: str
    state: State
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float
    last_error: str | None
    factory: str
    trigger: str
    build_id: int
    status: str


@dataclass(frozen=True)
class DestinationStats:
    pending: int
    oldest_pending_at: float | None  # created_at of the oldest pending delivery
    dead: int
    oldest_dead_at: float | None = None  # created_at of the oldest dead delivery


@dataclass(frozen=True)
class EventRow:
    """A stored event with its deliveries, as the status page shows it."""

    id: int
    factory: str
    trigger: str
    build_id: int
    status: str
    received_at: float
    body: bytes
    deliveries: list[DeliveryRow]


@dataclass(frozen=True)
class HourActivity:
    """One hour of the status page's chart."""

    start: float
    events: int  # events received in the hour
    failed_builds: int  # of those, builds whose status is FAILED
    dead_deliveries: int  # deliveries that became dead letters in the hour (by updated_at)
