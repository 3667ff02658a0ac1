"""The store contract, the same tests over both backends: a real SQLite file, and a
real PostgreSQL database (a fresh one per test; see tests/postgres.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bridge.store import NewEvent, Store, StoreUnavailable
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_lanes import _CLAIM
from bridge.store.postgres_schema import MIGRATIONS
from bridge.store.records import DESTINATION_STATS, STATE_COUNTS
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_reports import HOURLY_EVENTS, listing
from bridge.store.sqlite_schema import migrate
from bridge.store.sqlite_writer import JOB_ROWS
from bridge.transitions import Transition
from tests.conftest import plan
from tests.postgres import fresh_database

LEASE = 60.0


@dataclass
class Backend:
    name: str
    make: Callable[[], Store]  # a new, unopened store on the same data
    url: str = ""  # PostgreSQL only


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", lambda: SqliteStore(tmp_path / "outbox.sqlite3"))
        return
    async with fresh_database() as url:
        yield Backend("postgres", lambda: PostgresStore(url), url)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = backend.make()
    await opened.open(serving=True)
    yield opened
    await opened.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


def event(
    n: int,
    *,
    at: float | None = None,
    status: str = "FAILED",
    trigger: str = "platform-devel",
    completed: float | None = None,
) -> NewEvent:
    return NewEvent(
        key=f"event-{trigger}-{n}-{status}-{completed}",
        factory="andy-corp",
        trigger=trigger,
        build_id=n,
        status=status,
        body=b'{"build_id": %d}' % n,
        received_at=time.time() if at is None else at,
        completed_at=completed,
    )


async def claim_ids(store: Store, destination: str, now: float, limit: int = 32) -> list[int]:
    return [d.id for d in (await store.claim(destination, now, limit, LEASE)).deliveries]


# -- accept -------------------------------------------------------------------


async def test_accept_stores_the_event_and_one_pending_delivery_per_destination(
    store: Store,
) -> None:
    accepted = await store.accept(event(1), plan(["ci-alerts", "audit"]))

    assert not accepted.duplicate
    assert accepted.deliveries == 2
    rows = await store.list_deliveries()
    assert sorted(r.destination for r in rows) == ["audit", "ci-alerts"]
    assert {(r.event_id, r.state, r.attempts, r.build_id) for r in rows} == {
        (accepted.event_id, "pending", 0, 1)
    }
    assert await store.counts() == {"pending": 2, "sent": 0, "dead": 0}


async def test_a_repeat_stores_nothing_and_answers_with_the_first_event(store: Store) -> None:
    first = await store.accept(event(1), plan(["ci-alerts", "audit"]))
    again = await store.accept(event(1), plan(["ci-alerts"]))  # routes changed meanwhile

    assert again.duplicate
    assert (again.event_id, again.deliveries) == (first.event_id, 2)
    assert await store.counts() == {"pending": 2, "sent": 0, "dead": 0}


async def test_an_event_routed_nowhere_is_stored_without_deliveries(store: Store) -> None:
    accepted = await store.accept(event(1), plan([]))

    assert (accepted.deliveries, accepted.duplicate) == (0, False)
    assert (await store.accept(event(1), plan([]))).duplicate
    [stored] = await store.recent_events(10)
    assert (stored.id, stored.deliveries) == (accepted.event_id, [])


async def test_concurrent_repeats_store_the_event_once(store: Store) -> None:
    results = await asyncio.gather(*(store.accept(event(7), plan(["a", "b"])) for _ in range(20)))

    assert [r.duplicate for r in results].count(False) == 1
    assert {(r.event_id, r.deliveries) for r in results} == {(results[0].event_id, 2)}
    assert await store.counts() == {"pending": 2, "sent": 0, "dead": 0}


async def test_accepted_events_survive_closing_and_reopening(backend: Backend) -> None:
    first = backend.make()
    await first.open(serving=True)
    accepted = await first.accept(event(1), plan(["ci-alerts"]))
    await first.close()

    second = backend.make()
    await second.open(serving=True)
    try:
        assert (await second.accept(event(1), plan(["ci-alerts"]))).duplicate
        [row] = await second.list_deliveries()
        assert (row.event_id, row.state) == (accepted.event_id, "pending")
    finally:
        await second.close()


# -- a trigger's history, mentions, threads ---------------------------------------


def kind(transition: Transition | None) -> str:
    assert transition is not None
    return transition.kind


async def test_each_event_takes_its_place_in_its_triggers_history(store: Store) -> None:
    first = await store.accept(event(41), plan(["ci-alerts"]))
    again = await store.accept(event(42), plan(["ci-alerts"]))
    fixed = await store.accept(event(43, status="PASSED"), plan(["ci-alerts"]))
    elsewhere = await store.accept(event(44, trigger="platform-main"), plan(["ci-alerts"]))
    broken = await store.accept(event(45), plan(["ci-alerts"]))
    still = await store.accept(event(46), plan(["ci-alerts"]))

    assert (kind(first.transition), first.destinations) == ("first_failure", ("ci-alerts",))
    assert again.transition == Transition(
        "still_failing", "Still failing since #41 (2 failed builds)", 41, 2, 41, "FAILED"
    )
    assert fixed.transition is not None
    assert (fixed.transition.kind, fixed.transition.since, fixed.transition.failed_count) == (
        "fixed",
        41,
        2,
    )
    assert kind(elsewhere.transition) == "first_failure"  # another trigger, another history
    assert broken.transition == Transition(
        "first_failure", "New failure after #43 passed", 45, 1, 43, "PASSED"
    )
    assert still.transition is not None
    # The streak ends at the pass.
    assert (still.transition.since, still.transition.failed_count) == (45, 2)


async def test_history_follows_build_numbers_and_the_latest_completion(store: Store) -> None:
    await store.accept(event(5, completed=100.0), plan([]))
    await store.accept(event(5, status="PASSED", completed=200.0), plan([]))  # a re-run
    await store.accept(event(5, completed=150.0), plan([]))  # late news of an older run
    late = await store.accept(event(3), plan([]))  # an older build arriving late

    after = await store.accept(event(6), plan([]))

    assert after.transition is not None
    assert (after.transition.kind, after.transition.previous) == ("first_failure", 5)
    assert after.transition.previous_status == "PASSED"
    assert late.transition is not None and late.transition.previous is None


async def test_the_plan_sees_the_transition_and_picks_the_deliveries(store: Store) -> None:
    seen: list[Transition] = []

    def news_only(change: Transition) -> list[tuple[str, tuple[str, ...]]]:
        seen.append(change)
        if change.kind != "first_failure":
            return []
        return [("ci-alerts", ("<@U456>", "<!subteam^S123>")), ("audit", ())]

    first = await store.accept(event(1), news_only)
    second = await store.accept(event(2), news_only)
    repeat = await store.accept(event(1), news_only)

    assert [c.kind for c in seen] == ["first_failure", "still_failing"]  # once per new event
    assert (first.deliveries, first.destinations) == (2, ("ci-alerts", "audit"))
    assert (second.deliveries, second.destinations) == (0, ())
    assert (repeat.duplicate, repeat.deliveries) == (True, 2)
    [alert] = (await store.claim("ci-alerts", time.time(), 32, LEASE)).deliveries
    assert alert.mentions == ("<@U456>", "<!subteam^S123>")
    assert (alert.transition, alert.trigger, alert.build_id) == (
        first.transition,
        "platform-devel",
        1,
    )
    [audit] = (await store.claim("audit", time.time(), 32, LEASE)).deliveries
    assert audit.mentions == ()


async def test_a_thread_is_kept_per_destination_and_trigger(store: Store) -> None:
    where = ("ci-alerts", "andy-corp", "platform-devel")
    assert await store.thread(*where) is None

    await store.set_thread(*where, "1700000000.000100")
    assert await store.thread(*where) == "1700000000.000100"
    assert await store.thread("audit", "andy-corp", "platform-devel") is None
    assert await store.thread("ci-alerts", "andy-corp", "platform-main") is None

    await store.set_thread(*where, "1700000000.000200")
    assert await store.thread(*where) == "1700000000.000200"
    await store.set_thread(*where, None)
    assert await store.thread(*where) is None


# -- claims -------------------------------------------------------------------


async def test_a_lane_is_claimed_oldest_first_up_to_the_limit(store: Store) -> None:
    t0 = time.time()
    for n in range(5):
        await store.accept(event(n, at=t0), plan(["ci-alerts", "audit"]))
    alerts = [r.id for r in reversed(await store.list_deliveries(destination="ci-alerts"))]

    claim = await store.claim("ci-alerts", t0 + 1, 3, LEASE)

    assert [d.id for d in claim.deliveries] == alerts[:3]
    assert [d.build_id for d in claim.deliveries] == [0, 1, 2]
    assert {d.destination for d in claim.deliveries} == {"ci-alerts"}
    assert claim.deliveries[0].body == b'{"build_id": 0}'
    assert await claim_ids(store, "ci-alerts", t0 + 1) == []  # the head is held
    assert len(await claim_ids(store, "audit", t0 + 1)) == 5  # another lane is not


async def test_a_claim_stops_at_the_first_delivery_not_yet_due(store: Store) -> None:
    t0 = time.time()
    for n in range(3):
        await store.accept(event(n, at=t0), plan(["ci-alerts"]))
    [head, *_] = (await store.claim("ci-alerts", t0, 1, LEASE)).deliveries
    await store.mark_retry(head.id, t0 + 30, "HTTP 503", t0)

    waiting = await store.claim("ci-alerts", t0 + 1, 32, LEASE)
    assert waiting.deliveries == []  # the others stay behind the head
    assert waiting.next_due == pytest.approx(t0 + 30)

    due = await store.claim("ci-alerts", t0 + 31, 32, LEASE)
    assert len(due.deliveries) == 3
    assert due.deliveries[0].id == head.id
    assert due.deliveries[0].attempts == 1


async def test_a_claim_is_a_lease_that_expires(store: Store) -> None:
    t0 = time.time()
    await store.accept(event(1, at=t0), plan(["ci-alerts"]))
    taken = await claim_ids(store, "ci-alerts", t0)

    assert await claim_ids(store, "ci-alerts", t0 + LEASE - 1) == []
    assert await claim_ids(store, "ci-alerts", t0 + LEASE + 1) == taken


async def test_released_deliveries_are_claimable_again_in_order(store: Store) -> None:
    t0 = time.time()
    for n in range(3):
        await store.accept(event(n, at=t0), plan(["ci-alerts"]))
    taken = await claim_ids(store, "ci-alerts", t0)

    await store.release(taken[1:])
    await store.mark_sent(taken[0], t0)

    assert await claim_ids(store, "ci-alerts", t0) == taken[1:]


async def test_outcomes_are_recorded(store: Store) -> None:
    t0 = time.time()
    for n in range(3):
        await store.accept(event(n, at=t0), plan(["ci-alerts"]))
    sent, retried, dead = await claim_ids(store, "ci-alerts", t0)

    await store.mark_sent(sent, t0 + 1)
    await store.mark_retry(retried, t0 + 10, "HTTP 500", t0 + 1)
    await store.mark_dead(dead, "HTTP 404: no_such_channel", t0 + 1)

    rows = {r.id: r for r in await store.list_deliveries()}
    assert (rows[sent].state, rows[sent].attempts, rows[sent].last_error) == ("sent", 1, None)
    assert (rows[retried].state, rows[retried].attempts) == ("pending", 1)
    assert rows[retried].next_attempt_at == pytest.approx(t0 + 10)
    assert rows[retried].last_error == "HTTP 500"
    assert (rows[dead].state, rows[dead].last_error) == ("dead", "HTTP 404: no_such_channel")
    assert await store.counts() == {"pending": 1, "sent": 1, "dead": 1}
    assert await claim_ids(store, "ci-alerts", t0 + 11) == [retried]


# -- the outbox CLI's operations -------------------------------------------------


async def test_pending_deliveries_to_removed_destinations_become_dead(store: Store) -> None:
    t0 = time.time()
    await store.accept(event(1, at=t0), plan(["ci-alerts", "old-channel"]))
    await store.accept(event(2, at=t0), plan(["old-channel"]))

    assert await store.kill_orphans({"ci-alerts"}, t0) == 2

    dead = await store.list_deliveries(state="dead")
    assert {r.destination for r in dead} == {"old-channel"}
    assert all("old-channel is no longer configured" in (r.last_error or "") for r in dead)
    assert [r.destination for r in await store.list_deliveries(state="pending")] == ["ci-alerts"]


async def test_listing_filters_and_puts_the_newest_first(store: Store) -> None:
    t0 = time.time()
    for n in range(4):
        await store.accept(event(n, at=t0), plan(["ci-alerts", "audit"]))
    [first, *_] = await claim_ids(store, "audit", t0)
    await store.mark_dead(first, "HTTP 400", t0)

    newest = await store.list_deliveries(destination="ci-alerts", limit=2)
    assert [r.build_id for r in newest] == [3, 2]
    assert [r.id for r in await store.list_deliveries(state="dead")] == [first]
    assert len(await store.list_deliveries(state="pending", destination="audit")) == 3


async def test_retry_queues_dead_letters_again(store: Store) -> None:
    t0 = time.time()
    for n in range(3):
        await store.accept(event(n, at=t0), plan(["ci-alerts"]))
    a, b, c = await claim_ids(store, "ci-alerts", t0)
    await store.mark_dead(a, "HTTP 400", t0)
    await store.mark_dead(b, "HTTP 400", t0)
    await store.mark_sent(c, t0)

    assert await store.requeue_dead([a, c], t0 + 1) == 1  # a sent delivery is not resent
    assert await claim_ids(store, "ci-alerts", t0 + 1) == [a]
    assert await store.requeue_dead(None, t0 + 2) == 1
    rows = {r.id: r for r in await store.list_deliveries()}
    assert (rows[b].state, rows[b].attempts) == ("pending", 0)
    assert rows[c].state == "sent"


async def test_purge_deletes_old_finished_deliveries_and_their_events(store: Store) -> None:
    t0 = time.time() - 3600
    await store.accept(event(1, at=t0), plan(["ci-alerts"]))
    await store.accept(event(2, at=t0), plan(["ci-alerts"]))
    await store.accept(event(3, at=t0), plan(["audit"]))
    sent, dead = await claim_ids(store, "ci-alerts", t0)
    await store.mark_sent(sent, t0)
    await store.mark_dead(dead, "HTTP 400", t0)

    assert await store.purge(t0 + 1, ("sent",)) == 1

    assert {r.state for r in await store.list_deliveries()} == {"dead", "pending"}
    assert sorted(e.build_id for e in await store.recent_events(10)) == [2, 3]
    assert not (await store.accept(event(1), plan(["ci-alerts"]))).duplicate  # gone for good


# -- what the status page and /metrics read ---------------------------------------


async def test_destination_stats_count_pending_and_dead(store: Store) -> None:
    t0 = time.time()
    for n in range(3):
        await store.accept(event(n, at=t0 + n), plan(["ci-alerts"]))
    first, *_ = await claim_ids(store, "ci-alerts", t0 + 5)
    await store.mark_dead(first, "HTTP 400", t0 + 5)

    stats = await store.destination_stats()

    assert set(stats) == {"ci-alerts"}
    assert (stats["ci-alerts"].pending, stats["ci-alerts"].dead) == (2, 1)
    assert stats["ci-alerts"].oldest_pending_at == pytest.approx(t0 + 1)
    assert stats["ci-alerts"].oldest_dead_at == pytest.approx(t0)


async def test_a_large_purge_lets_webhooks_through_as_it_goes(tmp_path: Path) -> None:
    """The first purge after days down deletes a great many rows: in writer jobs of
    JOB_ROWS, an event accepted meanwhile goes between two of them, not after them all."""
    store = SqliteStore(tmp_path / "outbox.sqlite3")
    await store.open(serving=True)
    try:
        t0 = time.time() - 86400
        lanes = [f"chat-{n}" for n in range(10)]
        for n in range(3 * JOB_ROWS // len(lanes)):
            await store.accept(event(n, at=t0), plan(lanes))
        for lane in lanes:
            for delivery in (await store.claim(lane, t0, 1000, LEASE)).deliveries:
                await store.mark_sent(delivery.id, t0)

        purging = asyncio.ensure_future(store.purge(time.time(), ("sent",)))
        await asyncio.sleep(0)  # the purge's first job is queued
        accepted = await store.accept(event(10_000), plan(["ci-alerts"]))
        purged_meanwhile = purging.done()
        purged = await purging
    finally:
        await store.close()

    assert not accepted.duplicate and not purged_meanwhile
    assert purged == 3 * JOB_ROWS


async def test_a_removed_destinations_backlog_dies_while_webhooks_go_on(tmp_path: Path) -> None:
    """A reload that removes a destination dead-letters its backlog, of any size, in writer
    jobs of JOB_ROWS: an event accepted meanwhile goes between two of them."""
    store = SqliteStore(tmp_path / "outbox.sqlite3")
    await store.open(serving=True)
    try:
        lanes = [f"gone-{n}" for n in range(10)]
        for n in range(2 * JOB_ROWS // len(lanes) + 1):
            await store.accept(event(n), plan([*lanes, "kept"]))

        killing = asyncio.ensure_future(store.kill_orphans({"kept", "ci-alerts"}, time.time()))
        await asyncio.sleep(0)  # its first job is queued
        accepted = await store.accept(event(10_000), plan(["ci-alerts"]))
        killed_meanwhile = killing.done()
        killed = await killing
        stats = await store.destination_stats()
    finally:
        await store.close()

    assert not accepted.duplicate and not killed_meanwhile
    assert killed == 2 * JOB_ROWS + len(lanes)
    assert stats["kept"].dead == 0 and stats["ci-alerts"].pending == 1
    assert sum(stats[lane].dead for lane in lanes) == killed


async def test_reports_answer_while_the_file_is_locked_for_writing(tmp_path: Path) -> None:
    """The status page and /metrics read on a connection of their own, not in the writer's
    transactions: a report never waits for the writes, and the writes never wait for it."""
    path = tmp_path / "outbox.sqlite3"
    store = SqliteStore(path)
    await store.open(serving=True)
    try:
        await store.accept(event(1), plan(["ci-alerts"]))
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # holds the write lock, as a long write would
            try:
                counts, stats, events = await asyncio.wait_for(
                    asyncio.gather(
                        store.counts(), store.destination_stats(), store.recent_events(10)
                    ),
                    timeout=3.0,
                )
            finally:
                other.execute("ROLLBACK")
    finally:
        await store.close()

    assert counts["pending"] == 1 and stats["ci-alerts"].pending == 1
    assert [e.build_id for e in events] == [1]


def test_the_status_pages_reads_take_the_indexes_not_the_table(tmp_path: Path) -> None:
    """/metrics and the status page read these at every scrape and refresh: a plan that
    scans the deliveries table (its sent deliveries are most of it) reads it all each time."""
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.sqlite3")) as connection:
        migrate(connection)
        stats, counts = (
            [detail for *_, detail in connection.execute("EXPLAIN QUERY PLAN " + query)]
            for query in (DESTINATION_STATS, STATE_COUNTS)
        )
        chart = [
            detail
            for *_, detail in connection.execute("EXPLAIN QUERY PLAN " + HOURLY_EVENTS, (0, 1))
        ]
        listed = {
            state: [
                detail
                for *_, detail in connection.execute(
                    "EXPLAIN QUERY PLAN " + listing(state), (None, 50, state)
                )
            ]
            for state in ("pending", "dead")
        }

    assert [detail for detail in stats if "deliveries" in detail] == [
        "SCAN deliveries USING INDEX deliveries_lane",
        "SEARCH deliveries USING INDEX deliveries_done (state=?)",
    ]
    assert [detail for detail in counts if "deliveries" in detail] == [
        "SCAN deliveries USING INDEX deliveries_lane",
        "SCAN deliveries USING COVERING INDEX deliveries_done",
    ]
    assert chart[0].startswith("SEARCH events USING COVERING INDEX events_received")
    assert listed["pending"][0] == "SCAN d USING INDEX deliveries_lane"
    assert listed["dead"][0] == "SEARCH d USING INDEX deliveries_done (state=?)"


async def test_recent_events_come_newest_first_with_their_deliveries(store: Store) -> None:
    for n in range(4):
        await store.accept(event(n), plan(["ci-alerts", "audit"]))

    events = await store.recent_events(2)
    assert [e.build_id for e in events] == [3, 2]
    assert [d.destination for d in events[0].deliveries] == ["ci-alerts", "audit"]
    assert [e.build_id for e in await store.recent_events(10, build_id=1)] == [1]
    assert await store.recent_events(10, factory="someone-else") == []
    assert await store.recent_events(10, factory="someone-else", build_id=1) == []
    assert [e.build_id for e in await store.recent_events(10, "andy-corp", 2)] == [2]
    assert [e.build_id for e in await store.recent_events(2, "andy-corp")] == [3, 2]
    assert [e.build_id for e in await store.recent_events(10, "andy-corp")] == [3, 2, 1, 0]


async def test_hourly_activity_has_every_hour(store: Store) -> None:
    since = time.time() - 3 * 3600
    await store.accept(event(1, at=since + 10), plan(["ci-alerts"]))
    await store.accept(event(2, at=since + 20, status="PASSED"), plan([]))
    await store.accept(event(3, at=since + 2 * 3600 + 5), plan(["ci-alerts"]))

    hours = await store.hourly_activity(since, 3)

    assert [(h.events, h.failed_builds) for h in hours] == [(2, 1), (0, 0), (1, 1)]
    assert hours[1].start == pytest.approx(since + 3600)


async def test_a_closed_store_is_unavailable(backend: Backend) -> None:
    """What /readyz and the intake's 503 rely on."""
    closed = backend.make()
    await closed.open(serving=True)
    await closed.ping()
    await closed.close()

    with pytest.raises(StoreUnavailable):
        await closed.ping()
    with pytest.raises(StoreUnavailable):
        await closed.accept(event(1), plan(["ci-alerts"]))


