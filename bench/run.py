"""Benchmarks of jobserv-bridge: speed and memory next to their targets (see bench/README.md).

    python -m bench.run [all | intake latency drain memory bigstore ...] [--shim-ms 0 1 5]

Every figure runs under each sync setting in turn: the work folder's plain disk, then
with every sync made 1 ms and 5 ms slower by the slowsync shim (bench/disk.py), with the
sync cost measured in the work folder for each. Everything runs on 127.0.0.1 and stops by
itself: wrk runs for --duration seconds, the Python drivers send a fixed number of events,
every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from bench import disk
from bench.common import (
    ROOT,
    CpuWatch,
    Service,
    WrkResult,
    bridge_config,
    count_rows,
    ensure_clean,
    fake_chat,
    fill_backlog,
    floor_app,
    free_port,
    get_json,
    serve,
    vm_hwm_mb,
    write_bodies,
    wrk,
)
from bench.disk import DiskSetting
from bench.latency import measure_latency
from bench.prefill import prefill, trim

WARMUP_SECONDS = 2.0
BODIES_PER_SECOND = 6000  # more than the bridge accepts, so a run never repeats a body
# Build-id ranges, so that bodies of different purposes never share an identity.
NOWHERE_IDS, ROUTED_IDS, WARMUP_IDS, LATENCY_IDS = 2_000_000, 3_000_000, 5_000_000, 7_000_000
BIG_STORE_EVENTS = 1_000_000
INTAKE_TARGET = 0.4  # x the floor app, as throughput and as CPU per event
# What an intake run counts before and after wrk: events stored, deliveries queued, sent.
INTAKE_COUNTS = [("events",), ("deliveries",), ("deliveries", "state = 'sent'")]

T = TypeVar("T")


@dataclass(frozen=True)
class Figure:
    bench: str
    what: str
    value: float
    unit: str
    target: str
    passed: bool | None  # None: reported for context, no target
    setting: DiskSetting
    note: str = ""

    def row(self) -> str:
        verdict = {True: "pass", False: "MISS", None: ""}[self.passed]
        value = f"{self.value:,.2f}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        return (
            f"| {self.what} | {value} {self.unit} | {self.target} | {verdict}"
            f" | {self.setting.disk} | {self.setting.cost} | {self.setting.sync.shim_label}"
            f" | {self.note} |"
        )


HEADER = (
    "| figure | measured | target | verdict | disk | sync (p50) | shim | notes |\n"
    "|---|---|---|---|---|---|---|---|"
)


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[float], bool]


def latency_target(setting: DiskSetting) -> Target | None:
    """p99 <= 20 ms with syncs up to 1 ms slower (and on the plain disk), <= 50 ms at 5 ms."""
    delay = setting.sync.delay_us
    if delay <= 1000:
        return Target("<= 20 ms", lambda v: v <= 20.0)
    if delay <= 5000:
        return Target("<= 50 ms", lambda v: v <= 50.0)
    return None


def other_target(setting: DiskSetting, text: str, met: Callable[[float], bool]) -> Target | None:
    """Throughput, intake and memory targets hold on the plain disk and with the shim at 1 ms."""
    return Target(text, met) if setting.sync.delay_us <= 1000 else None


@dataclass(frozen=True)
class IntakeRun:
    wrk: WrkResult
    accepted: int  # events newly stored while wrk measured
    vm_hwm_mb: float
    ready_after: float
    # Deliveries queued, and sent, while wrk measured: a CPU per event is only that if the
    # lanes kept up (a change that starves them shows as less CPU per event).
    queued: int = 0
    sent: int = 0

    @property
    def per_second(self) -> float:
        return self.accepted / self.wrk.seconds

    @property
    def cpu_per_event_us(self) -> float:
        return self.wrk.cpu.server * self.wrk.cpu.seconds / self.accepted * 1e6

    def note(self) -> str:
        repeats = self.wrk.requests - self.accepted
        errors = self.wrk.non2xx + self.wrk.socket_errors
        sends = f"; {self.sent:,} deliveries sent of {self.queued:,} queued" if self.queued else ""
        return (
            f"{self.accepted:,} accepted of {self.wrk.requests:,} requests"
            f" (repeats {max(repeats, 0)}, errors {errors}), p99 {self.wrk.p99_ms:.1f} ms;"
            f" {self.cpu_per_event_us:.0f} µs CPU/event; {self.wrk.cpu.note()}{sends}"
        )


def middle(items: list[T], key: Callable[[T], float]) -> T:
    """The median item (the lower one of an even count)."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"; median of {len(values)} rounds: " + ", ".join(f"{v:,.0f}" for v in values)


