"""The SQLite store on a disk that fills up or is read-only, and store calls that fail.

The disk is a small tmpfs that the test mounts (root only; skipped otherwise, with
the reason) and fills with a file: the store's writes then fail for real, with
ENOSPC from the kernel, until the test deletes the file. Read-only is the same
tmpfs remounted so.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.intake import new_event
from bridge.jobserv import parse_build
from bridge.server import RUNTIME, create_app
from bridge.store import Accepted, StoreUnavailable
from bridge.store.sqlite import SqliteStore
from bridge.transitions import Transition
from tests.conftest import (
    accept_body,
    generic_destination,
    make_config,
    plan,
    quick_settings,
    signed_headers,
)
from tests.fakes.chat_server import FakeChat
from tests.serve import event_body

Client = TestClient[Any, Any]
ClientFactory = Callable[[Any], Awaitable[Client]]

DISK_SIZE = "4m"
RECOVERY_DEADLINE = 15.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a tmpfs of DISK_SIZE of its own, unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        # Lazy: a store the test left open must not keep the mount (and the test) hanging.
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to its last byte with a file; delete the file to give the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return filler


@pytest.fixture
async def store_on_small_disk(small_disk: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(small_disk / "outbox.sqlite3")
    await store.open(serving=True)
    yield store
    await store.close()


async def test_a_failing_commit_fails_its_whole_batch_and_the_next_batch_commits(
    small_disk: Path, store_on_small_disk: SqliteStore
) -> None:
    store = store_on_small_disk
    await accept_body(store, event_body(1), ["alerts"])
    filler = fill(small_disk)

    # Queued together, these share a batch (or a few): each statement works in memory,
    # and the commit that would write them fails. Every caller hears of it.
    accepts = [accept_body(store, event_body(n), ["alerts"]) for n in range(2, 12)]
    failed = await asyncio.gather(*accepts, store.ping(), return_exceptions=True)
    assert all(isinstance(answer, StoreUnavailable) for answer in failed), failed
    assert all("full" in str(answer) for answer in failed), failed

    filler.unlink()
    accepts = [accept_body(store, event_body(n), ["alerts"]) for n in range(12, 22)]
    done = await asyncio.gather(*accepts, store.ping(), return_exceptions=True)
    assert not [answer for answer in done if isinstance(answer, BaseException)], done
    # The failed batch left nothing behind; the one before it and the next are whole.
    events = await store.recent_events(100)
    assert sorted(e.build_id for e in events) == [1, *range(12, 22)]
    assert await store.counts() == {"pending": 11, "sent": 0, "dead": 0}


async def test_a_job_that_fails_in_a_batch_fails_alone(tmp_path: Path) -> None:
    """A job's own failure (here the routing it runs) undoes that job only: the others
    queued with it are committed."""
    store = SqliteStore(tmp_path / "outbox.sqlite3")
    await store.open(serving=True)

    def broken(_change: Transition) -> list[tuple[str, tuple[str, ...]]]:
        raise RuntimeError("routing broke")

    try:
        bodies = [event_body(n) for n in range(1, 6)]
        events = [new_event(parse_build(body), body) for body in bodies]
        answers = await asyncio.gather(
            *(store.accept(e, broken if e.build_id == 3 else plan(["a"])) for e in events),
            return_exceptions=True,
        )
        assert isinstance(answers[2], StoreUnavailable)
        assert [type(a) for i, a in enumerate(answers) if i != 2] == [Accepted] * 4
        assert sorted(e.build_id for e in await store.recent_events(10)) == [1, 2, 4, 5]
    finally:
        await store.close()


@pytest.mark.parametrize("file_locked", [False, True], ids=["on the loop", "on the thread"])
async def test_a_failing_job_leaves_the_claims_of_its_batch_as_they_would_be_alone(
    tmp_path: Path, file_locked: bool
) -> None:
    """Jobs run without a savepoint each until one fails; then the batch runs again, each in
    its own. A lane's claim in that batch (claims live in memory) is undone with the rest
    and made again: what it claimed is returned, and stays claimed.

    A lane's jobs run on the event loop; while another writer holds the file (a CLI
    command, here) they wait on the writer thread instead, and the loop runs on."""
    path = tmp_path / "outbox.sqlite3"
    store = SqliteStore(path)
    await store.open(serving=True)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        for number in (1, 2):
            await accept_body(store, event_body(number), ["a"])
        now = time.time()
        if file_locked:
            other.execute("BEGIN IMMEDIATE")
        # Queued at once, so that they share a batch: a claim, then a job that fails.
        both = asyncio.gather(
            store.claim("a", now, 10, 60.0),
            store._call(lambda c: c.execute("SELECT * FROM no_such_table"), quick=True),
            return_exceptions=True,
        )
        if file_locked:
            began = time.monotonic()
            await asyncio.sleep(0.2)
            # Had the loop waited for the lock, it would still be waiting (the test holds
            # the lock until it runs again): the store's busy timeout is 10 s.
            assert time.monotonic() - began < 5.0
            assert not both.done()
            other.execute("COMMIT")
        claim, failed = await both
        assert isinstance(failed, StoreUnavailable), failed
        assert not isinstance(claim, BaseException), claim
        assert sorted(d.build_id for d in claim.deliveries) == [1, 2]
        assert (await store.claim("a", now, 10, 60.0)).deliveries == []  # still claimed
    finally:
        other.close()
        await store.close()


async def test_a_store_without_a_write_ahead_log_is_refused() -> None:
    """The writer syncs the write-ahead log before it answers a webhook: where SQLite
    cannot keep one (here, in memory), the store is refused rather than not durable."""
    store = SqliteStore(Path(":memory:"))
    with pytest.raises(StoreUnavailable, match="cannot keep a write-ahead log"):
        await store.open(serving=False)


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


async def test_a_read_only_store_folder_is_unavailable_naming_the_file(small_disk: Path) -> None:
    path = small_disk / "outbox.sqlite3"
    store = SqliteStore(path)
    await store.open(serving=True)
    await accept_body(store, event_body(1), ["alerts"])
    await store.close()

    remount(small_disk, "ro")
    try:
        with pytest.raises(StoreUnavailable, match=f"cannot open {path}"):
            await SqliteStore(path).open(serving=True)
    finally:
        remount(small_disk, "rw")

    reopened = SqliteStore(path)
    await reopened.open(serving=True)
    try:
        assert [e.build_id for e in await reopened.recent_events(10)] == [1]
    finally:
        await reopened.close()


def config_on(disk: Path, folder: Path, fake: FakeChat, store_wait: str = "0.3s") -> Any:
    routes = '[[routes]]\ndestinations = ["hook"]\n'
    store = f'[store]\npath = "{disk / "outbox.sqlite3"}"\n[admin]\nenabled = false\n'
    settings = quick_settings().replace("[server]\n", f'[server]\nstore_wait = "{store_wait}"\n')
    return make_config(folder, settings + store + generic_destination(fake, "hook") + routes)


async def post_event(client: Client, number: int) -> tuple[int, dict[str, Any]]:
    body = event_body(number)
    answer = await client.post("/webhook", data=body, headers=signed_headers(body))
    assert answer.content_type == "application/json", await answer.text()
    return answer.status, await answer.json()


async def delivered_builds(fake: FakeChat, count: int) -> list[int]:
    requests = await fake.wait_for(count, timeout=RECOVERY_DEADLINE, path="/hook")
    return [r.json["build_id"] for r in requests]


async def test_a_full_disk_is_a_503_until_space_returns(
    tmp_path: Path, small_disk: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(create_app(config_on(small_disk, tmp_path, fake_chat)))
    for number in (1, 2, 3):
        assert (await post_event(client, number))[0] == 202
    assert sorted(await delivered_builds(fake_chat, 3)) == [1, 2, 3]
    store = client.app[RUNTIME].store
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while (await store.counts())["sent"] < 3:  # the outcomes are recorded
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    filler = fill(small_disk)
    # Each is tried again for `store_wait` (0.3 s here), then answered 503.
    answers = await asyncio.gather(*(post_event(client, n) for n in range(4, 12)))
    for status, payload in answers:
        assert status == 503
        assert payload == {"error": "the event could not be stored; try again"}
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "full" in (await ready.json())["error"]
    assert (await client.get("/healthz")).status == 200

    filler.unlink()
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while (await client.get("/readyz")).status != 200:
        assert time.monotonic() < deadline, "not ready again after the space came back"
        await asyncio.sleep(0.05)
    assert (await post_event(client, 12))[0] == 202
    assert (await delivered_builds(fake_chat, 4))[3] == 12
    # Nothing accepted before the disk filled was lost, nor sent twice, nor unrecorded.
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while (counts := await store.counts()) != {"pending": 0, "sent": 4, "dead": 0}:
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.05)
    assert sorted(e.build_id for e in await store.recent_events(100)) == [1, 2, 3, 12]
    assert sorted(r.json["build_id"] for r in fake_chat.requests_to("/hook")) == [1, 2, 3, 12]


async def test_a_webhook_waits_for_the_store_within_store_wait(
    tmp_path: Path, small_disk: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    """JobServ tries an error answer four times within about 7 s, then never again, but waits
    for an answer as long as it takes: a webhook that comes while the disk is full is held,
    and answered 202 once the space returns within `store_wait`."""
    config = config_on(small_disk, tmp_path, fake_chat, store_wait="20s")
    client = await aiohttp_client(create_app(config))
    assert (await post_event(client, 1))[0] == 202

    filler = fill(small_disk)
    posting = asyncio.create_task(post_event(client, 2))
    await asyncio.sleep(1.0)
    assert not posting.done()  # held, the store tried again and again
    assert (await client.get("/readyz")).status == 503

    filler.unlink()
    status, answer = await asyncio.wait_for(posting, RECOVERY_DEADLINE)
    assert status == 202
    assert answer["deliveries"] == 1
    assert sorted(await delivered_builds(fake_chat, 2)) == [1, 2]
