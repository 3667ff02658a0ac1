"""The PostgreSQL intake's group commit (bridge/store/postgres_batches.py), on a real
PostgreSQL: accepts made at once go in one transaction, and give what the same accepts
made one by one give; a bad event fails only its own caller; replicas never deadlock."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.store import Accepted, NewEvent, StoreUnavailable
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_batches import MAX_BATCH
from bridge.store.postgres_pool import HISTORY_LOCK_CLASS
from bridge.transitions import STREAK_LIMIT, Transition
from tests.conftest import plan
from tests.postgres import fresh_database

Arrival = tuple[int, str, float | None]  # build_id, status, completed_at
_triggers = itertools.count()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        # A deadlock is found (and fails a test below) in 0.1 s rather than the default 1 s.
        connection = await asyncpg.connect(url)
        try:
            database = await connection.fetchval("SELECT current_database()")
            await connection.execute(f'ALTER DATABASE "{database}" SET deadlock_timeout = 100')
        finally:
            await connection.close()
        yield url


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url)
    await opened.open(serving=True)
    yield opened
    await opened.close()


def new_event(trigger: str, arrival: Arrival) -> NewEvent:
    build_id, status, completed = arrival
    return NewEvent(
        key=f"{trigger}-{build_id}-{status}-{completed}",
        factory="andy-corp",
        trigger=trigger,
        build_id=build_id,
        status=status,
        body=b'{"build_id": %d}' % build_id,
        received_at=time.time(),
        completed_at=completed,
    )


def news_to_alerts(change: Transition) -> list[tuple[str, tuple[str, ...]]]:
    """Every build to audit; news (a new failure, a fix) also to ci-alerts."""
    news = change.kind in ("first_failure", "fixed")
    return [("audit", ()), *([("ci-alerts", ("<@U1>",))] if news else [])]


def answered(results: Sequence[Accepted]) -> list[tuple[object, ...]]:
    """The answers, each event named by the first answer that stored it."""
    first: dict[int, int] = {}
    return [
        (
            first.setdefault(r.event_id, n),
            r.duplicate,
            r.deliveries,
            r.destinations,
            r.transition,
        )
        for n, r in enumerate(results)
    ]


async def stored(url: str, trigger: str) -> dict[str, Any]:
    """What the database holds of the triggers named `trigger` (a LIKE pattern): their
    events' transitions, their deliveries, their builds (each trigger named by its last
    character), and in how many transactions their events were written."""
    connection = await asyncpg.connect(url)
    try:
        events = await connection.fetch(
            "SELECT id, right(trigger, 1), build_id, status, transition::text FROM events"
            " WHERE trigger LIKE $1 ORDER BY id",
            trigger,
        )
        deliveries = await connection.fetch(
            "SELECT right(e.trigger, 1), e.build_id, e.status, d.destination, d.state,"
            " d.mentions::text FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE e.trigger LIKE $1 ORDER BY d.id",
            trigger,
        )
        builds = await connection.fetch(
            "SELECT build_id, status, completed_at, right(trigger, 1) FROM builds"
            " WHERE trigger LIKE $1 ORDER BY right(trigger, 1), build_id",
            trigger,
        )
        transactions = await connection.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM events WHERE trigger LIKE $1", trigger
        )
    finally:
        await connection.close()
    return {
        "events": [tuple(r)[1:] for r in events],
        "deliveries": [tuple(r) for r in deliveries],
        "builds": [tuple(r) for r in builds],
        "transactions": transactions,
    }


async def one_by_one(store: PostgresStore, events: Sequence[NewEvent]) -> list[Accepted]:
    return [await store.accept(e, news_to_alerts) for e in events]


async def all_at_once(store: PostgresStore, events: Sequence[NewEvent]) -> list[Accepted]:
    return list(await asyncio.gather(*(store.accept(e, news_to_alerts) for e in events)))


async def compare_with_one_by_one(
    store: PostgresStore,
    url: str,
    arrivals: Sequence[tuple[int, Arrival]],
    batches: int = 1,
    before: Sequence[tuple[int, Arrival]] = (),
) -> None:
    """Each arrival: which of a few triggers, and its build; `before`, arrivals stored one by
    one first (in as many transactions)."""
    alone, together = f"alone-{next(_triggers)}", f"together-{next(_triggers)}"
    for name in (alone, together):
        await one_by_one(store, [new_event(f"{name}-{t}", a) for t, a in before])
    expected = await one_by_one(store, [new_event(f"{alone}-{t}", a) for t, a in arrivals])
    results = await all_at_once(store, [new_event(f"{together}-{t}", a) for t, a in arrivals])

    assert answered(results) == answered(expected)
    mine, theirs = await stored(url, f"{together}-%"), await stored(url, f"{alone}-%")
    stored_before = set(before)
    anything_new = any(arrival not in stored_before for arrival in arrivals)
    assert mine["transactions"] == len(stored_before) + (batches if anything_new else 0)
    assert {k: v for k, v in mine.items() if k != "transactions"} == {
        k: v for k, v in theirs.items() if k != "transactions"
    }


arrival = st.tuples(
    st.integers(min_value=0, max_value=2),  # one of three triggers
    st.tuples(
        st.integers(min_value=1, max_value=6),
        st.sampled_from(["FAILED", "PASSED"]),
        st.sampled_from([None, 100.0, 200.0]),
    ),
)
arrivals = st.lists(arrival, min_size=2, max_size=30)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(arrivals=arrivals, before=st.lists(arrival, max_size=6))
async def test_accepts_at_once_give_what_accepts_one_by_one_give(
    store: PostgresStore,
    postgres_url: str,
    arrivals: list[tuple[int, Arrival]],
    before: list[tuple[int, Arrival]],
) -> None:
    """Also on builds stored before: a batch decides the builds above them from them."""
    await compare_with_one_by_one(store, postgres_url, arrivals, before=before)


async def test_a_streak_in_any_arrival_order_is_what_it_is_one_by_one(
    store: PostgresStore, postgres_url: str
) -> None:
    builds: list[Arrival] = [(n, "FAILED" if n % 5 else "PASSED", None) for n in range(1, 31)]
    rng = random.Random(12)
    for _ in range(5):
        order = rng.sample(builds, len(builds))
        await compare_with_one_by_one(store, postgres_url, [(0, b) for b in order])


async def test_a_streak_longer_than_its_count_in_order_is_what_it_is_one_by_one(
    store: PostgresStore, postgres_url: str
) -> None:
    """Builds in order are decided in a batch from the batch's own earlier builds, the
    streak's length counted up to STREAK_LIMIT there too ("1000+ failed builds")."""
    streak = [(n, "FAILED", None) for n in range(1, STREAK_LIMIT + 6)]
    builds: list[Arrival] = [*streak, (STREAK_LIMIT + 6, "PASSED", None)]
    batches = -(-len(builds) // MAX_BATCH)
    await compare_with_one_by_one(store, postgres_url, [(0, b) for b in builds], batches)


async def test_builds_in_order_then_late_ones_in_one_batch_are_what_they_are_one_by_one(
    store: PostgresStore, postgres_url: str
) -> None:
    """In order for a while (decided together), then late, repeated and re-run builds
    (each read from the store in turn), over two triggers, on builds stored before."""
    before: list[tuple[int, Arrival]] = [(0, (n, "FAILED", None)) for n in (1, 2)]
    in_order = [
        (t, (n, "FAILED" if n % 4 else "PASSED", None)) for n in range(3, 9) for t in (0, 1)
    ]
    late = [(0, (5, "PASSED", 300.0)), (1, (2, "FAILED", None)), (0, (9, "FAILED", None))]
    await compare_with_one_by_one(
        store, postgres_url, [*in_order, *late, in_order[3]], before=before
    )


async def test_a_repeat_inside_a_batch_answers_with_the_first(
    store: PostgresStore, postgres_url: str
) -> None:
    before = await store.accept(new_event("t", (1, "FAILED", None)), plan(["a"]))
    events = [new_event("t", (n, "FAILED", None)) for n in (2, 2, 1, 3, 2, 1)]

    results = await asyncio.gather(*(store.accept(e, plan(["a", "b"])) for e in events))

    two, again, one, three, twice, once_more = results
    assert (two.duplicate, two.deliveries, three.duplicate) == (False, 2, False)
    assert [(r.event_id, r.deliveries, r.duplicate) for r in (again, twice)] == [
        (two.event_id, 2, True)
    ] * 2
    assert [(r.event_id, r.deliveries, r.duplicate) for r in (one, once_more)] == [
        (before.event_id, 1, True)
    ] * 2
    assert await store.counts() == {"pending": 5, "sent": 0, "dead": 0}
    assert (await stored(postgres_url, "t"))["transactions"] == 2


async def refuse(url: str, table: str, column: str, value: str) -> None:
    """Make the database refuse a row of `table` whose `column` is `value`."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"""
            CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.{column} = '{value}' THEN RAISE EXCEPTION 'refused for the test'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON {table}
                FOR EACH ROW EXECUTE FUNCTION refuse_{table}();
            """)
    finally:
        await connection.close()


@pytest.mark.parametrize("where", ["events", "deliveries"])
async def test_an_event_the_database_refuses_fails_only_its_own_accept(
    store: PostgresStore, postgres_url: str, where: str
) -> None:
    builds = [new_event("t", (n, "FAILED", None)) for n in range(1, 9)]
    if where == "events":  # refused as the batch inserts its events
        await refuse(postgres_url, "events", "key", builds[3].key)
    else:  # refused in the middle of the batch, after the events before it are recorded
        await refuse(postgres_url, "deliveries", "destination", "refused")
    plans = [plan(["refused" if n == 3 else "a"]) for n in range(len(builds))]

    results = await asyncio.gather(
        *(store.accept(e, p) for e, p in zip(builds, plans, strict=True)),
        return_exceptions=True,
    )

    assert isinstance(results[3], StoreUnavailable)
    good = [r for n, r in enumerate(results) if n != 3]
    assert all(isinstance(r, Accepted) and not r.duplicate for r in good)
    # Each of the others is stored, seeing the ones before it (and not the refused one).
    streak = [(r.transition.since, r.transition.failed_count) for r in good if r.transition]
    assert streak == [(1, n) for n in range(1, 8)]
    assert await store.counts() == {"pending": 7, "sent": 0, "dead": 0}


async def test_a_caller_that_goes_away_leaves_the_batch_to_the_others(
    store: PostgresStore, postgres_url: str
) -> None:
    builds = [new_event("t", (n, "FAILED", None)) for n in range(1, 11)]
    callers = [asyncio.create_task(store.accept(e, plan(["a"]))) for e in builds]
    await asyncio.sleep(0)  # each caller is waiting for the batch
    callers[0].cancel()
    callers[5].cancel()

    results = await asyncio.gather(*callers, return_exceptions=True)

    assert [isinstance(r, asyncio.CancelledError) for r in results] == [
        n in (0, 5) for n in range(10)
    ]
    # At least once, as an accept cut short: the two are stored with the others.
    assert await store.counts() == {"pending": 10, "sent": 0, "dead": 0}
    assert (await stored(postgres_url, "t"))["transactions"] == 1
    # And the store goes on.
    later = await store.accept(new_event("t", (11, "FAILED", None)), plan(["a"]))
    assert later.transition is not None and later.transition.failed_count == 11


async def waiting_for_locks(connection: Any, count: int) -> None:
    """Until `count` transactions wait for an advisory lock (30 s at most)."""
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    deadline = time.monotonic() + 30
    while await connection.fetchval(query) < count:
        assert time.monotonic() < deadline, "the replicas never waited for the held lock"
        await asyncio.sleep(0.02)


async def test_replicas_batching_the_same_triggers_in_opposite_orders_never_deadlock(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    one, other = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await asyncio.gather(one.open(serving=True), other.open(serving=True))
    triggers = [f"trigger-{n}" for n in range(8)]
    holder = await asyncpg.connect(postgres_url)
    try:
        with caplog.at_level(logging.INFO, logger="bridge.store"):
            for round_ in range(4):
                builds = range(round_ * 4 + 1, round_ * 4 + 5)
                forth = [new_event(t, (b, "FAILED", None)) for t in triggers for b in builds]
                back = [new_event(t, (b, "FAILED", None)) for t in triggers[::-1] for b in builds]
                # One trigger's lock held meanwhile: both batches stop while taking theirs,
                # each holding what it took before; then they race for the rest.
                middle = ("andy-corp\n" + triggers[round_ + 2],)
                await holder.execute(
                    "SELECT pg_advisory_lock($1, hashtext($2))", HISTORY_LOCK_CLASS, *middle
                )
                batches = asyncio.gather(
                    *(one.accept(e, plan(["a"])) for e in forth),
                    *(other.accept(e, plan(["a"])) for e in back),
                )
                await waiting_for_locks(holder, 2)
                await holder.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", HISTORY_LOCK_CLASS, *middle
                )
                results = await batches
                assert sum(not r.duplicate for r in results) == len(forth)
    finally:
        await holder.close()
        await asyncio.gather(one.close(), other.close())

    # No batch was rolled back (a deadlock would have been, then retried one by one).
    assert not [r for r in caplog.records if "rolled back" in r.getMessage()]
    for trigger in triggers:
        history = await stored(postgres_url, trigger)
        assert [b for b, *_ in history["builds"]] == list(range(1, 17))
        assert history["transactions"] <= 8  # batches: two replicas, four rounds


async def test_a_batch_whose_connection_is_lost_fails_each_caller_as_unavailable(
    store: PostgresStore, postgres_url: str
) -> None:
    builds = [new_event("t", (n, "FAILED", None)) for n in range(1, 6)]
    holder = await asyncpg.connect(postgres_url)
    lock = ("SELECT pg_advisory_lock($1, hashtext($2))", HISTORY_LOCK_CLASS, "andy-corp\nt")
    try:
        await holder.execute(*lock)
        # All five go in one batch, which stops at the lock; then its connection is cut.
        callers = asyncio.gather(
            *(store.accept(e, plan(["a"])) for e in builds), return_exceptions=True
        )
        await waiting_for_locks(holder, 1)
        await holder.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE NOT granted")
        results = await asyncio.wait_for(callers, timeout=60)
    finally:
        await holder.close()

    # Each caller is told (a 503 at intake), none waits for a retry behind the lock.
    assert [type(r) for r in results] == [StoreUnavailable] * 5
    assert await store.counts() == {"pending": 0, "sent": 0, "dead": 0}
    later = await store.accept(builds[0], plan(["a"]))
    assert (later.duplicate, later.deliveries) == (False, 1)
