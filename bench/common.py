"""What the benchmarks share: signed bodies, configs, processes, wrk, the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.disk import SyncSetting
from bridge.jobserv import parse_build, sign
from bridge.store import NewEvent
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from bridge.transitions import Transition

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECRET = "UseSomethingGoodHere"
# A real JobServ body (a failed build of 3 runs, 2.1 kB), as JobServ's json.dumps wrote it.
TEMPLATE = (ROOT / "tests" / "fixtures" / "containers-devel-failed.json").read_text()
TEMPLATE_ID = 68


def webhook_body(build_id: int, status: str = "FAILED") -> bytes:
    """The template build renumbered: its identity (url) is unique per `build_id`."""
    text = TEMPLATE.replace(f"/builds/{TEMPLATE_ID}", f"/builds/{build_id}")
    text = text.replace(f'"build_id": {TEMPLATE_ID},', f'"build_id": {build_id},', 1)
    if status != "FAILED":
        text = text.replace('"status": "FAILED", "runs"', f'"status": "{status}", "runs"', 1)
    return text.encode()


def write_bodies(path: Path, first_id: int, count: int, status: str) -> Path:
    """`count` signed bodies for wrk, one per line: signature, a tab, the body."""
    with path.open("wb") as out:
        for build_id in range(first_id, first_id + count):
            body = webhook_body(build_id, status)
            out.write(sign(SECRET, body).encode() + b"\t" + body + b"\n")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sqlite_toml(store: Path) -> str:
    """The [store] table's body for a SQLite file."""
    return f"path = {json.dumps(str(store))}"


def bridge_config(
    path: Path, *, port: int, store: Path | str, chat_port: int, destinations: int = 1
) -> Path:
    """A serve config: failed builds of andy-corp go to `destinations` fake chats, lifted limits.

    `store` is a SQLite file, or the [store] table's body (a PostgreSQL `url = ...`).
    """
    names = [f"d{i}" for i in range(destinations)]
    store_toml = sqlite_toml(store) if isinstance(store, Path) else store
    lines = [
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout = "2s"\n',
        f"[store]\n{store_toml}\n",
        f'[[sources]]\nname = "bench"\nsecret = "{SECRET}"\nfactories = ["*"]\n',
    ]
    for name in names:
        lines.append(
            f'[[destinations]]\nname = "{name}"\ntype = "generic"\n'
            f'url = "http://127.0.0.1:{chat_port}/{name}"\nrate_limit = 0\ntimeout = "5s"\n'
        )
    lines.append(
        f'[[routes]]\nfactories = ["andy-corp"]\nnotify = ["failed"]\n'
        f"destinations = {json.dumps(names)}\n"
    )
    path.write_text("\n".join(lines))
    return path


# -- processes ---------------------------------------------------------------


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    ready_after: float  # seconds from spawn to the first good answer

    @property
    def pid(self) -> int:
        return self.process.pid


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


@contextlib.contextmanager
def service(
    name: str,
    args: list[str],
    port: int,
    ready_path: str,
    log_dir: Path,
    deadline: float = 60.0,
    sync: SyncSetting | None = None,
) -> Iterator[Service]:
    """Run `python args...` until the block ends: SIGTERM, then SIGKILL after 10 s.

    With `sync`, the process runs under that setting's shim (and is checked to).
    """
    log = (log_dir / f"{name}.log").open("wb")
    started = time.monotonic()
    env = None if sync is None else sync.environment()
    process = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {log.name}")
            try:
                get_json(f"http://127.0.0.1:{port}{ready_path}", timeout=1.0)
                break
            except OSError:
                if time.monotonic() - started > deadline:
                    raise RuntimeError(f"{name} not ready after {deadline:.0f}s") from None
                time.sleep(0.02)
        ready_after = time.monotonic() - started
        if sync is not None:
            sync.check_loaded(process.pid, name)
        yield Service(name, process, port, ready_after)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def serve(
    config: Path, port: int, log_dir: Path, sync: SyncSetting, name: str = "bridge"
) -> ContextManager[Service]:
    """`python -m bridge serve` at its default log level (info), logging to a file.

    It runs under `sync`: with the shim preloaded when that setting slows syncs down.
    """
    args = ["-m", "bridge", "serve", "--config", str(config)]
    return service(name, args, port, "/healthz", log_dir, sync=sync)


def fake_chat(port: int, log_dir: Path, record: bool = False) -> ContextManager[Service]:
    args = ["-m", "bench.fake_chat", "--port", str(port), *(["--record"] if record else [])]
    return service("fake-chat", args, port, "/_stats", log_dir)


