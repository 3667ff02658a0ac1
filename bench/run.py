"""Benchmarks of jobserv-bridge: speed and memory next to their targets (see bench/README.md).

    python -m bench.run [all | intake latency drain memory bigstore ...]

Everything runs on 127.0.0.1 and stops by itself: wrk runs for --duration seconds, the
Python drivers send a fixed number of events, every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
from aiohttp import web

from bench.common import (
    ROOT,
    SECRET,
    CpuWatch,
    WrkResult,
    bridge_config,
    count_rows,
    ensure_clean,
    fake_chat,
    fill_backlog,
    floor_app,
    free_port,
    get_json,
    percentile,
    serve,
    vm_hwm_mb,
    webhook_body,
    write_bodies,
    wrk,
)
from bench.prefill import prefill, trim
from bridge.jobserv import sign

WARMUP_SECONDS = 2.0
BODIES_PER_SECOND = 6000  # more than the bridge accepts, so a run never repeats a body
# Build-id ranges, so that bodies of different purposes never share an identity.
NOWHERE_IDS, ROUTED_IDS, WARMUP_IDS, LATENCY_IDS = 2_000_000, 3_000_000, 5_000_000, 7_000_000
BIG_STORE_EVENTS = 1_000_000

T = TypeVar("T")


@dataclass(frozen=True)
class Figure:
    bench: str
    what: str
    value: float
    unit: str
    target: str
    passed: bool | None  # None: reported for context, no target
    note: str = ""

    def row(self) -> str:
        verdict = {True: "pass", False: "MISS", None: ""}[self.passed]
        value = f"{self.value:,.2f}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        return f"| {self.what} | {value} {self.unit} | {self.target} | {verdict} | {self.note} |"


@dataclass(frozen=True)
class IntakeRun:
    wrk: WrkResult
    accepted: int  # events newly stored while wrk measured
    vm_hwm_mb: float
    ready_after: float

    @property
    def per_second(self) -> float:
        return self.accepted / self.wrk.seconds

    @property
    def cpu_per_event_us(self) -> float:
        return self.wrk.cpu.server * self.wrk.cpu.seconds / self.accepted * 1e6

    def note(self) -> str:
        repeats = self.wrk.requests - self.accepted
        errors = self.wrk.non2xx + self.wrk.socket_errors
        return (
            f"{self.accepted:,} accepted of {self.wrk.requests:,} requests"
            f" (repeats {max(repeats, 0)}, errors {errors}), p99 {self.wrk.p99_ms:.1f} ms;"
            f" {self.cpu_per_event_us:.0f} µs CPU/event; {self.wrk.cpu.note()}"
        )


def middle(items: list[T], key: Callable[[T], float]) -> T:
    """The median item (the lower one of an even count)."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"; median of {len(values)} rounds: " + ", ".join(f"{v:,.0f}" for v in values)