async def test_whatever_fails_inside_a_store_call_is_unavailable(store: Store) -> None:
    """The intake answers 503 for a StoreUnavailable and would answer 500 for anything
    else: so whatever fails inside a call (the driver, SQLite, or here the routing the
    store runs for the new event's deliveries) comes out as StoreUnavailable, stores
    nothing, and leaves the store working."""

    def broken(_change: Transition) -> list[tuple[str, tuple[str, ...]]]:
        raise RuntimeError("routing broke")

    with pytest.raises(StoreUnavailable, match="routing broke"):
        await store.accept(event(1), broken)

    accepted = await store.accept(event(1), plan(["ci-alerts"]))
    assert (accepted.duplicate, accepted.deliveries) == (False, 1)
    await store.ping()


# -- lanes ----------------------------------------------------------------------


async def test_sqlite_owns_every_lane(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "outbox.sqlite3")
    await store.open(serving=True)
    try:
        assert await store.own_lane("ci-alerts")
        assert await store.own_lane("audit")
    finally:
        await store.close()


async def test_sqlite_releases_claims_when_it_opens_again(tmp_path: Path) -> None:
    """One process serves a file: claims found when it starts are a dead process's."""
    path = tmp_path / "outbox.sqlite3"
    first = SqliteStore(path)
    await first.open(serving=True)
    t0 = time.time()
    await first.accept(event(1, at=t0), plan(["ci-alerts"]))
    taken = await claim_ids(first, "ci-alerts", t0)
    await first.close()

    second = SqliteStore(path)
    await second.open(serving=True)
    try:
        assert await claim_ids(second, "ci-alerts", t0) == taken
    finally:
        await second.close()


