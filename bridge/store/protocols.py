"""What each kind of caller needs of the outbox: the intake, the lanes (and the threads they
keep), the reports (CLI, status page, metrics) and the operator's commands. Every backend
implements all of them (`bridge.store.Store`); a caller is typed with the narrowest."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from bridge.incidents import Key, Record, Window
from bridge.silences import Acknowledgement, NewSilence, Silence
from bridge.store.records import (
    Accepted,
    Claim,
    DeliveryRow,
    DestinationStats,
    EventRow,
    HourActivity,
    NewEvent,
    Plan,
    State,
)


class IntakeStore(Protocol):
    async def accept(self, event: NewEvent, plan: Plan) -> Accepted:
        """Store the event, its place in the (factory, trigger) history, and the deliveries
        `plan` picks given the event's transition; all in one transaction."""
        ...

    async def ping(self) -> None:
        """Write to the store and commit; raises StoreUnavailable when it cannot."""
        ...


class AttentionReads(Protocol):
    """Silences and acknowledgements: who is told (bridge.silences)."""

    async def silences(self, now: float | None) -> list[Silence]:
        """The silences not yet expired at `now` (None: every one), newest first."""
        ...

    async def acknowledgements(
        self, destination: str, factory: str, trigger: str
    ) -> list[Acknowledgement]:
        """Who acknowledged the incidents of (factory, trigger) at `destination`."""
        ...

    async def silenced_events(self, destination: str, event_ids: list[int]) -> set[int]:
        """Those of these events whose delivery to `destination` a silence muted."""
        ...


class SilenceStore(AttentionReads, Protocol):
    """What the CLI, the status page and Slack's buttons keep."""

    async def add_silence(self, silence: NewSilence, now: float) -> Silence: ...

    async def expire_silence(self, silence_id: int, now: float) -> Silence | None:
        """End the silence now (if it has not ended); None when there is no such silence."""
        ...

    async def acknowledge(self, ack: Acknowledgement) -> None:
        """Keep it (a second acknowledgement of the same root changes nothing)."""
        ...

    async def redraw(
        self, destination: str, factory: str, trigger: str, build_id: int, now: float
    ) -> bool:
        """Queue a delivery of the newest stored event of that build to `destination`, so
        that its lane brings the incident's messages up to date; False if none is stored."""
        ...


class ThreadStore(AttentionReads, Protocol):
    """A threaded destination's messages and the builds around an incident (bridge.threads)."""

    async def thread(self, destination: str, factory: str, trigger: str) -> str | None:
        """The chat thread that follow-ups for (factory, trigger) go to, if one is open."""
        ...

    async def set_thread(
        self, destination: str, factory: str, trigger: str, thread: str | None
    ) -> None:
        """Open (or move) the thread for (factory, trigger); None closes it."""
        ...

    async def trigger_window(self, factory: str, trigger: str, build_id: int) -> Window:
        """The builds whose incidents `build_id`'s arrival can change (see `Window`), each
        with its status and the newest stored event that gave that status."""
        ...

    async def event_bodies(self, ids: list[int]) -> dict[int, bytes]:
        """The bodies of these stored events (those still stored)."""
        ...

    async def delivery_mentions(
        self, destination: str, event_ids: list[int]
    ) -> dict[int, tuple[str, ...]]:
        """Who the deliveries of these events to `destination` mention (those that do)."""
        ...

    async def thread_records(
        self, destination: str, factory: str, trigger: str, window: Window
    ) -> list[Record]:
        """The destination's messages about (factory, trigger) that `window` covers."""
        ...

    async def save_thread_record(
        self, destination: str, factory: str, trigger: str, record: Record
    ) -> None:
        """Keep (or replace) the record of one message."""
        ...

    async def drop_thread_records(
        self, destination: str, factory: str, trigger: str, keys: list[Key]
    ) -> None:
        """Forget messages that are gone from the chat."""
        ...


