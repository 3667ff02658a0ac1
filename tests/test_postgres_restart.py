"""A `jobserv-bridge serve` process whose PostgreSQL restarts under it.

`pg_ctl restart -m fast` cuts every connection and the server is gone for a moment:
whatever asyncpg raises then (refused connections, connections that died in the
middle of a query, asyncpg's own "another operation is in progress"), intake
answers 503 with JSON and /readyz 503, and once the server is back the bridge
takes webhooks and delivers without being restarted.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SECRET, signed_headers
from tests.fakes.chat_server import FakeChat
from tests.postgres import fresh_database, restart_postgres, restartable
from tests.serve import event_body, free_port, spawn_serve, wait_healthy

LOADERS = 4
EVENTS_PER_LOADER = 800  # event_body numbers stay below 3600 (its completion minute)
RESTARTS = 3
RECOVERY_DEADLINE = 60.0


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    restartable()
    async with fresh_database() as url:
        yield url


def serve_config(folder: Path, port: int, chat: FakeChat) -> Path:
    text = f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        shutdown_timeout = "3s"

        [store]
        url = "${{BRIDGE_STORE_URL}}"
        pool_size = 4

        [delivery]
        retry_initial = "0.05s"
        retry_max = "0.2s"
        poll_interval = "0.1s"

        [admin]
        enabled = false

        [[sources]]
        name = "docs-example"
        secret = "{SECRET}"
        factories = ["*"]

        [[destinations]]
        name = "alerts"
        type = "generic"
        url = "{chat.url("/alerts")}"
        timeout = "2s"
        rate_limit = 0

        [[routes]]
        notify = ["failed", "passed"]
        destinations = ["alerts"]
        """
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


class Answers:
    """Every answer the bridge gave: (what, status, JSON or None)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, object]] = []

    async def record(self, what: str, response: aiohttp.ClientResponse) -> int:
        body = await response.read()
        try:
            payload = json.loads(body) if response.content_type == "application/json" else None
        except ValueError:
            payload = None
        self.seen.append((what, response.status, payload))
        return response.status

    def wrong(self) -> list[tuple[str, int, object]]:
        """Answers that are not 200/202/503 with a JSON object, a 503 with its `error`."""
        return [
            (what, status, payload)
            for what, status, payload in self.seen
            if status not in (200, 202, 503)
            or not isinstance(payload, dict)
            or (status == 503 and not isinstance(payload.get("error"), str))
        ]


async def test_a_bridge_rides_out_a_postgres_restart(
    tmp_path: Path, postgres_url: str, fake_chat: FakeChat
) -> None:
    port = free_port()
    config = serve_config(tmp_path, port, fake_chat)
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        process = await spawn_serve(
            config,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            environment={"BRIDGE_STORE_URL": postgres_url},
        )

    def log() -> str:
        return (tmp_path / "stderr.txt").read_text(errors="replace")

    answers = Answers()
    loading = True

    async def load(session: aiohttp.ClientSession, first: int) -> None:
        for number in range(first, first + EVENTS_PER_LOADER):
            if not loading:
                return
            body = event_body(number)
            url = f"{base}/webhook"
            async with session.post(url, data=body, headers=signed_headers(body)) as response:
                await answers.record("webhook", response)

    async def probe(session: aiohttp.ClientSession) -> None:
        while loading:
            async with session.get(f"{base}/readyz") as response:
                await answers.record("readyz", response)
            await asyncio.sleep(0.02)

    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(process, session, base, time.monotonic() + 15, log)
            tasks = [
                asyncio.create_task(load(session, 1 + i * EVENTS_PER_LOADER))
                for i in range(LOADERS)
            ]
            tasks.append(asyncio.create_task(probe(session)))
            for _ in range(RESTARTS):
                await asyncio.sleep(0.5)
                await restart_postgres()
            await asyncio.sleep(0.5)
            loading = False
            await asyncio.gather(*tasks)

            statuses = Counter((what, status) for what, status, _ in answers.seen)
            assert answers.wrong() == [], f"{statuses}\n{log()}"
            assert statuses[("webhook", 202)] > 0

            # Back by itself: a new event is accepted and delivered, /readyz is ready.
            last = 1 + LOADERS * EVENTS_PER_LOADER
            body = event_body(last)
            deadline = time.monotonic() + RECOVERY_DEADLINE
            while True:
                url = f"{base}/webhook"
                async with session.post(url, data=body, headers=signed_headers(body)) as reply:
                    if await answers.record("webhook", reply) in (200, 202):
                        break
                assert time.monotonic() < deadline, f"intake not back:\n{log()}"
                await asyncio.sleep(0.2)
            while True:
                async with session.get(f"{base}/readyz") as reply:
                    if await answers.record("readyz", reply) == 200:
                        break
                assert time.monotonic() < deadline, f"/readyz not back:\n{log()}"
                await asyncio.sleep(0.2)
            assert answers.wrong() == [], log()

            deadline = time.monotonic() + RECOVERY_DEADLINE
            while not any(
                isinstance(r.json, dict) and r.json.get("build_id") == last
                for r in fake_chat.requests_to("/alerts")
            ):
                assert time.monotonic() < deadline, f"event {last} not delivered:\n{log()}"
                await asyncio.sleep(0.1)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()

    # One replica alone: no other replica ever held its lane.
    assert "taken over from another replica" not in log()
