"""Checkpoints of the SQLite outbox's write-ahead log, on a thread of their own.

SQLite copies the log back into the database file (a checkpoint) when a commit finds the
log long, inside that commit: two more syncs, which the writer thread, and so every
webhook and every lane waiting on it, would wait for. A serving store turns that off and
lets this thread checkpoint every second on its own connection instead, passively: it
copies what no reader still needs and never blocks the writer.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("bridge.store")

CHECKPOINT_INTERVAL = 1.0  # seconds


class Checkpointer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop checkpointing (the writer's connection checkpoints as it closes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        with contextlib.closing(connection):
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next one will do
                    log.debug("checkpoint of %s failed: %s", self.path, exc)
