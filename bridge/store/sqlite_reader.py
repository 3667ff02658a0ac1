"""The SQLite outbox's reports, read on a connection of their own, in a thread of their own.

The writer thread runs each job inside a write transaction: a report run there holds up
every webhook and every lane until it ends. A report's work depends on what it is asked
(a status page filtered by a factory that has no events reads every event of a million of
them), so reports are read here instead: the write-ahead log lets a reader and the writer go
on at once, each read seeing the store as it was committed when it began.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bridge.store.records import StoreUnavailable, unavailable

T = TypeVar("T")


class SqliteReader:
    """One connection for the reports, opened at the first, used by one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = True  # until the store is open

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._read, work)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("store is not open")
            try:
                if self._connection is None:
                    self._connection = sqlite3.connect(
                        self.path, isolation_level=None, check_same_thread=False, timeout=10.0
                    )
                connection = self._connection
                connection.execute("BEGIN")  # one snapshot for all the report's statements
                try:
                    return work(connection)
                finally:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")  # it wrote nothing
            except Exception as exc:
                raise unavailable(f"cannot read {self.path}", exc, (sqlite3.Error,)) from None

    def open(self) -> None:
        self._closed = False

    def close(self) -> None:
        """Close the connection, once a report running on it ends: now, with an error."""
        self._closed = True
        running = self._connection
        if running is not None:
            running.interrupt()
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