# -- PostgreSQL: several replicas on one database ------------------------------


async def opened(url: str, count: int) -> list[PostgresStore]:
    stores = [PostgresStore(url) for _ in range(count)]
    await asyncio.gather(*(s.open(serving=True) for s in stores))
    return stores


async def test_replicas_starting_together_create_the_schema_once(postgres_url: str) -> None:
    stores = await opened(postgres_url, 5)
    try:
        accepted = await asyncio.gather(*(s.accept(event(1), plan(["a"])) for s in stores))
        assert [a.duplicate for a in accepted].count(False) == 1
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    connection = await asyncpg.connect(postgres_url)
    try:
        versions = await connection.fetch("SELECT version FROM schema_version ORDER BY 1")
        assert [v for (v,) in versions] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await connection.close()


async def test_a_schema_newer_than_the_bridge_is_refused(postgres_url: str) -> None:
    [store] = await opened(postgres_url, 1)
    await store.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("INSERT INTO schema_version (version) VALUES (99)")
    finally:
        await connection.close()

    with pytest.raises(StoreUnavailable, match=r"version 99.*upgrade jobserv-bridge"):
        await PostgresStore(postgres_url).open(serving=True)


async def test_replicas_accepting_the_same_events_store_each_once(postgres_url: str) -> None:
    stores = await opened(postgres_url, 3)
    try:
        results = await asyncio.gather(
            *(stores[i % 3].accept(event(n), plan(["a", "b"])) for n in range(30) for i in range(3))
        )
    finally:
        await asyncio.gather(*(s.close() for s in stores))

    assert sum(not r.duplicate for r in results) == 30
    [store] = await opened(postgres_url, 1)
    try:
        assert await store.counts() == {"pending": 60, "sent": 0, "dead": 0}
    finally:
        await store.close()


