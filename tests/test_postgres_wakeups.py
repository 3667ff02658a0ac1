"""Replicas wake each other's lanes through PostgreSQL (bridge.store.postgres_wakeups): two
stores on one real database, as two replicas have them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.store import StoreUnavailable
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_wakeups import CHANNEL, PAYLOAD_LIMIT, payloads
from tests.conftest import jobserv_source, make_config
from tests.postgres import fresh_database
from tests.test_delivery import make_dispatcher


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[str, PostgresStore, PostgresStore]]:
    async with fresh_database() as url:
        first, second = PostgresStore(url), PostgresStore(url)
        await first.open(serving=True)
        await second.open(serving=True)
        try:
            yield url, first, second
        finally:
            await first.close()
            await second.close()


async def listening(store: PostgresStore, lane: str = "alerts") -> list[str]:
    """What `store` hears from now on; it listens on the connection that holds `lane`."""
    heard: list[str] = []
    store.on_queued(heard.extend)
    assert await store.own_lane(lane)
    return heard


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


async def heard_within(seconds: float, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "not heard in time"
        await asyncio.sleep(0.01)


async def test_a_replica_hears_which_lanes_another_queued_for_and_not_its_own_words(
    replicas: tuple[str, PostgresStore, PostgresStore],
) -> None:
    _, first, second = replicas
    heard_first = await listening(first, "audit")
    heard_second = await listening(second)

    odd = 'a "name"\nwith a line break, é'
    first.announce_queued(["alerts", odd])
    first.announce_queued(["alerts"])  # said in the meantime: said once more at most
    await heard_within(5, lambda: len(set(heard_second)) == 2)
    assert set(heard_second) == {"alerts", odd}
    await asyncio.sleep(0.3)
    assert heard_first == []


async def test_many_lanes_go_in_payloads_that_postgresql_takes(
    replicas: tuple[str, PostgresStore, PostgresStore],
) -> None:
    _, first, second = replicas
    heard = await listening(second)
    names = [f"destination-{i:04d}-" + "x" * 80 for i in range(300)]
    too_long = "y" * PAYLOAD_LIMIT  # left to its owner's poll

    first.announce_queued([*names, too_long])
    await heard_within(5, lambda: len(heard) >= len(names))
    assert sorted(heard) == names
    assert all(len(p) <= PAYLOAD_LIMIT for p in payloads("token", names))
    assert len(payloads("token", names)) > 1


LANES_CONNECTION = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name LIKE 'jobserv-bridge lanes %'"
)


async def test_a_replica_listens_again_once_its_lanes_connection_is_back(
    replicas: tuple[str, PostgresStore, PostgresStore],
) -> None:
    url, first, second = replicas
    heard = await listening(second)
    async with connected(url) as admin:
        old = await admin.fetchval(LANES_CONNECTION)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", old)
        deadline = time.monotonic() + 10
        while True:  # until the store has seen it go and holds the lane on a new one
            assert time.monotonic() < deadline, "the lanes' connection did not come back"
            with contextlib.suppress(StoreUnavailable):
                owned = await second.own_lane("alerts")
                if owned and await admin.fetchval(LANES_CONNECTION) not in (None, old):
                    break
            await asyncio.sleep(0.05)

    first.announce_queued(["alerts"])
    await heard_within(5, lambda: heard == ["alerts"])


async def test_what_others_say_on_the_channel_wakes_nothing(
    replicas: tuple[str, PostgresStore, PostgresStore],
) -> None:
    url, _, second = replicas
    heard = await listening(second)
    async with connected(url) as stranger:
        for payload in ("not json", "[]", "42", json.dumps(["token", 7, None, "alerts"])):
            await stranger.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
    await heard_within(5, lambda: heard == ["alerts"])


async def test_a_dispatcher_tells_of_the_lanes_it_does_not_own_and_wakes_only_its_own(
    replicas: tuple[str, PostgresStore, PostgresStore], tmp_path: Path
) -> None:
    """What a replica says covers the lanes it does not own; what it hears wakes the lanes
    it owns, not those of a third replica (which would only ask for a lock it cannot get)."""
    _, first, second = replicas
    config = make_config(
        tmp_path,
        jobserv_source()
        + "".join(
            f'[[destinations]]\nname = "{name}"\ntype = "generic"\n'
            f'url = "http://127.0.0.1:9/{name}"\n'
            for name in ("alerts", "audit")
        ),
    )
    heard_first = await listening(first, "audit")  # the other replica owns "audit"
    async with aiohttp.ClientSession() as session:
        dispatcher = make_dispatcher(config, second, session)  # its lanes not started
        lanes = dispatcher.lanes
        assert await lanes["alerts"].owner.own()
        assert not await lanes["audit"].owner.own()

        dispatcher.wake(["alerts", "audit"])  # as an accepted event does
        await heard_within(5, lambda: heard_first == ["audit"])
        woken = {name: lane.woken for name, lane in lanes.items()}

        first.announce_queued(["alerts", "audit"])
        await heard_within(5, lambda: lanes["alerts"].woken > woken["alerts"])
        await asyncio.sleep(0.3)
        assert lanes["audit"].woken == woken["audit"]
        assert heard_first == ["audit"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=3000), max_size=30))
def test_payloads_carry_every_name_that_fits_and_none_is_over_the_limit(names: list[str]) -> None:
    found = payloads("token", names)
    assert all(len(payload) <= PAYLOAD_LIMIT for payload in found)
    carried = [name for payload in found for name in json.loads(payload)[1:]]
    assert carried == [n for n in names if len(json.dumps(["token", n])) <= PAYLOAD_LIMIT]
    assert all(json.loads(payload)[0] == "token" for payload in found)
