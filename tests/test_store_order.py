"""The SQLite store's jobs run in the order queued, wherever each runs.

A lane's quick jobs run on the event loop's connection unless another writer holds the
file; then they, and those queued after them, wait on the writer thread. Here another
connection takes and gives back the file's lock at arbitrary moments, between jobs of
both kinds queued in arbitrary order, some with turns of the loop between them: every
job must see exactly the writes of the jobs queued before it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.store.sqlite import SqliteStore

Step = Literal["quick", "thread", "turn", "lock", "unlock"]
STEPS = st.lists(st.sampled_from(["quick", "thread", "turn", "lock", "unlock"]), max_size=40)


async def run_steps(path: Path, steps: list[Step]) -> tuple[list[str], list[str]]:
    """Queue a job per quick/thread step, each appending its number to one row and
    answering what it found there; what each found, and what it should have."""
    store = SqliteStore(path)
    await store.open(serving=True)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, seen TEXT)")
        other.execute("INSERT OR REPLACE INTO log VALUES (1, '')")
        jobs: list[asyncio.Future[str]] = []
        expected: list[str] = []
        for step in steps:
            if step in ("quick", "thread"):
                mark = f"{len(jobs)},"

                def append(c: sqlite3.Connection, mark: str = mark) -> str:
                    (seen,) = c.execute("SELECT seen FROM log WHERE id = 1").fetchone()
                    c.execute("UPDATE log SET seen = seen || ? WHERE id = 1", (mark,))
                    return str(seen)

                expected.append("".join(f"{n}," for n in range(len(jobs))))
                jobs.append(store._submit(append, quick=step == "quick"))
            elif step == "turn":
                await asyncio.sleep(0)
            elif step == "lock" and not other.in_transaction:
                other.execute("BEGIN IMMEDIATE")
            elif step == "unlock" and other.in_transaction:
                other.execute("COMMIT")
                await asyncio.sleep(0)
        if other.in_transaction:
            other.execute("COMMIT")
        found = list(await asyncio.wait_for(asyncio.gather(*jobs), 30))
        return found, expected
    finally:
        other.close()
        await store.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS)
def test_jobs_see_the_writes_of_those_queued_before_them(tmp_path: Path, steps: list[Step]) -> None:
    path = tmp_path / "order.sqlite3"  # one file for every example: each starts the row anew
    found, expected = asyncio.run(run_steps(path, steps))
    assert found == expected
