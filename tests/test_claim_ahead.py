"""Claiming ahead: a lane claims its next batch while the last send of a batch is in flight,
so that a batch boundary does not wait for the store; the batch claimed ahead waits behind a
retried head and is given back at once when the lane stops or reloads.

Real stores (SQLite, PostgreSQL) and a fake chat that holds the last send of the first batch
(a Gate) until the test has seen, in the store, that the next batch was claimed meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bridge.chats import CHAT_TYPES, Chat
from bridge.claims import CLAIM_BATCH
from bridge.config import Config
from bridge.store import Store
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from tests.conftest import accept_body, make_config
from tests.conftest import generic_destination as generic
from tests.fakes.chat_server import FakeChat, Gate, Hang, Reply
from tests.postgres import fresh_database
from tests.test_delivery import (
    DELIVERY,
    build_body,
    build_ids,
    config_for,
    dispatching,
    wait_rows,
)
from tests.test_digest_serve import SLACK, numbers
from tests.test_outcome_batches import eventually, write_lock_held
from tests.test_store import LEASE

QUEUED = CLAIM_BATCH + 8  # a full first batch and a second one behind it
FIRST_BATCH = list(range(1, CLAIM_BATCH + 1))  # the build ids the lane's first claim takes
SECOND_BATCH = list(range(CLAIM_BATCH + 1, QUEUED + 1))
# Well below a claim's lease (the destination's timeout + 60 s): what is sent within this was
# not waiting for a lease to run out.
PROMPTLY = 10.0


class Outbox:
    """A serving store and, for PostgreSQL, its URL (to look at its rows directly)."""

    def __init__(self, store: Store, url: str | None) -> None:
        self.store = store
        self.url = url


@pytest.fixture(params=["sqlite", "postgres"])
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outbox]:
    if request.param == "sqlite":
        store: Store = SqliteStore(tmp_path / "outbox.sqlite3")
        await store.open(serving=True)
        yield Outbox(store, None)
        await store.close()
        return
    async with fresh_database() as url:
        store = PostgresStore(url)
        await store.open(serving=True)
        yield Outbox(store, url)
        await store.close()


async def queue(store: Store) -> list[int]:
    """QUEUED builds for destination "a", before its lane starts; their delivery ids."""
    for build_id in range(1, QUEUED + 1):
        await accept_body(store, build_body(build_id), ["a"])
    rows = await store.list_deliveries(destination="a", limit=QUEUED)
    return sorted(row.id for row in rows)


async def claimed_behind(outbox: Outbox, in_flight: int) -> bool:
    """Whether the deliveries behind `in_flight` (the lane's send in flight) are claimed."""
    if outbox.url is not None:
        connection = await asyncpg.connect(outbox.url)
        try:
            held = await connection.fetchval(
                "SELECT count(*) FROM deliveries WHERE destination = 'a' AND id > $1"
                " AND state = 'pending' AND claimed_until > $2",
                in_flight,
                time.time(),
            )
        finally:
            await connection.close()
        return bool(held)
    # SQLite keeps its claims in memory: a claim passing over the send in flight finds
    # nothing when another claim holds what is behind it (and gives back what it found).
    found = await outbox.store.claim("a", time.time(), QUEUED, LEASE, [in_flight])
    await outbox.store.release([delivery.id for delivery in found.deliveries])
    return not found.deliveries


async def claimed_pending(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM deliveries"
                " WHERE state = 'pending' AND claimed_until IS NOT NULL"
            )
        )
    finally:
        await connection.close()


def chats_for(config: Config, session: aiohttp.ClientSession) -> dict[str, Chat]:
    return {
        name: CHAT_TYPES[settings.type].create(settings, session)
        for name, settings in config.destinations.items()
    }


