"""A store file with a million events, written straight into SQLite in under a minute.

Going through `SqliteStore.accept` (one fsync'd group commit per batch) would take
many minutes, so the rows are inserted directly, in one unsynced transaction, into the
schema that bridge/store/sqlite_schema.py makes (its own `migrate` runs; a new NOT NULL
column there makes this fail loudly rather than fill a wrong store). Each
row is what the bridge itself would have stored for the sample body renumbered (a
2.1 kB JobServ body) with builds of one trigger alternately failed and passed: the
event with its identity key (as `Build.identity` computes it) and its transition (as
`bridge.transitions.transition` computes it), the trigger's build history, and for each
failed build one delivery to "d0", already sent. Times are spread over the last 6
days, inside the default 7-day retention, so the pruner at startup deletes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import alternating_status, webhook_body
from bridge.store.sqlite_schema import migrate
from bridge.transitions import history, transition

SPREAD = 6 * 86400.0
URL = "https://api.foundries.io/projects/andy-corp/lmp/builds/{}/"
COMPLETED = "2021-07-27T09:03:20+00:00"  # the template's completed time, part of its identity
COMPLETED_AT = 1627376600.0


def _identity(build_id: int, status: str) -> str:
    return hashlib.sha256(f"{URL.format(build_id)}\n{status}\n{COMPLETED}".encode()).hexdigest()


def prefill(path: Path, events: int) -> None:
    start = time.time() - SPREAD
    step = SPREAD / events

    def received(build_id: int) -> float:
        return start + build_id * step

    def event_rows() -> Iterator[tuple[object, ...]]:
        for build_id in range(1, events + 1):
            status = alternating_status(build_id)
            earlier = [(n, alternating_status(n)) for n in (build_id - 1, build_id - 2) if n > 0]
            change = transition(build_id, status, history(earlier))
            yield (
                build_id,
                _identity(build_id, status),
                "andy-corp",
                "containers-devel",
                build_id,
                status,
                webhook_body(build_id, status),
                received(build_id),
                json.dumps(change.as_dict()),
            )

    def build_rows() -> Iterator[tuple[object, ...]]:
        for build_id in range(1, events + 1):
            status = alternating_status(build_id)
            yield ("andy-corp", "containers-devel", build_id, status, COMPLETED_AT)

    def delivery_rows() -> Iterator[tuple[object, ...]]:
        for build_id in range(1, events + 1):
            if alternating_status(build_id) == "FAILED":
                done = received(build_id) + 0.05
                yield (build_id, received(build_id), done, done)

    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-1000000")
        migrate(db)
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO events (id, key, factory, trigger, build_id, status, body, received_at,"
            " transition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            event_rows(),
        )
        db.executemany(
            "INSERT INTO builds (factory, trigger, build_id, status, completed_at)"
            " VALUES (?, ?, ?, ?, ?)",
            build_rows(),
        )
        db.executemany(
            "INSERT INTO deliveries (event_id, destination, state, attempts, created_at,"
            " updated_at, next_attempt_at) VALUES (?, 'd0', 'sent', 1, ?, ?, ?)",
            delivery_rows(),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")


def trim(path: Path, events: int) -> None:
    """Back to the first `events` events: remove what a benchmark run added."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN")
        db.execute("DELETE FROM deliveries WHERE event_id > ?", (events,))
        db.execute("DELETE FROM events WHERE id > ?", (events,))
        db.execute("DELETE FROM builds WHERE build_id > ?", (events,))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