def rows_filtered_out(plan: dict[str, Any]) -> int:
    """The rows an EXPLAIN ANALYZE plan read and threw away, over all its nodes."""
    own = int(plan.get("Rows Removed by Filter", 0)) * int(plan.get("Actual Loops", 1))
    return own + sum(rows_filtered_out(child) for child in plan.get("Plans", []))


async def test_a_claim_reads_only_its_lane_whatever_the_statistics(postgres_url: str) -> None:
    """Statistics taken while the lanes were full (every delivery pending), then the lanes
    drained: a claim must still go straight to its lane's head, not walk every delivery
    sent before it (each claim then as slow as the table is long, until the next ANALYZE)."""
    lanes = [f"chat-{n}" for n in range(10)]
    [store] = await opened(postgres_url, 1)
    connection = await asyncpg.connect(postgres_url)
    try:
        t0 = time.time()
        for first in range(0, 600, 100):
            await asyncio.gather(
                *(store.accept(event(n, at=t0), plan(lanes)) for n in range(first, first + 100))
            )
        await connection.execute("ANALYZE deliveries")
        await connection.execute(
            "UPDATE deliveries d SET state = 'sent' FROM events e"
            " WHERE e.id = d.event_id AND e.build_id < 595"
        )

        # EXPLAIN ANALYZE runs the claim: its hold is rolled back.
        values = {"$1": "'chat-3'", "$2": "32", "$3": "'{1,2,3}'", "$4": f"{t0}", "$5": f"{t0}"}
        claim_sql = _CLAIM
        for parameter, value in values.items():
            claim_sql = claim_sql.replace(parameter, value)
        explaining = connection.transaction()
        await explaining.start()
        explained = await connection.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + claim_sql)
        await explaining.rollback()
        claim = await store.claim("chat-3", t0, 32, LEASE)
    finally:
        await connection.close()
        await store.close()

    assert sorted(d.build_id for d in claim.deliveries) == list(range(595, 600))
    assert rows_filtered_out(json.loads(explained)[0]["Plan"]) < 100


