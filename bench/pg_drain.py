"""Draining a backlog on PostgreSQL (run by bench.replicas): the lanes after an outage.

While a chat is down its deliveries pile up, and autovacuum analyzes the table meanwhile: its
statistics then say that most deliveries are pending. When the chat comes back, the lanes
drain the backlog with those statistics, until the next ANALYZE. So the backlog here is
filled through the bridge's own `PostgresStore.accept`, then analyzed (as autovacuum would,
without waiting a minute for it), and only then does serve start, with every destination a
fast fake chat. The figure is the rate from the first arrival to the last, as bench.run's
drain on SQLite.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.common import (
    CpuUse,
    CpuWatch,
    bridge_config,
    fake_chat,
    fill_backlog,
    free_port,
    get_json,
    serve,
)
from bench.disk import SyncSetting


@dataclass
class DrainRun:
    deliveries: int  # in the backlog
    received: int  # by the fake chat
    sent: int  # marked sent in the store
    seconds: float  # first arrival to last
    filled_in: float  # seconds the backlog took to fill
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    def note(self) -> str:
        cpu_us = self.cpu.server * self.cpu.seconds / max(1, self.received) * 1e6
        return (
            f"{self.received:,} received in {self.seconds:.2f} s ({self.sent:,} marked sent);"
            f" statistics taken with all {self.deliveries:,} pending; backlog filled via"
            f" PostgresStore.accept in {self.filled_in:.1f} s; bridge {cpu_us:.0f} µs"
            f" CPU/delivery; {self.cpu.note()}"
        )


async def _analyze(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def _count_sent(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        sent = await connection.fetchval("SELECT count(*) FROM deliveries WHERE state = 'sent'")
        return int(sent)
    finally:
        await connection.close()


def measure_pg_drain(
    workdir: Path, sync: SyncSetting, url: str, *, events: int = 5_000, destinations: int = 10
) -> DrainRun:
    """Fill the (fresh) database at `url` with events x destinations pending deliveries,
    analyze it, then time serve's lanes draining it into fake chats."""
    deliveries = events * destinations
    started = time.monotonic()
    fill_backlog(url, events, destinations)
    filled_in = time.monotonic() - started
    asyncio.run(_analyze(url))
    port, chat_port = free_port(), free_port()
    config = bridge_config(
        workdir / "drain.toml",
        port=port,
        store=f"url = {json.dumps(url)}",
        chat_port=chat_port,
        destinations=destinations,
    )
    with fake_chat(chat_port, workdir) as chat, serve(config, port, workdir, sync) as bridge:
        watch = CpuWatch((bridge.pid, chat.pid))
        chat_stats = f"http://127.0.0.1:{chat_port}/_stats"
        deadline = time.monotonic() + 300.0
        stats = get_json(chat_stats)
        while stats["count"] < deliveries and time.monotonic() < deadline:
            time.sleep(0.1)
            stats = get_json(chat_stats)
        cpu = watch.stop()
    return DrainRun(
        deliveries,
        stats["count"],
        asyncio.run(_count_sent(url)),
        stats["last"] - stats["first"],
        filled_in,
        cpu,
    )