class LaneStore(ThreadStore, Protocol):
    async def claim(
        self,
        destination: str,
        now: float,
        limit: int,
        lease: float,
        passing: Collection[int] = (),
    ) -> Claim:
        """Claim up to `limit` due deliveries at the head of the lane, in order, until
        `now + lease`. `passing`: deliveries the lane holds and is sending (a claim made
        ahead): passed over like those whose `sent` is not yet written."""
        ...

    async def release(self, ids: list[int]) -> None:
        """Give claimed deliveries back untouched (shutdown, or a lane that stopped early)."""
        ...

    async def mark_sent(self, delivery_id: int, now: float) -> None: ...

    def note_sent(self, delivery_id: int, now: float) -> None:
        """Record `sent` without waiting: written soon, in a batch with the others noted
        meanwhile. Until then the delivery stays claimed, so it is not claimed again here; a
        crash before the write sends it again (at least once), and it is never lost."""
        ...

    async def mark_retry(self, delivery_id: int, at: float, error: str, now: float) -> None: ...

    async def mark_dead(self, delivery_id: int, error: str, now: float) -> None: ...

    async def kill_orphans(self, destinations: set[str], now: float) -> int:
        """Dead-letter pending deliveries to destinations the config no longer has."""
        ...

    async def own_lane(self, destination: str) -> bool:
        """Whether this process may claim `destination`'s deliveries now."""
        ...

    async def release_lane(self, destination: str) -> None:
        """Give the lane up (its lane stopped), so that another replica can take it."""
        ...

    def on_queued(self, wake: Callable[[list[str]], None]) -> None:
        """Call `wake` with the lanes that another replica queued deliveries for."""
        ...

    def announce_queued(self, destinations: list[str]) -> None:
        """Tell the other replicas that these lanes, not this one's, have new deliveries."""
        ...


class ReportStore(Protocol):
    async def list_deliveries(
        self, state: State | None = None, destination: str | None = None, limit: int = 100
    ) -> list[DeliveryRow]: ...

    async def counts(self) -> dict[State, int]: ...

    async def destination_stats(self) -> dict[str, DestinationStats]:
        """Pending and dead deliveries per destination that has any."""
        ...

    async def recent_events(
        self, limit: int, factory: str | None = None, build_id: int | None = None
    ) -> list[EventRow]:
        """The newest events first, each with its deliveries in id order."""
        ...

    async def hourly_activity(self, since: float, hours: int) -> list[HourActivity]:
        """`hours` consecutive hours from `since`, every hour present (zeros included)."""
        ...


class OperationsStore(Protocol):
    async def requeue_dead(self, ids: list[int] | None, now: float) -> int:
        """Queue dead deliveries again: those in `ids`, or every one when `ids` is None."""
        ...

    async def purge(self, before: float, states: tuple[State, ...]) -> int:
        """Delete deliveries in `states` last changed before `before`, events left empty,
        and silences ended before `before`; the count of deliveries deleted."""
        ...


class DispatchStore(LaneStore, OperationsStore, Protocol):
    """What the dispatcher needs: its lanes' calls, and pruning what was sent long ago."""


class Store(IntakeStore, DispatchStore, ReportStore, SilenceStore, Protocol):
    """A whole backend (SQLite, PostgreSQL). Every backend keeps these promises:

    - `accept` stores an event and its deliveries atomically and durably before it
      returns; a second event with the same key stores nothing and says so.
    - A destination's pending deliveries are claimed oldest first (by id), and a
      claim stops at the first one not yet due, so a lane stays in order.
    - A claim is a lease: if its holder dies, the delivery becomes claimable again.
    - A lane (a destination's deliveries) is owned by one serving process at a time,
      and only its owner claims, so its order and rate limit hold across replicas.
    """

    async def open(self, *, serving: bool) -> None:
        """Make ready; `serving` means this process will claim deliveries."""
        ...

    async def close(self) -> None: ...