def floor_app(port: int, log_dir: Path) -> ContextManager[Service]:
    args = ["-m", "bench.floor_app", "--port", str(port), "--secret", SECRET]
    return service("floor", args, port, "/healthz", log_dir)


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a live process, in MB (VmHWM in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, "no VmHWM in /proc status"
    return int(match.group(1)) / 1024


# -- wrk -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time a live process used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idling, since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """CPU time of this process's finished children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuUse:
    server: float  # cores the server used (1.0 = one core all the time)
    others: float  # cores used outside the benchmark's processes: other work, the kernel's
    seconds: float  # the span's length

    def note(self) -> str:
        return f"server CPU {self.server:.0%} of a core, outside the benchmark {self.others:.0%}"


class CpuWatch:
    """CPU used over a span by the benchmark's processes (the server first), and by the rest.

    The rest is the machine's busy time less ours and our finished children's (wrk): work
    of other processes on the machine, and kernel work not charged to a process.
    """

    def __init__(self, pids: tuple[int, ...]) -> None:
        self.pids = pids
        self.ours = [cpu_seconds(pid) for pid in pids]
        self.machine = machine_busy_seconds()
        self.children = _children_cpu_seconds()
        self.started = time.monotonic()

    def stop(self) -> CpuUse:
        wall = time.monotonic() - self.started
        ours = [cpu_seconds(pid) - old for pid, old in zip(self.pids, self.ours, strict=True)]
        machine = machine_busy_seconds() - self.machine
        children = _children_cpu_seconds() - self.children
        return CpuUse(ours[0] / wall, max(0.0, machine - sum(ours) - children) / wall, wall)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu: CpuUse

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def wrk(
    port: int, bodies: Path, seconds: float, connections: int, pids: tuple[int, ...]
) -> WrkResult:
    """One wrk thread (the machine has 2 cores) posting `bodies` for `seconds`.

    `pids` are the benchmark's own processes, the server first, for a CpuWatch.
    """
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
        "-s", str(BENCH / "post_signed.lua"), f"http://127.0.0.1:{port}", "--", str(bodies),
    ]  # fmt: skip
    watch = CpuWatch(pids)
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    cpu = watch.stop()
    match = re.search(r"^WRK_RESULT (.*)$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no result from wrk:\n{output}")
    fields = dict(item.split("=") for item in match.group(1).split())
    return WrkResult(
        requests=int(fields["requests"]),
        seconds=int(fields["duration_us"]) / 1e6,
        non2xx=int(fields["non2xx"]),
        socket_errors=int(fields["socket_errors"]),
        p50_ms=int(fields["p50_us"]) / 1000,
        p99_ms=int(fields["p99_us"]) / 1000,
        cpu=cpu,
    )


# -- the store -------------------------------------------------------------------


def count_rows(store: Path, table: str, where: str = "1") -> int:
    """Read-only count, safe while serve writes (WAL readers do not block the writer)."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        (count,) = db.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()
        return int(count)


def fill_backlog(store: Path | str, events: int, destinations: int, first_id: int = 1) -> None:
    """Pending deliveries through the bridge's own store's accept (`store`: a SQLite file, or
    a PostgreSQL URL): events x destinations.

    Builds alternate failed and passed, as a trigger's history does, so no failing streak
    grows; every event goes to every destination whatever its outcome.
    """
    names = [f"d{i}" for i in range(destinations)]

    def plan(change: Transition) -> list[tuple[str, tuple[str, ...]]]:
        return [(name, ()) for name in names]

    async def fill() -> None:
        outbox = SqliteStore(store) if isinstance(store, Path) else PostgresStore(store)
        await outbox.open(serving=False)
        try:
            for start in range(first_id, first_id + events, 1000):
                stop = min(start + 1000, first_id + events)
                await asyncio.gather(
                    *(outbox.accept(_new_event(i), plan) for i in range(start, stop))
                )
        finally:
            await outbox.close()

    asyncio.run(fill())


def alternating_status(build_id: int) -> str:
    return "FAILED" if build_id % 2 else "PASSED"


def _new_event(build_id: int) -> NewEvent:
    body = webhook_body(build_id, alternating_status(build_id))
    build = parse_build(body)
    return NewEvent(
        key=build.identity,
        factory=build.factory,
        trigger=build.trigger_name or "",
        build_id=build_id,
        status=build.status,
        body=body,
        received_at=time.time(),
        completed_at=build.completed.timestamp() if build.completed else None,
    )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def ensure_clean(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path
