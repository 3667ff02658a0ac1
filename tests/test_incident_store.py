"""What the stores keep for incidents, the same tests over SQLite and PostgreSQL: a
trigger's builds around one (a `Window`, as `incidents.window` defines it), the records
of a threaded destination's messages, and what a late build's transition knows above it.
"""

from __future__ import annotations

import time

from bridge.incidents import Record, Seen, Window, window
from bridge.silences import Acknowledgement
from bridge.store import Store
from tests.conftest import plan
from tests.test_store import backend, event, store

__all__ = ["backend", "store"]  # the fixtures, over both backends

TRIGGER = "platform-devel"


async def accept(store: Store, n: int, status: str, completed: float = 1.0) -> int:
    accepted = await store.accept(event(n, status=status, completed=completed), plan([]))
    return accepted.event_id


async def test_a_window_holds_the_builds_between_the_passed_builds_around_one(
    store: Store,
) -> None:
    ids = {}
    for n, status in [(1, "PASSED"), (2, "FAILED"), (4, "FAILED"), (5, "PASSED"), (7, "FAILED")]:
        ids[n] = await accept(store, n, status)
    rerun = await accept(store, 4, "PASSED", completed=2.0)  # a re-run passed
    stale = await accept(store, 4, "FAILED", completed=0.5)  # an older completion, late

    around = await store.trigger_window("andy-corp", TRIGGER, 3)
    newest = await store.trigger_window("andy-corp", TRIGGER, 9)
    first = await store.trigger_window("andy-corp", TRIGGER, 1)

    assert around == Window(1, 4, {2: Seen("FAILED", ids[2]), 4: Seen("PASSED", rerun)})
    assert stale not in {seen.event_id for seen in around.builds.values()}
    assert newest == Window(5, None, {7: Seen("FAILED", ids[7])})
    assert (first.lower, first.upper, sorted(first.builds)) == (None, 4, [1, 2, 4])
    # The same as the pure definition over every build.
    everything = {n: Seen(s.status, s.event_id) for n, s in first.builds.items()}
    everything.update(newest.builds)
    everything[5] = Seen("PASSED", ids[5])
    assert window(everything, 3) == around


async def test_a_build_that_failed_twice_shows_its_latest_completion_whatever_the_order(
    store: Store,
) -> None:
    """A re-run that failed again (other runs may fail) is the copy a window shows, also
    when the first completion's webhook arrives after it."""
    await accept(store, 1, "PASSED")
    latest = await accept(store, 2, "FAILED", completed=3.0)
    await accept(store, 2, "FAILED", completed=2.0)  # the first completion, late
    await accept(store, 3, "FAILED", completed=1.0)
    again = await accept(store, 3, "FAILED", completed=1.0)  # no order to tell: the later

    found = await store.trigger_window("andy-corp", TRIGGER, 2)
    assert found.builds == {2: Seen("FAILED", latest), 3: Seen("FAILED", again)}


async def test_event_bodies_are_read_by_id(store: Store) -> None:
    first = await accept(store, 1, "FAILED")
    assert await store.event_bodies([first, 999]) == {first: b'{"build_id": 1}'}


async def test_records_are_kept_replaced_read_by_window_and_dropped(store: Store) -> None:
    where = ("chat", "andy-corp", TRIGGER)
    root = Record("root", 3, 3, "C1/1.0", "Rabc")
    replies = [Record("reply", 3, n, f"C1/{n}.0", f"B{n}") for n in (4, 9)]
    elsewhere = Record("root", 12, 12, "C1/12.0", "Rdef")
    for record in [root, *replies, elsewhere]:
        await store.save_thread_record(*where, record)
    await store.save_thread_record("other", "andy-corp", TRIGGER, root)
    moved = Record("root", 3, 3, "C1/2.0", "Rnew", reposted=True)
    await store.save_thread_record(*where, moved)

    # Anchored strictly inside (2, 8), or about a build in (2, 8].
    inside = await store.thread_records(*where, Window(2, 8, {}))
    beyond = await store.thread_records(*where, Window(8, None, {}))

    assert sorted(inside, key=lambda r: r.key) == sorted([moved, *replies], key=lambda r: r.key)
    assert sorted(beyond, key=lambda r: r.key) == [replies[1], elsewhere]
    await store.drop_thread_records(*where, [replies[0].key, ("root", 12, 12)])
    left = await store.thread_records(*where, Window(None, None, {}))
    assert sorted(left, key=lambda r: r.key) == sorted([moved, replies[1]], key=lambda r: r.key)


async def test_a_purge_forgets_an_incident_once_none_of_its_builds_is_left(store: Store) -> None:
    """#3-#4 failed and #5 fixed them, long ago; #7 failed long ago and #8 fails today. The
    purge takes the old events: the closed incident's records go, the open one's stay."""
    long_ago = time.time() - 30 * 86400
    for n, status in [(3, "FAILED"), (4, "FAILED"), (5, "PASSED"), (7, "FAILED")]:
        await store.accept(event(n, at=long_ago, status=status), plan([]))
    await store.accept(event(8), plan([]))
    where = ("chat", "andy-corp", TRIGGER)
    closed = [Record("root", 3, 3, "C1/3.0", "R3"), Record("reply", 3, 5, "C1/5.0", "B5")]
    open_ = [Record("root", 7, 7, "C1/7.0", "R7"), Record("reply", 7, 8, "C1/8.0", "B8")]
    for record in closed + open_:
        await store.save_thread_record(*where, record)
    for anchor in (3, 7):
        ack = Acknowledgement(
            destination="chat",
            factory="andy-corp",
            trigger=TRIGGER,
            anchor=anchor,
            user_id="U1",
            user_name="ana",
            at=long_ago,
        )
        await store.acknowledge(ack)

    await store.purge(long_ago + 1, ("sent",))

    left = await store.thread_records(*where, Window(None, None, {}))
    assert sorted(r.key for r in left) == sorted(r.key for r in open_)
    assert [a.anchor for a in await store.acknowledgements(*where)] == [7]


async def test_a_late_failure_knows_the_builds_above_it(store: Store) -> None:
    for n, status in [(3, "PASSED"), (6, "FAILED"), (8, "FAILED"), (9, "PASSED")]:
        await accept(store, n, status)

    late = await store.accept(event(7), plan([]))
    newest = await store.accept(event(10), plan([]))

    assert late.transition is not None
    assert (late.transition.kind, late.transition.failed_count) == ("still_failing", 3)
    assert (late.transition.later, late.transition.fixed_by) == (9, 9)
    summary = "Still failing since #6 (3 failed builds); #9 has passed since"
    assert late.transition.summary == summary
    assert newest.transition is not None
    assert (newest.transition.later, newest.transition.fixed_by) == (None, None)
    assert newest.transition.summary == "New failure after #9 passed"


async def test_a_late_failure_with_nothing_before_it_says_a_newer_build_passed(
    store: Store,
) -> None:
    await accept(store, 5, "PASSED")

    late = await store.accept(event(4), plan([]))

    assert late.transition is not None
    assert (late.transition.kind, late.transition.summary) == (
        "first_failure",
        "#5 has passed since",
    )
