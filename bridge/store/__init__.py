"""The outbox: accepted events and their deliveries, one interface for every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

State = Literal["pending", "sent", "dead"]


class StoreUnavailable(Exception):
    """The store cannot take or give data right now (disk full, locked, closed)."""


@dataclass(frozen=True)
class NewEvent:
    key: str  # the JobServ event identity: one row per (url, status, completed)
    factory: str
    trigger: str
    build_id: int
    status: str
    body: bytes  # exactly as received
    received_at: float


@dataclass(frozen=True)
class Accepted:
    event_id: int
    deliveries: int
    duplicate: bool


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery, with what is needed to render and send it."""

    id: int
    event_id: int
    destination: str
    attempts: int  # attempts made before this one
    created_at: float
    body: bytes


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


class Store(ABC):
    """Backends keep these promises:

    - `accept` stores an event and its deliveries atomically and durably before it
      returns; a second event with the same key stores nothing and says so.
    - A destination's pending deliveries are claimed oldest first (by id), and a
      claim stops at the first one not yet due, so a lane stays in order.
    - A claim is a lease: if its holder dies, the delivery becomes claimable again.
    """

    @abstractmethod
    async def open(self, *, serving: bool) -> None:
        """Make ready; `serving` means this process will claim deliveries."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def accept(self, event: NewEvent, destinations: list[str]) -> Accepted: ...

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


def open_store(path: str) -> Store:
    from bridge.store.sqlite import SqliteStore

    return SqliteStore(path)
