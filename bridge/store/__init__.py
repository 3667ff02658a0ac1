"""The outbox: accepted events and their deliveries, one interface for every backend.

Its records are in `bridge.store.records`; what each kind of caller needs of it, in
`bridge.store.protocols`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from bridge.incidents import Key, Record, Window
from bridge.store.protocols import (
    DispatchStore,
    IntakeStore,
    LaneStore,
    OperationsStore,
    ReportStore,
    ThreadStore,
)
from bridge.store.records import (
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
    StoreUnavailable,
    unavailable,
)

if TYPE_CHECKING:
    from bridge.config import StoreConfig

__all__ = [
    "Accepted",
    "Claim",
    "Delivery",
    "DeliveryRow",
    "DestinationStats",
    "DispatchStore",
    "EventRow",
    "HourActivity",
    "IntakeStore",
    "LaneStore",
    "NewEvent",
    "OperationsStore",
    "Plan",
    "ReportStore",
    "State",
    "Store",
    "StoreUnavailable",
    "ThreadStore",
    "open_store",
    "unavailable",
]


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
    async def requeue_dead(self, ids: list[int] | None, now: float) -> int:
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
