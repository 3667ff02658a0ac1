"""Intake throughput of 1, 2 and 3 replicas on PostgreSQL, next to one on SQLite.

    python -m bench.replicas [--rounds 3] [--duration 10] [--connections 32] [--postgres URL]
                             [--replicas 1 2 3] [--shim-ms 0 1 5]

Every setup serves the same work, posted by wrk with the same number of connections
in all, split evenly over the replicas (one wrk per replica, as a load balancer would
spread them); failed builds go to one fake chat, so the replicas deliver while they
take webhooks. What counts is events newly stored per second, read from the store
itself. Two workloads:

- mixed: builds of 20 triggers, every other one failing (each failure is news:
  the build before it passed);
- one trigger failing: every build of one trigger fails, a streak as long as the
  run. The events of one trigger are taken one at a time (each needs the history
  before it), which bounds this one.

Without --postgres, a throwaway PostgreSQL starts in a folder of the work folder, with
its default durability (fsync on, synchronous commits), as SQLite runs with its full
sync; it is stopped at the end. Every setup runs under each sync setting in turn (the
plain disk, then the slowsync shim at 1 ms and 5 ms, see bench/disk.py): the replicas
and the throwaway PostgreSQL are started under it. With one replica on PostgreSQL, the
latency from 202 to chat is measured too (as in bench/run.py), the CPU per accepted
event (bridge and PostgreSQL together) is set against its target, and a backlog of
100,000 deliveries is drained after an outage's statistics (bench/pg_drain.py).

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import glob
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import disk
from bench.common import (
    SECRET,
    Service,
    WrkResult,
    count_rows,
    cpu_seconds,
    ensure_clean,
    fake_chat,
    free_port,
    machine_busy_seconds,
    service,
    webhook_body,
    write_bodies,
    wrk,
)
from bench.disk import DiskSetting, SyncSetting
from bench.latency import measure_latency
from bench.pg_drain import measure_pg_drain
from bench.run import HEADER, Figure, latency_target, other_target
from bridge.jobserv import sign

WARMUP_SECONDS = 2.0
BODIES_PER_SECOND = 8000  # per replica: more than one accepts, so a run never repeats a body
FIRST_ID = 20_000_000  # build ids of their own, apart from bench/run.py's
TRIGGERS = 20  # in the mixed workload
WORKLOADS = ("mixed", "one trigger failing")
LATENCY_IDS = 30_000_000
CPU_TARGET_US = 500.0  # bridge and PostgreSQL CPU per accepted event, one replica
DRAIN_EVENTS = 10_000  # x 10 destinations: the 100,000-delivery backlog of bench.run's memory


# -- a throwaway PostgreSQL ----------------------------------------------------------


def _postgres_bin() -> Path:
    found = shutil.which("initdb") or max(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), default=None
    )
    if found is None:
        raise SystemExit("PostgreSQL's initdb is not installed (apt-get install postgresql)")
    return Path(found).resolve().parent


def _postmaster_pid(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split("\n", 1)[0])


@contextlib.contextmanager
def throwaway_postgres(workdir: Path, sync: SyncSetting) -> Iterator[tuple[str, int]]:
    """A PostgreSQL server on 127.0.0.1, durable as shipped: its URL and postmaster pid.

    Its data lives in `workdir` (the disk measured), and it runs under `sync`.
    """
    binaries = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="postgres-", dir=workdir))
    run_as = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    folder.chmod(0o755)
    data, port = folder / "data", free_port()
    log = workdir / "postgres.log"
    pg_ctl = [*run_as, str(binaries / "pg_ctl"), f"--pgdata={data}"]
    try:
        subprocess.run(
            [*run_as, str(binaries / "initdb"), f"--pgdata={data}", "--username=postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True,
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port}"
            f" -c unix_socket_directories={folder} -c max_connections=200"
        )
        subprocess.run(
            [*pg_ctl, f"--log={folder / 'server.log'}", "--wait", f"--options={options}", "start"],
            check=True, capture_output=True, env=sync.environment(),
        )  # fmt: skip
        postmaster = _postmaster_pid(data)
        sync.check_loaded(postmaster, "PostgreSQL")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", postmaster
    finally:
        subprocess.run([*pg_ctl, "--mode=fast", "stop"], capture_output=True)
        with contextlib.suppress(OSError):
            shutil.copy(folder / "server.log", log)
        shutil.rmtree(folder, ignore_errors=True)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


async def _fresh_database(server_url: str, name: str) -> str:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _with_database(server_url, name)


async def _count_events(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        exists = await connection.fetchval("SELECT to_regclass('events') IS NOT NULL")
        return int(await connection.fetchval("SELECT count(*) FROM events")) if exists else 0
    finally:
        await connection.close()


def _count_events_now(url: str) -> int:
    return asyncio.run(_count_events(url))


def _children(pid: int) -> list[int]:
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(Path(stat).parent.name))
    return found


def _finished_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            found[pid] = cpu_seconds(pid)
    return found


# -- the replicas ---------------------------------------------------------------------


def replica_config(path: Path, *, port: int, store: str, chat_port: int) -> Path:
    """Failed builds of andy-corp to one fake chat, limits lifted; `store` is its TOML."""
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout = "2s"\n\n'
        f"[store]\n{store}\n\n[admin]\nenabled = false\n\n"
        f'[[sources]]\nname = "bench"\nsecret = "{SECRET}"\nfactories = ["*"]\n\n'
        f'[[destinations]]\nname = "d0"\ntype = "generic"\n'
        f'url = "http://127.0.0.1:{chat_port}/d0"\nrate_limit = 0\ntimeout = "5s"\n\n'
        f'[[routes]]\nfactories = ["andy-corp"]\nnotify = ["failed"]\ndestinations = ["d0"]\n'
    )
    return path


@dataclass(frozen=True)
class Run:
    setup: str
    replicas: int
    seconds: float
    accepted: int
    requests: int
    errors: int
    p50_ms: float  # the slowest replica's
    p99_ms: float
    bridge_cpu: float  # cores, all replicas together
    postgres_cpu: float | None  # cores, the server's processes together
    others_cpu: float  # cores used outside this benchmark (other work on the machine)

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds

    @property
    def cpu_per_event_us(self) -> float:
        """Bridge and PostgreSQL CPU an accepted event cost: less sensitive to a busy machine."""
        cores = self.bridge_cpu + (self.postgres_cpu or 0.0)
        return cores * self.seconds / max(self.accepted, 1) * 1e6


def write_mixed_bodies(path: Path, first_id: int, count: int) -> Path:
    """Signed bodies for wrk (as bench/common.py's): TRIGGERS triggers, odd builds failed."""
    with path.open("wb") as out:
        for build_id in range(first_id, first_id + count):
            body = webhook_body(build_id, "FAILED" if build_id % 2 else "PASSED")
            trigger = f'"trigger_name": "trigger-{build_id // 2 % TRIGGERS}"'.encode()
            body = body.replace(b'"trigger_name": "containers-devel"', trigger, 1)
            out.write(sign(SECRET, body).encode() + b"\t" + body + b"\n")
    return path


class ReplicaBench:
    def __init__(
        self, workdir: Path, duration: float, connections: int, setting: DiskSetting
    ) -> None:
        self.workdir = workdir
        self.duration = duration
        self.connections = connections
        self.setting = setting
        self.next_id = FIRST_ID
        self.workload = WORKLOADS[0]

    def _bodies(self, name: str, seconds: float) -> Path:
        count = int(BODIES_PER_SECOND * seconds)
        path = self.workdir / f"{name}.tsv"
        if self.workload == "mixed":
            write_mixed_bodies(path, self.next_id, count)
        else:
            write_bodies(path, self.next_id, count, "FAILED")
        self.next_id += count
        return path

    def run(
        self,
        setup: str,
        stores: list[str],
        count_events: Callable[[], int],
        postgres_pid: int | None = None,
    ) -> Run:
        """Serve with one replica per entry of `stores` (its [store] TOML) under wrk."""
        chat_port = free_port()
        per_replica = max(1, round(self.connections / len(stores)))
        with ExitStack() as stack:
            chat = stack.enter_context(fake_chat(chat_port, self.workdir))
            replicas: list[Service] = []
            for index, store in enumerate(stores):
                port = free_port()
                config = replica_config(
                    self.workdir / f"replica-{index}.toml",
                    port=port,
                    store=store,
                    chat_port=chat_port,
                )
                args = ["-m", "bridge", "serve", "--config", str(config)]
                replicas.append(
                    stack.enter_context(
                        service(
                            f"replica-{index}",
                            args,
                            port,
                            "/healthz",
                            self.workdir,
                            sync=self.setting.sync,
                        )
                    )
                )
            pids = [r.pid for r in replicas]

            def load(seconds: float, tag: str) -> list[WrkResult]:
                bodies = [self._bodies(f"{tag}-{i}", seconds) for i in range(len(replicas))]
                with ThreadPoolExecutor(len(replicas)) as pool:
                    runs = [
                        pool.submit(wrk, r.port, b, seconds, per_replica, (r.pid,))
                        for r, b in zip(replicas, bodies, strict=True)
                    ]
                    return [run.result() for run in runs]

            load(WARMUP_SECONDS, "warmup")
            server_pids = [] if postgres_pid is None else [postgres_pid, *_children(postgres_pid)]
            bridge_before, server_before = _cpu_of(pids), _cpu_of(server_pids)
            chat_before = _cpu_of([chat.pid])
            machine_before, wrk_before = machine_busy_seconds(), _finished_children_cpu()
            before = count_events()
            results = load(self.duration, "measure")
            accepted = count_events() - before
            machine = machine_busy_seconds() - machine_before
            wrk_cpu = _finished_children_cpu() - wrk_before
            bridge_after, server_after = _cpu_of(pids), _cpu_of(server_pids)
            chat_after = _cpu_of([chat.pid])

        def cores(before: dict[int, float], after: dict[int, float]) -> float:
            used = sum(after[pid] - before[pid] for pid in after if pid in before)
            return used / self.duration

        ours = sum(
            cores(b, a)
            for b, a in (
                (bridge_before, bridge_after),
                (server_before, server_after),
                (chat_before, chat_after),
            )
        )

        return Run(
            setup=setup,
            replicas=len(stores),
            seconds=max(r.seconds for r in results),
            accepted=accepted,
            requests=sum(r.requests for r in results),
            errors=sum(r.non2xx + r.socket_errors for r in results),
            p50_ms=max(r.p50_ms for r in results),
            p99_ms=max(r.p99_ms for r in results),
            bridge_cpu=cores(bridge_before, bridge_after),
            postgres_cpu=None if postgres_pid is None else cores(server_before, server_after),
            others_cpu=max(0.0, machine / self.duration - ours - wrk_cpu / self.duration),
        )


def _row(run: Run, sqlite: Run, rounds: list[Run]) -> str:
    ratio = f"{run.per_second / sqlite.per_second:.2f}x"
    server = "" if run.postgres_cpu is None else f"{run.postgres_cpu:.2f}"
    rate = f"{run.per_second:,.0f}"
    if len(rounds) > 1:
        rates = sorted(r.per_second for r in rounds)
        rate += f" ({rates[0]:,.0f} to {rates[-1]:,.0f})"
    return (
        f"| {run.setup} | {rate} | {ratio} | {run.p50_ms:.1f} | {run.p99_ms:.1f}"
        f" | {run.accepted:,} of {run.requests:,} | {run.errors} | {run.bridge_cpu:.2f}"
        f" | {server} | {run.cpu_per_event_us:.0f} | {run.others_cpu:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections in all")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each setup; median shown")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument(
        "--replicas", type=int, nargs="+", default=[1, 2, 3], help="replica counts on PostgreSQL"
    )
    parser.add_argument("--postgres", help="a server URL to use instead of a throwaway one")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jobserv-bridge-bench-replicas"))
    disk.add_options(parser)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir.chmod(0o755)  # a throwaway PostgreSQL runs as its own user in a folder here
    disk.refuse_tmpfs(args.workdir, args.allow_tmpfs)
    started = time.monotonic()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores; wrk {args.duration:g} s,"
        f" {args.connections} connections in all, {args.rounds} round(s)",
        flush=True,
    )
    every_run: dict[str, dict[str, dict[str, list[dict[str, object]]]]] = {}
    figures: list[Figure] = []
    for setting in disk.settings(
        args.workdir, args.shim_ms, args.slowsync_source, args.sync_probes
    ):
        print(f"\n## {setting.header()}", flush=True)
        bench = ReplicaBench(args.workdir, args.duration, args.connections, setting)
        runs = _one_setting(bench, args, figures)
        every_run[setting.sync.shim_label] = {
            workload: {setup: [r.__dict__ for r in done] for setup, done in setups.items()}
            for workload, setups in runs.items()
        }
    results = args.workdir / "replicas.json"
    results.write_text(
        json.dumps(
            {"runs": every_run, "figures": [f.__dict__ for f in figures]}, indent=2, default=str
        )
    )
    print(f"\n{len(figures)} figures in {time.monotonic() - started:.0f} s; {results}")