async def test_racing_claims_take_disjoint_deliveries_from_the_head(postgres_url: str) -> None:
    stores = await opened(postgres_url, 3)
    try:
        t0 = time.time()
        for n in range(40):
            await stores[0].accept(event(n, at=t0), plan(["ci-alerts"]))
        order = [r.id for r in reversed(await stores[0].list_deliveries(limit=100))]
        for round_ in range(5):
            now = t0 + round_ * (LEASE + 1)  # each round, every earlier claim has expired
            claims = await asyncio.gather(*(claim_ids(s, "ci-alerts", now, 8) for s in stores))
            winners = [c for c in claims if c]
            # One claimer holds the head; any other took nothing rather than rows behind it.
            # The winner takes the front of the lane, as far as no rival had locked it.
            assert len(winners) == 1
            assert winners[0] == order[: len(winners[0])]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_replicas_share_the_history_and_the_threads(postgres_url: str) -> None:
    one, other = await opened(postgres_url, 2)
    try:
        await one.accept(event(41), plan(["ci-alerts"]))
        again = await other.accept(event(42), plan(["ci-alerts"]))
        await one.set_thread("ci-alerts", "andy-corp", "platform-devel", "1700000000.000100")

        assert again.transition is not None and again.transition.since == 41
        thread = await other.thread("ci-alerts", "andy-corp", "platform-devel")
        assert thread == "1700000000.000100"
    finally:
        await one.close()
        await other.close()