class Bench:
    def __init__(
        self,
        workdir: Path,
        duration: float,
        connections: int,
        rounds: int,
        setting: DiskSetting,
        figures: list[Figure],
    ) -> None:
        self.workdir = workdir
        self.duration = duration
        self.connections = connections
        self.rounds = rounds
        self.setting = setting
        self.figures = figures
        self._bodies: dict[tuple[int, str], Path] = {}

    def report(
        self,
        bench: str,
        what: str,
        value: float,
        unit: str,
        target: Target | None,
        note: str = "",
    ) -> None:
        figure = Figure(
            bench,
            what,
            value,
            unit,
            target.text if target else "",
            target.met(value) if target else None,
            self.setting,
            note,
        )
        self.figures.append(figure)
        print(figure.row(), flush=True)

    def serve(self, config: Path, port: int) -> ContextManager[Service]:
        """serve as a user starts it, under this run's sync setting."""
        return serve(config, port, self.workdir, self.setting.sync)

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
            self.serve(config, port) as bridge,
        ):
            pids = (bridge.pid, chat.pid)
            wrk(port, warmup, WARMUP_SECONDS, self.connections, pids)
            before = [count_rows(store, *rows) for rows in INTAKE_COUNTS]
            result = wrk(port, bodies, self.duration, self.connections, pids)
            after = [count_rows(store, *rows) for rows in INTAKE_COUNTS]
            accepted, queued, sent = (a - b for a, b in zip(after, before, strict=True))
            hwm = vm_hwm_mb(bridge.pid)
            return IntakeRun(result, accepted, hwm, bridge.ready_after, queued, sent)

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
            "intake",
            "floor app (HMAC + JSON + 202, stores nothing)",
            floor.per_second,
            "req/s",
            None,
            f"p99 {floor.p99_ms:.1f} ms, errors {floor.non2xx + floor.socket_errors};"
            f" {floor_cpu_us:.0f} µs CPU/request;"
            f" {floor.cpu.note()}{spread([r.per_second for r in floors])}",
        )
        at_least = f">= {INTAKE_TARGET:g}x floor"
        for label, _, _ in cases:
            run = middle(runs[label], lambda r: r.per_second)
            ratio = run.per_second / floor.per_second
            self.report(
                "intake",
                f"bridge, {label}: accepted/s / floor's req/s ({run.per_second:,.0f}/s)",
                ratio,
                "x",
                other_target(self.setting, at_least, lambda v: v >= INTAKE_TARGET),
                run.note() + spread([r.per_second for r in runs[label]]),
            )
            cpu_ratio = floor_cpu_us / run.cpu_per_event_us
            self.report(
                "intake",
                f"bridge, {label}: floor's CPU/request / CPU/event"
                f" ({run.cpu_per_event_us:.0f} µs vs {floor_cpu_us:.0f} µs)",
                cpu_ratio,
                "x",
                other_target(self.setting, at_least, lambda v: v >= INTAKE_TARGET),
                "the throughput ratio the two would have with a core each",
            )

    # -- 2. latency from accepted to received ------------------------------------

    def latency(self, rate: float = 200.0, seconds: float = 10.0) -> None:
        for destinations in (1, 10):
            run = measure_latency(
                self.workdir,
                self.setting.sync,
                self.store("latency"),
                first_id=LATENCY_IDS,
                destinations=destinations,
                rate=rate,
                seconds=seconds,
            )
            target = latency_target(self.setting)
            if target is not None and run.missing:  # a lost message fails any latency target
                target = Target(target.text, lambda v: False)
            self.report(
                "latency",
                f"202 received -> chat received, p99, {rate:g} events/s to {destinations}",
                run.p(0.99),
                "ms",
                target,
                run.note(),
            )

    # -- 3. draining a backlog ----------------------------------------------------

    def floor_sender(self, requests: int, senders: int) -> tuple[float, float]:
        """The least a delivery costs here (bench/floor_sender.py): requests/s, µs CPU each."""
        chat_port = free_port()
        with fake_chat(chat_port, self.workdir):
            found = subprocess.run(
                [
                    *(sys.executable, "-m", "bench.floor_sender", "--port", str(chat_port)),
                    *("--requests", str(requests), "--senders", str(senders)),
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
        sent = json.loads(found.stdout)
        rate, cpu_us = sent["requests"] / sent["seconds"], sent["cpu"] / sent["requests"] * 1e6
        self.report(
            "drain",
            f"floor sender: {requests:,} POSTs of the build to {senders} paths of a fake chat",
            rate,
            "requests/s",
            None,
            f"{cpu_us:.0f} µs CPU/request; aiohttp alone: no store, template, log or lane",
        )
        return rate, cpu_us

    def drain(self, deliveries: int = 10_000, destinations: int = 10) -> None:
        floor_rate, floor_cpu_us = self.floor_sender(deliveries, destinations)
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
            with self.serve(config, port) as bridge:
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
        cpu_us = cpu.server * cpu.seconds / count * 1e6
        self.report(
            "drain",
            f"{deliveries:,} deliveries to {destinations} fake chats, first->last arrival",
            rate,
            "deliveries/s",
            other_target(self.setting, ">= 3,000/s", lambda v: v >= 3000 and count >= deliveries),
            f"{count:,} received in {last - first:.2f} s ({sent:,} marked sent);"
            f" {count / (last - spawned):,.0f}/s counting serve's startup;"
            f" {cpu_us:.0f} µs CPU/delivery; {cpu.note()}; against the floor sender:"
            f" {rate / floor_rate:.2f}x its rate, {floor_cpu_us / cpu_us:.2f}x its CPU/request",
        )

    # -- 4. peak memory -------------------------------------------------------------

    def memory(self) -> None:
        run = self.bridge_intake(self.store("memory"), "FAILED", ROUTED_IDS)
        self.report(
            "memory",
            f"VmHWM serving ({self.duration:g} s of wrk, failed builds to a chat)",
            run.vm_hwm_mb,
            "MB",
            other_target(self.setting, "<= 80 MB", lambda v: v <= 80),
            run.note(),
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
            self.serve(config, port) as bridge,
        ):
            bodies = self.bodies(NOWHERE_IDS, "PASSED")
            intake = wrk(port, bodies, self.duration, self.connections, (bridge.pid, chat.pid))
            peak = vm_hwm_mb(bridge.pid)
            delivered = get_json(f"http://127.0.0.1:{chat_port}/_stats")["count"]
        self.report(
            "memory",
            "VmHWM serving with a 100,000-delivery backlog to 10 chats",
            peak,
            "MB",
            other_target(self.setting, "<= 150 MB", lambda v: v <= 150),
            f"{self.duration:g} s: drained {delivered:,} while wrk posted"
            f" {intake.per_second:,.0f} req/s (builds routed nowhere);"
            f" backlog filled via SqliteStore.accept in {filled:.1f} s",
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
            self.report(
                "bigstore",
                f"{label}: accepted/s with 1M events / empty store ({full.per_second:,.0f}/s)",
                full.per_second / empty.per_second,
                "x",
                Target(">= 0.9x empty", lambda v: v >= 0.9),
                f"empty {empty.per_second:,.0f}/s; 1M store {size_gb:.1f} GB ({made}),"
                f" serve ready in {full.ready_after:.1f} s vs {empty.ready_after:.1f} s;"
                f" CPU/event {full.cpu_per_event_us:.0f} µs vs {empty.cpu_per_event_us:.0f} µs;"
                f" 1M: {full.wrk.cpu.note()}; empty: {empty.wrk.cpu.note()}"
                + spread([r.per_second for r in fulls])
                + spread([r.per_second for r in empties]).replace("median", "empty: median"),
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


BENCHES: dict[str, Callable[[Bench], None]] = {
    "intake": Bench.intake,
    "latency": Bench.latency,
    "drain": Bench.drain,
    "memory": Bench.memory,
    "bigstore": Bench.bigstore,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "benches", nargs="*", help=f"all (the default), or some of: {', '.join(BENCHES)}"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--rounds", type=int, default=3, help="intake and bigstore: runs each, median reported"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jobserv-bridge-bench"))
    disk.add_options(parser)
    args = parser.parse_args()
    names = list(BENCHES) if "all" in args.benches or not args.benches else args.benches
    unknown = set(names) - set(BENCHES)
    if unknown:
        parser.error(f"no benchmark named {', '.join(sorted(unknown))}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    disk.refuse_tmpfs(args.workdir, args.allow_tmpfs)
    machine = describe_machine()
    print(f"# {machine}", flush=True)
    started = time.monotonic()
    figures: list[Figure] = []
    settings = disk.settings(args.workdir, args.shim_ms, args.slowsync_source, args.sync_probes)
    for setting in settings:
        print(f"\n## {setting.header()}\n\n{HEADER}", flush=True)
        bench = Bench(args.workdir, args.duration, args.connections, args.rounds, setting, figures)
        for name in names:
            BENCHES[name](bench)
    results = args.workdir / "results.json"
    every = [asdict(f) for f in figures]
    results.write_text(json.dumps({"machine": machine, "figures": every}, indent=2, default=str))
    print(f"\n{len(figures)} figures in {time.monotonic() - started:.0f} s; {results}")


if __name__ == "__main__":
    main()