def _one_setting(
    bench: ReplicaBench, args: argparse.Namespace, figures: list[Figure]
) -> dict[str, dict[str, list[Run]]]:
    """Every workload and setup under one sync setting, then the latency on PostgreSQL."""
    setting = bench.setting
    runs: dict[str, dict[str, list[Run]]] = {}
    with ExitStack() as stack:
        if args.postgres:
            server_url, postgres_pid = args.postgres, None
        else:
            server_url, postgres_pid = stack.enter_context(
                throwaway_postgres(args.workdir, setting.sync)
            )
        for workload in args.workloads:
            bench.workload = workload
            done = runs.setdefault(workload, {})
            # Rounds go through every setup in turn, so that a busy moment hits them alike.
            for _ in range(args.rounds):
                sqlite_path = ensure_clean(args.workdir / "bridge.sqlite3")
                run = bench.run(
                    "1 replica, SQLite",
                    [f"path = {json.dumps(str(sqlite_path))}"],
                    functools.partial(count_rows, sqlite_path, "events"),
                )
                done.setdefault(run.setup, []).append(run)
                for replicas in args.replicas:
                    url = asyncio.run(_fresh_database(server_url, f"bridge_bench_{replicas}"))
                    run = bench.run(
                        f"{replicas} replica{'s' if replicas > 1 else ''}, PostgreSQL",
                        [f"url = {json.dumps(url)}"] * replicas,
                        functools.partial(_count_events_now, url),
                        postgres_pid,
                    )
                    done.setdefault(run.setup, []).append(run)
            _table(workload, done)
        print(f"\n{HEADER}", flush=True)
        for workload, done in runs.items():
            _cpu_figure(setting, workload, done, figures)
        # The second: every webhook to the replica without the lanes (the other one's).
        for destinations, elsewhere in ((1, False), (10, False), (1, True)):
            url = asyncio.run(_fresh_database(server_url, "bridge_bench_latency"))
            latency = measure_latency(
                args.workdir,
                setting.sync,
                f"url = {json.dumps(url)}",
                first_id=LATENCY_IDS,
                destinations=destinations,
                lanes_elsewhere=elsewhere,
            )
            setup = (
                "2 replicas, the webhooks to the one without the lanes"
                if elsewhere
                else "1 replica"
            )
            target = latency_target(setting)
            value = latency.p(0.99)
            _report(
                figures,
                Figure(
                    "replicas",
                    f"{setup}, PostgreSQL: 202 received -> chat received, p99,"
                    f" {latency.rate:g} events/s to {destinations}",
                    value,
                    "ms",
                    target.text if target else "",
                    (target.met(value) and not latency.missing) if target else None,
                    setting,
                    latency.note(),
                ),
            )
        url = asyncio.run(_fresh_database(server_url, "bridge_bench_drain"))
        drained = measure_pg_drain(args.workdir, setting.sync, url, events=DRAIN_EVENTS)
        target = other_target(setting, ">= 3,000/s", lambda v: v >= 3000)
        _report(
            figures,
            Figure(
                "replicas",
                f"1 replica, PostgreSQL: {drained.deliveries:,} deliveries to 10 fake chats,"
                " drained after an ANALYZE of the full backlog, first->last arrival",
                drained.rate,
                "deliveries/s",
                target.text if target else "",
                (target.met(drained.rate) and drained.received == drained.deliveries)
                if target
                else None,
                setting,
                drained.note(),
            ),
        )
    return runs