async def test_one_triggers_events_are_accepted_one_at_a_time(postgres_url: str) -> None:
    """Each failed build names the newest earlier build it saw (`previous`): that one came
    before it, and every build between them came after it. Taken one at a time, these
    "comes before" facts have no cycle, whatever the replicas did at once."""
    stores = await opened(postgres_url, 3)
    try:
        accepted = await asyncio.gather(
            *(stores[n % 3].accept(event(n), plan([])) for n in range(1, 41))
        )
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    edges: dict[int, set[int]] = {n: set() for n in range(1, 41)}
    for n, result in enumerate(accepted, start=1):
        assert result.transition is not None
        previous = result.transition.previous
        if previous is not None:
            edges[previous].add(n)
        for unseen in range((previous or 0) + 1, n):
            edges[n].add(unseen)
    incoming = {n: sum(n in targets for targets in edges.values()) for n in edges}
    ready = [n for n, count in incoming.items() if count == 0]
    ordered = 0
    while ready:
        n = ready.pop()
        ordered += 1
        for m in edges[n]:
            incoming[m] -= 1
            if incoming[m] == 0:
                ready.append(m)
    assert ordered == len(edges), "no one-at-a-time order explains what the builds saw"


async def test_a_store_of_an_older_version_is_migrated_when_opened(postgres_url: str) -> None:
    connection = await asyncpg.connect(postgres_url)
    try:
        # What the first schema left behind, with one pending delivery in it.
        await connection.execute(MIGRATIONS[0])
        await connection.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
            "INSERT INTO schema_version (version) VALUES (1);"
            "INSERT INTO events (key, factory, trigger, build_id, status, body, received_at)"
            " VALUES ('event-old', 'andy-corp', 'platform-devel', 40, 'FAILED', '{}', 1);"
            "INSERT INTO deliveries (event_id, destination, created_at, updated_at,"
            " next_attempt_at) VALUES (1, 'ci-alerts', 1, 1, 1)"
        )
    finally:
        await connection.close()

    [store] = await opened(postgres_url, 1)
    try:
        [old] = (await store.claim("ci-alerts", time.time(), 32, LEASE)).deliveries
        new = await store.accept(event(41), plan(["ci-alerts"]))
    finally:
        await store.close()

    assert (old.build_id, old.transition, old.mentions) == (40, None, ())
    assert kind(new.transition) == "first_failure"


