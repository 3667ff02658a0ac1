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