def _report(figures: list[Figure], figure: Figure) -> None:
    figures.append(figure)
    print(figure.row(), flush=True)


def _cpu_figure(
    setting: DiskSetting, workload: str, runs: dict[str, list[Run]], figures: list[Figure]
) -> None:
    """One replica on PostgreSQL: bridge and PostgreSQL CPU per accepted event, the median run."""
    done = runs.get("1 replica, PostgreSQL")
    if not done:
        return
    run = sorted(done, key=lambda r: r.per_second)[len(done) // 2]
    applies = setting.sync.delay_us <= 1000 and run.postgres_cpu is not None
    _report(
        figures,
        Figure(
            "replicas",
            f"1 replica, PostgreSQL, {workload}: CPU per accepted event (bridge + PostgreSQL)",
            run.cpu_per_event_us,
            "µs",
            f"<= {CPU_TARGET_US:g} µs" if applies else "",
            run.cpu_per_event_us <= CPU_TARGET_US if applies else None,
            setting,
            f"{run.per_second:,.0f} events/s; bridge {run.bridge_cpu:.2f} cores,"
            f" PostgreSQL {run.postgres_cpu or 0:.2f} cores; outside the bench"
            f" {run.others_cpu:.2f} cores",
        ),
    )


def _table(workload: str, runs: dict[str, list[Run]]) -> None:
    medians = {
        setup: sorted(done, key=lambda r: r.per_second)[len(done) // 2]
        for setup, done in runs.items()
    }
    sqlite = medians["1 replica, SQLite"]
    print(
        f"\n{workload}:\n"
        "| setup | accepted events/s | vs SQLite | p50 ms | p99 ms | accepted of requests"
        " | errors | bridge CPU (cores) | PostgreSQL CPU (cores) | CPU µs/event"
        " | outside the bench (cores) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    for setup, median in medians.items():
        print(_row(median, sqlite, runs[setup]), flush=True)


if __name__ == "__main__":
    main()