async def test_a_lane_has_one_owner_at_a_time(postgres_url: str) -> None:
    first, second = await opened(postgres_url, 2)
    try:
        assert await first.own_lane("ci-alerts")
        assert await first.own_lane("ci-alerts")  # still held
        assert not await second.own_lane("ci-alerts")
        assert await second.own_lane("audit")  # lanes are independent

        await first.release_lane("ci-alerts")
        assert await second.own_lane("ci-alerts")
        assert not await first.own_lane("ci-alerts")
    finally:
        await first.close()
        await second.close()


# Takes the lane (when told to), claims every due delivery of it, says which, and
# waits to be killed.
_DOOMED_REPLICA = """
import asyncio, sys, time
from bridge.store.postgres import PostgresStore

async def main():
    store = PostgresStore(sys.argv[1])
    await store.open(serving=True)
    if sys.argv[2] == "own" and not await store.own_lane("ci-alerts"):
        raise SystemExit("lane not free")
    claim = await store.claim("ci-alerts", time.time(), 32, 60.0)
    print(" ".join(str(d.id) for d in claim.deliveries), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def claimed_by_a_killed_replica(url: str, *, own_lane: bool) -> list[int]:
    """The deliveries a replica claimed before `kill -9`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DOOMED_REPLICA,
        url,
        "own" if own_lane else "claim-only",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
    finally:
        process.kill()
        await process.wait()
    return [int(i) for i in line.split()]