class Bench:
    def __init__(self, workdir: Path, duration: float, connections: int, rounds: int) -> None:
        self.workdir = workdir
        self.duration = duration
        self.connections = connections
        self.rounds = rounds
        self.figures: list[Figure] = []
        self._bodies: dict[tuple[int, str], Path] = {}

    def report(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(figure.row(), flush=True)

    def bodies(self, first_id: int, status: str, count: int | None = None) -> Path:
        """A wrk body file, written once per run."""
        key = (first_id, status)
        if key not in self._bodies:
            count = count or int(BODIES_PER_SECOND * self.duration)
            path = self.workdir / f"bodies-{first_id}-{status}.tsv"
            self._bodies[key] = write_bodies(path, first_id, count, status)
        return self._bodies[key]

    def warmup_bodies(self, status: str) -> Path:
        return self.bodies(WARMUP_IDS, status, int(BODIES_PER_SECOND * WARMUP_SECONDS))

    def store(self, name: str) -> Path:
        return ensure_clean(self.workdir / f"{name}.sqlite3")

    def bridge_intake(
        self, store: Path, status: str, first_id: int, destinations: int = 1
    ) -> IntakeRun:
        """serve (with its fake chat) under wrk: warm up, then measure what it stored."""
        port, chat_port = free_port(), free_port()
        config = bridge_config(
            self.workdir / "bridge.toml",
            port=port,
            store=store,
            chat_port=chat_port,
            destinations=destinations,
        )
        bodies, warmup = self.bodies(first_id, status), self.warmup_bodies(status)
        with (
            fake_chat(chat_port, self.workdir) as chat,
            serve(config, port, self.workdir) as bridge,
        ):
            pids = (bridge.pid, chat.pid)
            wrk(port, warmup, WARMUP_SECONDS, self.connections, pids)
            before = count_rows(store, "events")
            result = wrk(port, bodies, self.duration, self.connections, pids)
            accepted = count_rows(store, "events") - before
            return IntakeRun(result, accepted, vm_hwm_mb(bridge.pid), bridge.ready_after)

    # -- 1. intake throughput vs the floor --------------------------------------

    def floor(self) -> WrkResult:
        port = free_port()
        with floor_app(port, self.workdir) as app:
            pids = (app.pid,)
            wrk(port, self.warmup_bodies("PASSED"), WARMUP_SECONDS, self.connections, pids)
            bodies = self.bodies(NOWHERE_IDS, "PASSED")
            return wrk(port, bodies, self.duration, self.connections, pids)

    def intake(self) -> None:
        cases = [
            ("routes nowhere (PASSED)", "PASSED", NOWHERE_IDS),
            ("failed, routed to fake chat", "FAILED", ROUTED_IDS),
        ]
        floors: list[WrkResult] = []
        runs: dict[str, list[IntakeRun]] = {label: [] for label, _, _ in cases}
        for _ in range(self.rounds):  # interleaved, so that a disturbance hits all alike
            floors.append(self.floor())
            for label, status, first_id in cases:
                runs[label].append(self.bridge_intake(self.store("intake"), status, first_id))
        floor = middle(floors, lambda r: r.per_second)
        floor_cpu_us = floor.cpu.server * floor.cpu.seconds / floor.requests * 1e6
        self.report(
            Figure(
                "intake",
                "floor app (HMAC + JSON + 202, stores nothing)",
                floor.per_second,
                "req/s",
                "baseline",
                None,
                f"p99 {floor.p99_ms:.1f} ms, errors {floor.non2xx + floor.socket_errors};"
                f" {floor_cpu_us:.0f} µs CPU/request;"
                f" {floor.cpu.note()}{spread([r.per_second for r in floors])}",
            )
        )
        for label, _, _ in cases:
            run = middle(runs[label], lambda r: r.per_second)
            ratio = run.per_second / floor.per_second
            self.report(
                Figure(
                    "intake",
                    f"bridge, {label}: accepted/s ({ratio:.2f}x floor)",
                    run.per_second,
                    "events/s",
                    ">= 0.8x floor",
                    ratio >= 0.8,
                    f"CPU-bound ratio {floor_cpu_us / run.cpu_per_event_us:.2f}x"
                    f" (floor's CPU per request / bridge's per event); {run.note()}"
                    + spread([r.per_second for r in runs[label]]),
                )
            )

    # -- 2. latency from accepted to received ------------------------------------

    def latency(self, rate: float = 200.0, seconds: float = 10.0) -> None:
        asyncio.run(self._latency(rate, seconds))

    async def _latency(self, rate: float, seconds: float) -> None:
        warmup = int(rate)  # the first second is not measured
        ids = range(LATENCY_IDS, LATENCY_IDS + warmup + int(rate * seconds))
        arrived: dict[int, float] = {}
        all_arrived = asyncio.Event()

        async def receive(request: web.Request) -> web.Response:
            message = await request.json()
            arrived[message["build_id"]] = time.monotonic()
            if len(arrived) == len(ids):
                all_arrived.set()
            return web.Response(text="ok")

        chat = web.Application()
        chat.router.add_post("/{name}", receive)
        runner = web.AppRunner(chat, access_log=None)
        await runner.setup()
        chat_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", chat_port).start()

        signed = {i: (webhook_body(i), sign(SECRET, webhook_body(i))) for i in ids}
        sent: dict[int, float] = {}
        acked: dict[int, float] = {}
        statuses: list[int] = []

        async def post(session: aiohttp.ClientSession, url: str, build_id: int) -> None:
            body, signature = signed[build_id]
            headers = {"Content-Type": "application/json", "X-JobServ-Sig": signature}
            sent[build_id] = time.monotonic()
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                statuses.append(answer.status)
            acked[build_id] = time.monotonic()

        port = free_port()
        store = self.store("latency")
        config = bridge_config(
            self.workdir / "bridge.toml", port=port, store=store, chat_port=chat_port
        )
        try:
            with serve(config, port, self.workdir):
                url = f"http://127.0.0.1:{port}/webhook"
                async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as posts:
                    start = time.monotonic()
                    for n, build_id in enumerate(ids):
                        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                        posts.create_task(post(session, url, build_id))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_arrived.wait(), 10.0)
        finally:
            await runner.cleanup()

        measured = [i for i in ids[warmup:] if i in arrived and i in acked]
        from_ack = [(arrived[i] - acked[i]) * 1000 for i in measured]
        from_send = [(arrived[i] - sent[i]) * 1000 for i in measured]
        lost = len(ids) - warmup - len(measured)
        not_202 = sum(status != 202 for status in statuses)
        context = f"{len(measured)} events at {rate:g}/s; missing {lost}, non-202 {not_202}"
        for name, values, target in (
            ("p50", from_ack, None),
            ("p99", from_ack, 20.0),
        ):
            value = percentile(values, 0.5 if name == "p50" else 0.99)
            self.report(
                Figure(
                    "latency",
                    f"202 received -> chat received, {name}",
                    value,
                    "ms",
                    f"<= {target:g} ms" if target else "",
                    (value <= target) if target else None,
                    context,
                )
            )
        self.report(
            Figure(
                "latency",
                "request sent -> chat received, p50 / p99",
                percentile(from_send, 0.99),
                "ms (p99)",
                "",
                None,
                f"p50 {percentile(from_send, 0.5):.1f} ms, max {max(from_send):.1f} ms",
            )
        )

    # -- 3. draining a backlog ----------------------------------------------------

    def drain(self, deliveries: int = 10_000, destinations: int = 10) -> None:
        store = self.store("drain")
        fill_backlog(store, deliveries // destinations, destinations)
        port, chat_port = free_port(), free_port()
        config = bridge_config(
            self.workdir / "bridge.toml",
            port=port,
            store=store,
            chat_port=chat_port,
            destinations=destinations,
        )
        with fake_chat(chat_port, self.workdir) as chat:
            chat_stats = f"http://127.0.0.1:{chat_port}/_stats"
            spawned = time.time()
            with serve(config, port, self.workdir) as bridge:
                watch = CpuWatch((bridge.pid, chat.pid))
                deadline = time.monotonic() + 60.0
                stats = get_json(chat_stats)
                while stats["count"] < deliveries and time.monotonic() < deadline:
                    time.sleep(0.05)
                    stats = get_json(chat_stats)
                cpu = watch.stop()
        sent = count_rows(store, "deliveries", "state = 'sent'")
        count, first, last = stats["count"], stats["first"], stats["last"]
        rate = count / (last - first)
        self.report(
            Figure(
                "drain",
                f"{deliveries:,} deliveries to {destinations} fake chats, first->last arrival",
                rate,
                "deliveries/s",
                ">= 3,000/s",
                rate >= 3000 and count >= deliveries,
                f"{count:,} received in {last - first:.2f} s ({sent:,} marked sent);"
                f" {count / (last - spawned):,.0f}/s counting serve's startup;"
                f" {cpu.server * cpu.seconds / count * 1e6:.0f} µs CPU/delivery; {cpu.note()}",
            )
        )

    # -- 4. peak memory -------------------------------------------------------------

    def memory(self) -> None:
        run = self.bridge_intake(self.store("memory"), "FAILED", ROUTED_IDS)
        self.report(
            Figure(
                "memory",
                f"VmHWM serving ({self.duration:g} s of wrk, failed builds to a chat)",
                run.vm_hwm_mb,
                "MB",
                "<= 80 MB",
                run.vm_hwm_mb <= 80,
                run.note(),
            )
        )
        store = self.store("backlog")
        started = time.monotonic()
        fill_backlog(store, 10_000, 10)
        filled = time.monotonic() - started
        port, chat_port = free_port(), free_port()
        config = bridge_config(
            self.workdir / "bridge.toml",
            port=port,
            store=store,
            chat_port=chat_port,
            destinations=10,
        )
        with (
            fake_chat(chat_port, self.workdir) as chat,
            serve(config, port, self.workdir) as bridge,
        ):
            bodies = self.bodies(NOWHERE_IDS, "PASSED")
            intake = wrk(port, bodies, self.duration, self.connections, (bridge.pid, chat.pid))
            peak = vm_hwm_mb(bridge.pid)
            delivered = get_json(f"http://127.0.0.1:{chat_port}/_stats")["count"]
        self.report(
            Figure(
                "memory",
                "VmHWM serving with a 100,000-delivery backlog to 10 chats",
                peak,
                "MB",
                "<= 150 MB",
                peak <= 150,
                f"{self.duration:g} s: drained {delivered:,} while wrk posted"
                f" {intake.per_second:,.0f} req/s (builds routed nowhere);"
                f" backlog filled via SqliteStore.accept in {filled:.1f} s",
            )
        )

    # -- 5. intake with a million stored events ---------------------------------------

    def bigstore(self) -> None:
        big = self.workdir / "store-1M.sqlite3"
        if big.exists() and count_rows(big, "events") >= BIG_STORE_EVENTS:
            trim(big, BIG_STORE_EVENTS)
            made = "reused"
        else:
            started = time.monotonic()
            prefill(ensure_clean(big), BIG_STORE_EVENTS)
            made = f"filled in {time.monotonic() - started:.0f} s"
        size_gb = big.stat().st_size / 1e9
        for label, status, first_id in (
            ("routes nowhere", "PASSED", NOWHERE_IDS),
            ("failed, routed", "FAILED", ROUTED_IDS),
        ):
            empties: list[IntakeRun] = []
            fulls: list[IntakeRun] = []
            for _ in range(self.rounds):
                empties.append(self.bridge_intake(self.store("bigstore-empty"), status, first_id))
                try:
                    fulls.append(self.bridge_intake(big, status, first_id))
                finally:
                    trim(big, BIG_STORE_EVENTS)
            empty = middle(empties, lambda r: r.per_second)
            full = middle(fulls, lambda r: r.per_second)
            ratio = full.per_second / empty.per_second
            self.report(
                Figure(
                    "bigstore",
                    f"{label}: accepted/s with 1M events / empty store ({ratio:.2f}x)",
                    full.per_second,
                    "events/s",
                    ">= 0.9x empty",
                    ratio >= 0.9,
                    f"empty {empty.per_second:,.0f}/s; 1M store {size_gb:.1f} GB ({made}),"
                    f" serve ready in {full.ready_after:.1f} s vs {empty.ready_after:.1f} s;"
                    f" CPU/event {full.cpu_per_event_us:.0f} µs vs {empty.cpu_per_event_us:.0f} µs;"
                    f" 1M: {full.wrk.cpu.note()}; empty: {empty.wrk.cpu.note()}"
                    + spread([r.per_second for r in fulls])
                    + spread([r.per_second for r in empties]).replace("median", "empty: median"),
                )
            )


def describe_machine() -> str:
    """The code measured (commit, and whether bridge/ differs from it) and the machine."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "bridge"], capture_output=True, text=True
    ).stdout.strip()
    code = commit.stdout.strip() + (" + uncommitted changes in bridge/" if changed else "")
    load = Path("/proc/loadavg").read_text().split()[0]
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}, code {code}, {os.cpu_count()} cores,"
        f" load average {load} at start"
    )


def main() -> None:
    benches: dict[str, Callable[[Bench], None]] = {
        "intake": Bench.intake,
        "latency": Bench.latency,
        "drain": Bench.drain,
        "memory": Bench.memory,
        "bigstore": Bench.bigstore,
    }
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "benches", nargs="*", help=f"all (the default), or some of: {', '.join(benches)}"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--rounds", type=int, default=3, help="intake and bigstore: runs each, median reported"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jobserv-bridge-bench"))
    args = parser.parse_args()
    names = list(benches) if "all" in args.benches or not args.benches else args.benches
    unknown = set(names) - set(benches)
    if unknown:
        parser.error(f"no benchmark named {', '.join(sorted(unknown))}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.workdir, args.duration, args.connections, args.rounds)
    machine = describe_machine()
    print(f"# {machine}\n", flush=True)
    print("| figure | measured | target | verdict | notes |\n|---|---|---|---|---|", flush=True)
    started = time.monotonic()
    for name in names:
        benches[name](bench)
    results = args.workdir / "results.json"
    figures = [asdict(f) for f in bench.figures]
    results.write_text(json.dumps({"machine": machine, "figures": figures}, indent=2))
    print(f"\n{len(bench.figures)} figures in {time.monotonic() - started:.0f} s; {results}")


if __name__ == "__main__":
    main()
