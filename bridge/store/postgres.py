"""The shared outbox: PostgreSQL through asyncpg, for several replicas of the bridge.

Any replica accepts any webhook: a repeat is recognised by the UNIQUE key of
events (INSERT ... ON CONFLICT DO NOTHING), never by a read before the write. A
new event, its place in its trigger's build history and its deliveries go in in
one transaction, under a lock per (factory, trigger) so that the events of one
trigger are accepted one at a time over all replicas. The accepts that arrive while
one is being committed go together in the next transaction, in arrival order, each
seeing those before it (a group commit: one WAL sync for all, postgres_batches.py);
a transaction takes all its triggers' locks first, in one order, so replicas never
deadlock on them.

A lane (a destination's deliveries, in id order) is owned by one replica at a
time through a session-level advisory lock held on a connection of its own: the
server drops the lock as soon as that connection ends, so the lanes of a replica
that dies are free at once. Only the owner claims; a claim is still a lease, with
FOR UPDATE SKIP LOCKED so that two claimers never wait on each other and the one
that loses the race takes nothing rather than rows behind the head. Taking a lane
over releases the claims its previous owner left, as opening the SQLite file does.

The connections are in postgres_pool.py, the schema in postgres_schema.py, and the calls
of each kind of caller in postgres_intake.py, postgres_lanes.py (with postgres_threads.py)
and postgres_reports.py.
"""

from __future__ import annotations

from bridge.store.postgres_intake import PostgresIntake
from bridge.store.postgres_lanes import PostgresLanes
from bridge.store.postgres_pool import LANE_LOCK_CLASS, safe_url
from bridge.store.postgres_reports import PostgresReports
from bridge.store.postgres_silences import PostgresSilences

__all__ = ["LANE_LOCK_CLASS", "PostgresStore", "safe_url"]


class PostgresStore(PostgresIntake, PostgresLanes, PostgresReports, PostgresSilences):
    """The PostgreSQL outbox: its intake, lanes, reports and silences over one pool."""