async def test_the_next_batch_is_claimed_during_the_last_send_and_waits_behind_its_retry(
    outbox: Outbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ids = await queue(outbox.store)
    last_of_first = ids[CLAIM_BATCH - 1]
    opened = asyncio.Event()
    async with FakeChat() as fake:
        # The first batch's last send is held, then answered 503: the lane must retry it.
        fake.script("/a", *[Reply()] * (CLAIM_BATCH - 1), Gate(opened, Reply(503, "busy")))
        config = config_for(tmp_path, generic(fake, "a", timeout="30s"))
        async with dispatching(config, outbox.store, session):
            await fake.wait_for(CLAIM_BATCH, path="/a")
            # Seen while that send is still in flight: the next batch is claimed already.
            await eventually(lambda: claimed_behind(outbox, last_of_first))
            opened.set()
            # The batch claimed ahead waited behind the retry and was given back at once,
            # not after its lease: everything is sent soon, in order.
            await wait_rows(outbox.store, "sent", QUEUED, timeout=PROMPTLY)
        retried = FIRST_BATCH[-1]
        assert build_ids(fake.requests_to("/a")) == [*FIRST_BATCH, retried, *SECOND_BATCH]


async def test_a_reload_gives_back_the_batch_claimed_ahead(
    outbox: Outbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ids = await queue(outbox.store)
    last_of_first = ids[CLAIM_BATCH - 1]
    async with FakeChat() as fake:
        fake.script("/a", *[Reply()] * (CLAIM_BATCH - 1), Hang())
        config = config_for(tmp_path, generic(fake, "a", timeout="30s"))
        async with dispatching(config, outbox.store, session) as dispatcher:
            await fake.wait_for(CLAIM_BATCH, path="/a")
            await eventually(lambda: claimed_behind(outbox, last_of_first))
            # The old lane is cancelled past the grace, its last send still in flight.
            await dispatcher.reconfigure(config, chats_for(config, session), grace=0.2)
            # The new lane sends that one again and the next batch at once (no lease).
            await wait_rows(outbox.store, "sent", QUEUED, timeout=PROMPTLY)
        hung = FIRST_BATCH[-1]
        assert build_ids(fake.requests_to("/a")) == [*FIRST_BATCH, hung, *SECOND_BATCH]


async def test_a_stop_leaves_nothing_claimed_for_the_next_process(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with fresh_database() as url:
        first = PostgresStore(url)
        await first.open(serving=True)
        ids = await queue(first)
        opened = asyncio.Event()
        async with FakeChat() as fake:
            fake.script("/a", *[Reply()] * (CLAIM_BATCH - 1), Gate(opened))
            config = config_for(tmp_path, generic(fake, "a", timeout="30s"))
            async with dispatching(config, first, session):
                await fake.wait_for(CLAIM_BATCH, path="/a")
                await eventually(lambda: claimed_behind(Outbox(first, url), ids[CLAIM_BATCH - 1]))
                opened.set()  # the lane stops as soon as that send ends
            await first.close()
            # Stopped with the next batch claimed ahead: that claim was given back.
            assert await claimed_pending(url) == 0

            second = PostgresStore(url)
            await second.open(serving=True)
            try:
                async with dispatching(config, second, session):
                    await wait_rows(second, "sent", QUEUED, timeout=PROMPTLY)
            finally:
                await second.close()
            assert build_ids(fake.requests_to("/a")) == [*FIRST_BATCH, *SECOND_BATCH]


async def test_a_claim_passes_over_the_lanes_sends_in_flight_and_takes_what_is_behind(
    outbox: Outbox,
) -> None:
    store = outbox.store
    ids = await queue(store)
    now = time.time()
    batch = [d.id for d in (await store.claim("a", now, CLAIM_BATCH, LEASE)).deliveries]
    assert batch == ids[:CLAIM_BATCH]
    for sent in batch[:-1]:
        store.note_sent(sent, now)
    # The batch's last one is in flight: an ordinary claim stops at it (the lane's order) ...
    assert (await store.claim("a", now, CLAIM_BATCH, LEASE)).deliveries == []
    # ... a claim made ahead passes over it and takes up to its limit behind it, in order.
    ahead = await store.claim("a", now, 5, LEASE, [batch[-1]])
    assert [d.id for d in ahead.deliveries] == ids[CLAIM_BATCH : CLAIM_BATCH + 5]
    rest = await store.claim("a", now, CLAIM_BATCH, LEASE, [batch[-1]])
    assert rest.deliveries == []  # the one claimed ahead holds the head behind it


async def test_a_lane_that_digests_under_a_rate_limit_does_not_claim_ahead(
    store: SqliteStore, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Such a lane waits for its rate limit before it claims, so that the claim gathers
    # what came meanwhile into one digest; a claim made ahead would send those one by one.
    for build_id in (1, 2, 3):
        await accept_body(store, build_body(build_id), ["ci"])
    opened = asyncio.Event()
    async with FakeChat() as fake:
        fake.script(SLACK, Gate(opened))
        destination = f"""
[[destinations]]
name = "ci"
type = "slack-webhook"
url = "{fake.url(SLACK)}"
timeout = "30s"
rate_limit = 0.5
burst = 1
digest_max = 2
"""
        config = config_for(tmp_path, destination)
        async with dispatching(config, store, session):
            await fake.wait_for(1, path=SLACK)  # builds 1 and 2, in one digest
            await accept_body(store, build_body(4), ["ci"])
            opened.set()
            await fake.wait_for(2, path=SLACK, timeout=PROMPTLY)  # build 3, two seconds on
            # Build 5 comes while the lane waits for its rate limit: it goes with build 4.
            await accept_body(store, build_body(5), ["ci"])
            await wait_rows(store, "sent", 5, timeout=PROMPTLY)
        assert [numbers(request) for request in fake.requests_to(SLACK)] == [[1, 2], [3], [4, 5]]


async def test_a_claim_ahead_cut_short_by_a_reload_is_given_back_when_it_ends(
    store: SqliteStore, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # The claim ahead is still on the writer thread (another connection holds the write
    # lock) when the lane is cancelled: whatever it takes must be given back once it ends.
    await queue(store)
    opened = asyncio.Event()
    async with FakeChat() as fake:
        fake.script("/a", *[Reply()] * (CLAIM_BATCH - 2), Gate(opened), Hang())
        config = config_for(tmp_path, generic(fake, "a", timeout="30s"))
        async with dispatching(config, store, session) as dispatcher:
            await fake.wait_for(CLAIM_BATCH - 1, path="/a")
            with write_lock_held(tmp_path / "outbox.sqlite3"):
                opened.set()  # the lane goes on to its batch's last send, and claims ahead
                await fake.wait_for(CLAIM_BATCH, path="/a")
                old_lanes = list(dispatcher.tasks)
                reloading = asyncio.ensure_future(
                    dispatcher.reconfigure(config, chats_for(config, session), grace=0.2)
                )
                await asyncio.wait(old_lanes, timeout=PROMPTLY)
                assert all(lane.done() for lane in old_lanes)
            await reloading
            await wait_rows(store, "sent", QUEUED, timeout=PROMPTLY)
        hung = FIRST_BATCH[-1]
        assert build_ids(fake.requests_to("/a")) == [*FIRST_BATCH, hung, *SECOND_BATCH]


# --- a drained lane ------------------------------------------------------------


async def test_a_claim_says_whether_it_took_all_that_is_due_in_the_lane(outbox: Outbox) -> None:
    store = outbox.store
    empty = await store.claim("a", time.time(), CLAIM_BATCH, LEASE)
    assert (empty.deliveries, empty.drained, empty.next_due) == ([], True, None)

    ids = await queue(store)
    first = await store.claim("a", time.time(), CLAIM_BATCH, LEASE)
    assert [d.id for d in first.deliveries] == ids[:CLAIM_BATCH]
    assert not first.drained  # more are pending behind the batch
    # Claimed ahead, passing over the first batch (in flight): the rest, all of it.
    rest = await store.claim("a", time.time(), CLAIM_BATCH, LEASE, ids[:CLAIM_BATCH])
    assert [d.id for d in rest.deliveries] == ids[CLAIM_BATCH:]
    assert rest.drained
    # Another claim stops at what is claimed: it cannot tell what lies behind.
    assert not (await store.claim("a", time.time(), CLAIM_BATCH, LEASE)).drained

    # A retry at the head: nothing is due before it, and the claim says when it is.
    now = time.time()
    for delivery_id in ids[:CLAIM_BATCH]:
        await store.mark_sent(delivery_id, now)
    await store.mark_retry(ids[CLAIM_BATCH], now + 30, "busy", now)
    await store.release(ids[CLAIM_BATCH + 1 :])
    held = await store.claim("a", now, CLAIM_BATCH, LEASE)
    assert (held.deliveries, held.drained, held.next_due) == ([], True, now + 30)


async def test_a_quiet_lane_claims_once_per_delivery_and_still_finds_what_nothing_woke_it_for(
    outbox: Outbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """After a claim that drained the lane, the lane does not claim again at once (it would
    find nothing): the next wake, or its poll interval, makes it look again."""
    store = outbox.store
    claims = 0
    claim = store.claim

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal claims
        claims += 1
        return await claim(*args, **kwargs)  # type: ignore[arg-type]

    store.claim = counted  # type: ignore[method-assign]
    async with FakeChat() as fake:
        text = DELIVERY.replace('poll_interval = "0.05s"', 'poll_interval = "1s"')
        text += generic(fake, "a") + '[[routes]]\nnotify = ["failed"]\ndestinations = ["a"]\n'
        async with dispatching(make_config(tmp_path, text), store, session) as dispatcher:
            await asyncio.sleep(0.1)  # the lane's first look, at an empty lane
            for build_id in (1, 2, 3):
                claims = 0
                await accept_body(store, build_body(build_id), ["a"])
                dispatcher.wake(["a"])  # as the intake does
                await fake.wait_for(build_id, path="/a")
                await asyncio.sleep(0.1)  # well within the poll interval
                assert claims == 1, "one claim took the delivery, and none followed at once"
            # Queued with no wake (as the CLI does): found within a poll interval.
            await accept_body(store, build_body(4), ["a"])
            await fake.wait_for(4, path="/a", timeout=PROMPTLY)
        assert build_ids(fake.requests_to("/a")) == [1, 2, 3, 4]
