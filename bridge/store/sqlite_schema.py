"""The SQLite outbox's schema: numbered migrations, numbered as PostgreSQL's are
(bridge.store.postgres_schema), applied in order at open in one transaction.

`schema_version` holds one row per version applied. A file written before it existed
(tables made with CREATE IF NOT EXISTS, columns added on open) is marked at the version
its tables show, then brought up to date like any other.
"""

from __future__ import annotations

import sqlite3

from bridge.store.records import StoreUnavailable

# Each entry takes the schema from the version before it to its own (index + 1).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            factory TEXT NOT NULL,
            trigger TEXT NOT NULL,
            build_id INTEGER NOT NULL,
            status TEXT NOT NULL,
            body BLOB NOT NULL,
            received_at REAL NOT NULL
        )""",
        """CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL REFERENCES events(id),
            destination TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            claimed_until REAL,
            last_error TEXT
        )""",
        "CREATE INDEX deliveries_lane ON deliveries (destination, id) WHERE state = 'pending'",
        "CREATE INDEX deliveries_by_event ON deliveries (event_id)",
        "CREATE INDEX deliveries_done ON deliveries (state, updated_at) WHERE state != 'pending'",
        "CREATE INDEX events_received ON events (received_at)",
        "CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)",
    ),
    # 2: what a build means next to those before it, and who to mention; chat threads.
    (
        "ALTER TABLE events ADD COLUMN transition TEXT",
        "ALTER TABLE deliveries ADD COLUMN mentions TEXT",
        """CREATE TABLE builds (
            factory TEXT NOT NULL,
            trigger TEXT NOT NULL,
            build_id INTEGER NOT NULL,
            status TEXT NOT NULL,
            completed_at REAL,
            PRIMARY KEY (factory, trigger, build_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE threads (
            destination TEXT NOT NULL,
            factory TEXT NOT NULL,
            trigger TEXT NOT NULL,
            thread TEXT NOT NULL,
            PRIMARY KEY (destination, factory, trigger)
        ) WITHOUT ROWID""",
    ),
    # 3: the newest build below one that did not fail, without reading a failing streak.
    ("CREATE INDEX builds_ended ON builds (factory, trigger, build_id) WHERE status != 'FAILED'",),
    # 4: incidents: the events of one build, and a threaded destination's messages.
    (
        "CREATE INDEX events_build ON events (factory, trigger, build_id)",
        """CREATE TABLE thread_messages (
            destination TEXT NOT NULL,
            factory TEXT NOT NULL,
            trigger TEXT NOT NULL,
            anchor INTEGER NOT NULL,
            kind TEXT NOT NULL,
            build_id INTEGER NOT NULL,
            ref TEXT NOT NULL,
            digest TEXT NOT NULL,
            reposted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (destination, factory, trigger, anchor, kind, build_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX thread_messages_build"
        " ON thread_messages (destination, factory, trigger, build_id)",
    ),
    # 5: silences, and who acknowledged an incident (a delivery's state may be 'silenced').
    (
        """CREATE TABLE silences (
            id INTEGER PRIMARY KEY,
            factory TEXT NOT NULL,
            trigger TEXT NOT NULL,
            destination TEXT,
            starts_at REAL NOT NULL,
            ends_at REAL NOT NULL,
            comment TEXT NOT NULL,
            author TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX silences_ending ON silences (ends_at)",
        """CREATE TABLE acknowledgements (
            destination TEXT NOT NULL,
            factory TEXT NOT NULL,
            trigger TEXT NOT NULL,
            anchor INTEGER NOT NULL,
            user_id TEXT NOT NULL,
            user_name TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (destination, factory, trigger, anchor)
        ) WITHOUT ROWID""",
    ),
    # 6: when each event's build completed: a build completed twice shows its latest copy.
    ("ALTER TABLE events ADD COLUMN completed_at REAL",),
    # 7: the status page's chart counts the events of each hour, failed or not, from this
    # index alone: not from the events' rows, which hold their bodies.
    (
        "DROP INDEX IF EXISTS events_received",  # a file of the first version may lack it
        "CREATE INDEX events_received ON events (received_at, status)",
    ),
]


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the schema to the newest version, all in one transaction (a failure leaves
    the file as it was). `connection` is in autocommit mode (isolation_level None)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        current = _version(connection)
        if current > len(MIGRATIONS):
            raise StoreUnavailable(
                f"the store's schema is version {current}, newer than this jobserv-bridge knows"
                f" ({len(MIGRATIONS)}): upgrade jobserv-bridge"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[version - 1]:
                connection.execute(statement)
            _mark(connection, version)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _version(connection: sqlite3.Connection) -> int:
    """The schema's version; a file from before `schema_version` is marked at its own."""
    if _has(connection, "table", "schema_version"):
        found = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(found.fetchone()[0])
    connection.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    legacy = _legacy_version(connection)
    for version in range(1, legacy + 1):
        _mark(connection, version)
    return legacy


def _legacy_version(connection: sqlite3.Connection) -> int:
    """The version whose tables a file made before `schema_version` has: 0 for a new file.

    Such a file got its tables and added columns one open at a time: one part-way into
    version 2 gets the rest of it here."""
    if not _has(connection, "table", "events"):
        return 0
    events = {row[1] for row in connection.execute("PRAGMA table_info(events)")}
    deliveries = {row[1] for row in connection.execute("PRAGMA table_info(deliveries)")}
    started = "transition" in events or "mentions" in deliveries
    if not started and not _has(connection, "table", "builds"):
        return 1
    if "transition" not in events:
        connection.execute(MIGRATIONS[1][0])
    if "mentions" not in deliveries:
        connection.execute(MIGRATIONS[1][1])
    for statement in MIGRATIONS[1][2:]:
        connection.execute(statement.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    if not _has(connection, "index", "builds_ended"):
        return 2
    if not _has(connection, "table", "thread_messages"):
        return 3
    # Files from before `schema_version` stop here; a later table means a later version.
    return 4 if not _has(connection, "table", "silences") else 5


def _has(connection: sqlite3.Connection, kind: str, name: str) -> bool:
    found = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", (kind, name)
    )
    return found.fetchone() is not None


def _mark(connection: sqlite3.Connection, version: int) -> None:
    connection.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, strftime('%s', 'now'))",
        (version,),
    )
