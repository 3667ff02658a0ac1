"""GET /healthz (the process serves) and GET /readyz (the store takes a write right now)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from bridge.config import Config
from bridge.server import READY_TIMEOUT, RUNTIME, create_app
from tests.conftest import (
    FAILED,
    fixture_body,
    generic_destination,
    make_config,
    quick_settings,
    signed_headers,
)
from tests.fakes.chat_server import FakeChat

Client = TestClient[Any, Any]
ClientFactory = Callable[[Any], Awaitable[Client]]


def config_for(folder: Path, fake: FakeChat) -> Config:
    routes = '[[routes]]\ndestinations = ["hook"]\n'
    return make_config(folder, quick_settings() + generic_destination(fake, "hook") + routes)


async def assert_unready(client: Client, *words: str) -> str:
    """/readyz is 503 with a one-line JSON `error` holding `words`; returns the error."""
    answer = await client.get("/readyz")
    assert answer.status == 503
    error = (await answer.json())["error"]
    assert isinstance(error, str)
    assert "\n" not in error
    assert all(word in error for word in words), error
    return error


async def wait_ready(client: Client, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while (answer := await client.get("/readyz")).status != 200:
        assert time.monotonic() < deadline, await answer.text()
        await asyncio.sleep(0.05)
    assert await answer.json() == {"status": "ready"}


async def test_ready_when_the_store_takes_a_write(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    config = config_for(tmp_path, fake_chat)
    client = await aiohttp_client(create_app(config))
    asked = time.time()

    answer = await client.get("/readyz")
    assert answer.status == 200
    assert await answer.json() == {"status": "ready"}
    # Ready means a write reached the file, seen here from another connection.
    with sqlite3.connect(config.store.path) as reader:
        [(written_at,)] = reader.execute("SELECT at FROM heartbeat").fetchall()
    assert written_at >= asked

    healthz = await client.get("/healthz")
    assert healthz.status == 200


async def test_unready_while_another_writer_holds_the_store(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    config = config_for(tmp_path, fake_chat)
    client = await aiohttp_client(create_app(config))
    await wait_ready(client)

    blocker = sqlite3.connect(config.store.path, timeout=5.0, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # nobody else can commit until we let go
        started = time.monotonic()
        await assert_unready(client, "store", f"{READY_TIMEOUT:g}s")
        waited = time.monotonic() - started
        assert READY_TIMEOUT - 0.1 <= waited < READY_TIMEOUT + 2
        # The process is alive all the same: liveness does not touch the store.
        assert (await client.get("/healthz")).status == 200
        # And Prometheus still gets its counters in time to see what is wrong.
        started = time.monotonic()
        scrape = await client.get("/metrics")
        assert scrape.status == 200
        assert "jobserv_bridge_webhooks_received" in await scrape.text()
        assert time.monotonic() - started < READY_TIMEOUT + 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    await wait_ready(client)
    # The bridge took up its work again: a webhook is stored and delivered.
    body = fixture_body(FAILED)
    assert (await client.post("/webhook", data=body, headers=signed_headers(body))).status == 202
    await fake_chat.wait_for(1, path="/hook")


async def test_unready_while_the_store_is_closed(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(create_app(config_for(tmp_path, fake_chat)))
    store = client.app[RUNTIME].store
    await wait_ready(client)

    await store.close()
    await assert_unready(client, "store is not writable")
    assert (await client.get("/healthz")).status == 200

    await store.open(serving=True)
    await wait_ready(client)
