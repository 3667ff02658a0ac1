"""The outbox: accepted events and their deliveries, one interface for every backend.

Its records are in `bridge.store.records`; what each kind of caller needs of it, in
`bridge.store.protocols`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bridge.store.protocols import (
    DispatchStore,
    IntakeStore,
    LaneStore,
    OperationsStore,
    ReportStore,
    SilenceStore,
    Store,
    ThreadStore,
)
from bridge.store.records import (
    STATES,
    Accepted,
    Claim,
    Delivery,
    DeliveryRow,
    DestinationStats,
    EventRow,
    HourActivity,
    NewEvent,
    Plan,
    Planned,
    State,
    StoreUnavailable,
    unavailable,
)

if TYPE_CHECKING:
    from bridge.config import StoreConfig

__all__ = [
    "STATES",
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
    "Planned",
    "ReportStore",
    "SilenceStore",
    "State",
    "Store",
    "StoreUnavailable",
    "ThreadStore",
    "open_store",
    "unavailable",
]


# A PostgreSQL pool's connections when [store] pool_size is not set: this many, or as many as
# the lanes and INTAKE_CONNECTIONS more. Each lane claims on a connection of its own while the
# intake's batches, the sent outcomes and the wakeups take theirs: 10 lanes on 10 connections
# waited for one (200 events/s to 10 destinations: p50 16-19 ms to the chat, against 11-13
# with 15 connections).
POOL_SIZE, INTAKE_CONNECTIONS = 10, 5


def open_store(where: StoreConfig | str | os.PathLike[str], lanes: int = 0) -> Store:
    """The store a config's [store] names: PostgreSQL at `url`, else SQLite at `path`;
    `lanes`: how many destinations will claim from it.

    A plain path opens that SQLite file.
    """
    from bridge.store.sqlite import SqliteStore

    if isinstance(where, str | os.PathLike):
        return SqliteStore(where)
    if where.url is not None:
        from bridge.store.postgres import PostgresStore

        size = where.pool_size or max(POOL_SIZE, lanes + INTAKE_CONNECTIONS)
        return PostgresStore(where.url.get_secret_value(), pool_size=size)
    return SqliteStore(where.path)
