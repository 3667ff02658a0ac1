"""The embedded outbox: one SQLite file in WAL mode, written by one thread with group commit.

Every store call becomes a job for the writer thread. The thread takes all the jobs
waiting, runs them in one transaction (one that fails is undone alone, the others
stand), commits once, syncs the write-ahead log, and only then answers them all.
Concurrent webhooks thus share one fsync, each still answered after its data is
durable, and the event loop never waits on the disk. The sync comes after the commit
has let go of the file's write lock, so other writers go on while it lasts.

Only accepted events need that fsync before the answer. A batch of nothing but
delivery bookkeeping (claims, outcomes) is answered without one: a process killed at
any moment loses none of it (the operating system has it), and a power cut can at
worst make a sent message go out again, which at-least-once delivery allows. The
lanes' bookkeeping runs on the event loop itself, on a connection of its own, while
no other writer holds the file: it never waits there, and its jobs stay in order.

The writer is in sqlite_writer.py, the schema in sqlite_schema.py, and the calls of each
kind of caller in sqlite_intake.py, sqlite_lanes.py and sqlite_reports.py.
"""

from __future__ import annotations

from bridge.store.sqlite_intake import SqliteIntake
from bridge.store.sqlite_lanes import SqliteLanes
from bridge.store.sqlite_reports import SqliteReports
from bridge.store.sqlite_silences import SqliteSilences


class SqliteStore(SqliteIntake, SqliteLanes, SqliteReports, SqliteSilences):
    """The SQLite outbox: its intake, lanes, reports and silences over one writer thread
    (and the event loop's connection for the lanes' quick jobs)."""
