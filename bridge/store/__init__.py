"""The outbox: accepted events and their deliveries, one interface for every backend."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from bridge.incidents import Key, Record, Window
from bridge.transitions import Transition

if TYPE_CHECKING:
    from bridge.config import StoreConfig

log = logging.getLogger("bridge.store")

State = Literal["pending", "sent", "dead"]
# Given an event's transition, the deliveries to make: (destination, mentions) pairs.
Plan = Callable[[Transition], list[tuple[str, tuple[str, ...]]]]


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


@dataclass(frozen=True)
class Claim:
    deliveries: list[Delivery]
    next_due: float | None  # when the lane's head is due, if nothing is due now


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


class Store(ABC):
    """Backends keep these promises:

    - `accept` stores an event and its deliveries atomically and durably before it
      returns; a second event with the same key stores nothing and says so.
    - A destination's pending deliveries are claimed oldest first (by id), and a
      claim stops at the first one not yet due, so a lane stays in order.
    - A claim is a lease: if its holder dies, the delivery becomes claimable again.
    - A lane (a destination's deliveries) is owned by one serving process at a time,
      and only its owner claims, so its order and rate limit hold across replicas.
    """

    @abstractmethod
    async def open(self, *, serving: bool) -> None:
        """Make ready; `serving` means this process will claim deliveries."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def accept(self, event: NewEvent, plan: Plan) -> Accepted:
        """Store the event, its place in the (factory, trigger) history, and the deliveries
        `plan` picks given the event's transition; all in one transaction."""

    @abstractmethod
    async def thread(self, destination: str, factory: str, trigger: str) -> str | None:
        """The chat thread that follow-ups for (factory, trigger) go to, if one is open."""

    @abstractmethod
    async def set_thread(
        self, destination: str, factory: str, trigger: str, thread: str | None
    ) -> None:
        """Open (or move) the thread for (factory, trigger); None closes it."""

    # -- incidents: a trigger's builds around one, and a threaded destination's messages --

    @abstractmethod
    async def trigger_window(self, factory: str, trigger: str, build_id: int) -> Window:
        """The builds whose incidents `build_id`'s arrival can change (see `Window`), each
        with its status and the newest stored event that gave that status."""

    @abstractmethod
    async def event_bodies(self, ids: list[int]) -> dict[int, bytes]:
        """The bodies of these stored events (those still stored)."""

    @abstractmethod
    async def delivery_mentions(
        self, destination: str, event_ids: list[int]
    ) -> dict[int, tuple[str, ...]]:
        """Who the deliveries of these events to `destination` mention (those that do)."""

    @abstractmethod
    async def thread_records(
        self, destination: str, factory: str, trigger: str, window: Window
    ) -> list[Record]:
        """The destination's messages about (factory, trigger) that `window` covers."""

    @abstractmethod
    async def save_thread_record(
        self, destination: str, factory: str, trigger: str, record: Record
    ) -> None:
        """Keep (or replace) the record of one message."""

    @abstractmethod
    async def drop_thread_records(
        self, destination: str, factory: str, trigger: str, keys: list[Key]
    ) -> None:
        """Forget messages that are gone from the chat."""

    @abstractmethod
    async def claim(self, destination: str, now: float, limit: int, lease: float) -> Claim: ...

    @abstractmethod
    async def release(self, ids: list[int]) -> None:
        """Give claimed deliveries back untouched (shutdown, or a lane that stopped early)."""

    @abstractmethod
    async def mark_sent(self, delivery_id: int, now: float) -> None: ...

    @abstractmethod
    async def mark_retry(self, delivery_id: int, at: float, error: str, now: float) -> None: ...

    @abstractmethod
    async def mark_dead(self, delivery_id: int, error: str, now: float) -> None: ...

    @abstractmethod
    async def kill_orphans(self, destinations: set[str], now: float) -> int:
        """Dead-letter pending deliveries to destinations the config no longer has."""

    @abstractmethod
    async def list_deliveries(
        self, state: State | None = None, destination: str | None = None, limit: int = 100
    ) -> list[DeliveryRow]: ...

    @abstractmethod
    async def retry(self, ids: list[int] | None, now: float) -> int:
        """Queue dead deliveries again: those in `ids`, or every one when `ids` is None."""

    @abstractmethod
    async def purge(self, before: float, states: tuple[State, ...]) -> int:
        """Delete deliveries in `states` last changed before `before`, and events left empty."""

    @abstractmethod
    async def counts(self) -> dict[State, int]: ...

    @abstractmethod
    async def destination_stats(self) -> dict[str, DestinationStats]:
        """Pending and dead deliveries per destination that has any."""

    @abstractmethod
    async def ping(self) -> None:
        """Write to the store and commit; raises StoreUnavailable when it cannot."""

    @abstractmethod
    async def recent_events(
        self, limit: int, factory: str | None = None, build_id: int | None = None
    ) -> list[EventRow]:
        """The newest events first (optionally of one factory, or one build number),
        each with its deliveries in id order."""

    @abstractmethod
    async def hourly_activity(self, since: float, hours: int) -> list[HourActivity]:
        """`hours` consecutive hours from `since`, every hour present (zeros included)."""

    async def own_lane(self, destination: str) -> bool:
        """Whether this process may claim `destination`'s deliveries now.

        Takes the lane when it is free (releasing the claims its previous owner left);
        once taken, says whether it is still held. A backend that only one process
        serves at a time (SQLite) owns every lane.
        """
        return True

    async def release_lane(self, destination: str) -> None:
        """Give the lane up (its lane stopped), so that another replica can take it."""
        return None


def open_store(where: StoreConfig | str | os.PathLike[str]) -> Store:
    """The store a config's [store] names: PostgreSQL at `url`, else SQLite at `path`.

    A plain path opens that SQLite file.
    """
    from bridge.store.sqlite import SqliteStore

    if isinstance(where, str | os.PathLike):
        return SqliteStore(where)
    if where.url is not None:
        from bridge.store.postgres import PostgresStore

        return PostgresStore(where.url.get_secret_value(), pool_size=where.pool_size)
    return SqliteStore(where.path)