async def test_a_killed_replicas_lane_and_claims_are_taken_over_at_once(
    postgres_url: str,
) -> None:
    [survivor] = await opened(postgres_url, 1)
    try:
        t0 = time.time()
        for n in range(3):
            await survivor.accept(event(n, at=t0), plan(["ci-alerts"]))

        taken = await claimed_by_a_killed_replica(postgres_url, own_lane=True)
        assert len(taken) == 3

        deadline = time.monotonic() + 5
        while not await survivor.own_lane("ci-alerts"):
            assert time.monotonic() < deadline, "the killed replica's lane was not freed"
            await asyncio.sleep(0.05)
        # Well before the claims' lease runs out.
        assert await claim_ids(survivor, "ci-alerts", time.time()) == taken
    finally:
        await survivor.close()


async def test_a_killed_replicas_claims_expire_with_their_lease(postgres_url: str) -> None:
    [survivor] = await opened(postgres_url, 1)
    try:
        t0 = time.time()
        await survivor.accept(event(1, at=t0), plan(["ci-alerts"]))

        taken = await claimed_by_a_killed_replica(postgres_url, own_lane=False)

        now = time.time()
        assert await claim_ids(survivor, "ci-alerts", now) == []
        assert await claim_ids(survivor, "ci-alerts", now + LEASE + 1) == taken
    finally:
        await survivor.close()


async def test_an_unreachable_server_is_unavailable_without_its_password() -> None:
    store = PostgresStore("postgresql://bridge:s3cret-password@127.0.0.1:1/bridge")

    with pytest.raises(StoreUnavailable) as failure:
        await store.open(serving=True)

    assert "127.0.0.1:1/bridge" in str(failure.value)
    assert "s3cret-password" not in str(failure.value)


async def test_a_claimed_delivery_carries_a_key_of_its_event_destination_and_id(
    backend: Backend, tmp_path: Path
) -> None:
    first = backend.make()
    await first.open(serving=True)
    try:
        await first.accept(event(1), plan(["ci-alerts", "audit"]))
        [old] = (await first.claim("ci-alerts", time.time(), 10, LEASE)).deliveries
        [other_lane] = (await first.claim("audit", time.time(), 10, LEASE)).deliveries
        await first.release([old.id])
        [again] = (await first.claim("ci-alerts", time.time(), 10, LEASE)).deliveries
    finally:
        await first.close()
    assert old.event_key == event(1).key
    assert again.key == old.key  # every try of one delivery: the same key
    assert other_lane.key != old.key
    # A new, empty store numbers its deliveries from 1 again: another event, another key.
    fresh = SqliteStore(tmp_path / "fresh.sqlite3")
    await fresh.open(serving=True)
    try:
        await fresh.accept(event(2), plan(["ci-alerts"]))
        [renumbered] = (await fresh.claim("ci-alerts", time.time(), 10, LEASE)).deliveries
    finally:
        await fresh.close()
    assert renumbered.id == old.id
    assert renumbered.key != old.key
