"""202 received -> chat received: a fixed rate of webhooks, and when each message arrives.

A Python driver posts signed failed builds at a fixed rate (open loop: each POST is
started on its schedule, whatever the earlier ones do) to a bridge whose destinations
are paths of one fake chat process (bench/fake_chat.py --record), which notes when each
build reached each path. Latency = arrival - the time the driver received the 202, per
delivery; both processes read the same clock (time.time()). The first second is warm-up
and not counted.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import (
    SECRET,
    CpuUse,
    CpuWatch,
    bridge_config,
    fake_chat,
    free_port,
    get_json,
    percentile,
    serve,
    webhook_body,
)
from bench.disk import SyncSetting
from bridge.jobserv import sign

ARRIVAL_DEADLINE = 10.0  # seconds after the last POST for the last message to arrive
# How long a replica is given, once it answers, to take every lane (its first look at them).
LANES_TAKEN = 1.0


@dataclass(frozen=True)
class LatencyRun:
    rate: float
    destinations: int
    expected: int  # measured deliveries: events after the warm-up x destinations
    from_ack: list[float]  # ms, per delivery that arrived
    from_send: list[float]
    not_202: int
    cpu: CpuUse  # the bridge's, over the whole run

    @property
    def missing(self) -> int:
        return self.expected - len(self.from_ack)

    def p(self, fraction: float, values: list[float] | None = None) -> float:
        chosen = self.from_ack if values is None else values
        return percentile(chosen, fraction) if chosen else float("nan")

    def note(self) -> str:
        cpu_us = self.cpu.server * self.cpu.seconds / max(1, len(self.from_ack)) * 1e6
        return (
            f"{len(self.from_ack):,} deliveries of {self.expected // self.destinations:,} events"
            f" at {self.rate:g}/s to {self.destinations}; missing {self.missing},"
            f" non-202 {self.not_202}; p50 {self.p(0.5):.1f} ms, max {self.p(1.0):.1f} ms;"
            f" from the request sent: p99 {self.p(0.99, self.from_send):.1f} ms;"
            f" bridge {cpu_us:.0f} µs CPU/delivery, {self.cpu.note()}"
        )


def measure_latency(
    workdir: Path,
    sync: SyncSetting,
    store: Path | str,
    *,
    first_id: int,
    destinations: int = 1,
    rate: float = 200.0,
    seconds: float = 10.0,
    lanes_elsewhere: bool = False,
) -> LatencyRun:
    """Serve with `destinations` fake-chat destinations, post at `rate`, time every arrival.

    `store` is a SQLite file or the [store] table's body (see `bridge_config`).
    `lanes_elsewhere` (PostgreSQL): another replica, started first, owns every lane, so
    that each delivery is sent by a replica other than the one that took its webhook.
    """
    warmup = int(rate)
    ids = range(first_id, first_id + warmup + int(rate * seconds))
    chat_port, port = free_port(), free_port()
    config = bridge_config(
        workdir / "latency.toml",
        port=port,
        store=store,
        chat_port=chat_port,
        destinations=destinations,
    )
    with ExitStack() as stack:
        chat = stack.enter_context(fake_chat(chat_port, workdir, record=True))
        others = [chat.pid]
        if lanes_elsewhere:
            owner_port = free_port()
            owner_config = bridge_config(
                workdir / "latency-owner.toml",
                port=owner_port,
                store=store,
                chat_port=chat_port,
                destinations=destinations,
            )
            owner = stack.enter_context(serve(owner_config, owner_port, workdir, sync, "owner"))
            others.append(owner.pid)
            time.sleep(LANES_TAKEN)
        bridge = stack.enter_context(serve(config, port, workdir, sync))
        watch = CpuWatch((bridge.pid, *others))
        sent, acked, statuses = asyncio.run(_post(port, ids, rate))
        stats_url = f"http://127.0.0.1:{chat_port}/_stats"
        deadline = time.monotonic() + ARRIVAL_DEADLINE
        while get_json(stats_url)["count"] < len(ids) * destinations:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        cpu = watch.stop()
        arrivals = get_json(f"http://127.0.0.1:{chat_port}/_arrivals", timeout=30.0)
    from_ack: list[float] = []
    from_send: list[float] = []
    for by_build in arrivals.values():
        for build, arrived in by_build.items():
            build_id = int(build)
            if build_id in acked and build_id >= first_id + warmup:
                from_ack.append((arrived - acked[build_id]) * 1000)
                from_send.append((arrived - sent[build_id]) * 1000)
    return LatencyRun(
        rate=rate,
        destinations=destinations,
        expected=(len(ids) - warmup) * destinations,
        from_ack=from_ack,
        from_send=from_send,
        not_202=sum(status != 202 for status in statuses),
        cpu=cpu,
    )


async def _post(
    port: int, ids: range, rate: float
) -> tuple[dict[int, float], dict[int, float], list[int]]:
    signed = {i: (body, sign(SECRET, body)) for i in ids for body in [webhook_body(i)]}
    sent: dict[int, float] = {}
    acked: dict[int, float] = {}
    statuses: list[int] = []
    url = f"http://127.0.0.1:{port}/webhook"

    async def post(session: aiohttp.ClientSession, build_id: int) -> None:
        body, signature = signed[build_id]
        headers = {"Content-Type": "application/json", "X-JobServ-Sig": signature}
        sent[build_id] = time.time()
        async with session.post(url, data=body, headers=headers) as answer:
            await answer.read()
            statuses.append(answer.status)
        acked[build_id] = time.time()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as posts:
        start = time.monotonic()
        for n, build_id in enumerate(ids):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            posts.create_task(post(session, build_id))
    return sent, acked, statuses
