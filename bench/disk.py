"""The disk under the stores: which file system, what a sync costs, and a slower one on demand.

A store's commit waits for fsync, so the benchmarks' figures depend on the disk they run
on. This module finds the file system of the work folder (and refuses a tmpfs, where a
sync costs nothing, unless told), measures the cost of a sync there, and builds the
slowsync shim (an LD_PRELOAD library whose source lives outside the repository, see
`find_shim_source`) that makes every fsync/fdatasync take SLOWSYNC_US microseconds longer:
the same disk latency on any machine, for the bridge and for a PostgreSQL started under it.

Measuring in a child process is the point: the shim only acts where it is preloaded.

    python -m bench.disk measure DIR [--probes N]   # prints the sync cost in DIR as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIM_SOURCE = Path("shared") / "tools" / "slowsync.c"
RAM_FILE_SYSTEMS = {"tmpfs", "ramfs"}


# -- the file system ----------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    device: str
    fstype: str
    mountpoint: str

    def __str__(self) -> str:
        return f"{self.fstype} on {self.device}"

    @property
    def in_memory(self) -> bool:
        return self.fstype in RAM_FILE_SYSTEMS


def _unescape(field: str) -> str:
    """/proc/self/mountinfo writes a space as \\040 (and tab, newline, backslash alike)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def disk_of(path: Path) -> Disk:
    """The mount holding `path`: the longest mount point above it (the last one mounted wins)."""
    target = path.resolve()
    found = Disk("?", "?", "/")
    best = -1
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        mountpoint = Path(_unescape(before.split()[4]))
        fstype, device = after.split()[:2]
        if (target == mountpoint or mountpoint in target.parents) and len(mountpoint.parts) >= best:
            best = len(mountpoint.parts)
            found = Disk(_unescape(device), fstype, str(mountpoint))
    return found


def refuse_tmpfs(workdir: Path, allowed: bool) -> Disk:
    disk = disk_of(workdir)
    if disk.in_memory and not allowed:
        raise SystemExit(
            f"{workdir} is on {disk} ({disk.mountpoint}): a sync costs nothing there, so the"
            " figures would say nothing about a real disk. Choose a --workdir on a disk, or"
            " pass --allow-tmpfs to measure there anyway."
        )
    return disk


# -- the shim -----------------------------------------------------------------------


def find_shim_source(given: Path | None) -> Path:
    """The shim's C source: as given, else ../shared/tools/slowsync.c beside the checkout.

    From a git worktree, "beside the checkout" is also beside the main checkout that the
    worktree belongs to.
    """
    if given is not None:
        if not given.is_file():
            raise SystemExit(f"no slowsync source at {given}")
        return given
    candidates = [ROOT.parent / SHIM_SOURCE]
    common = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if common:
        candidates.append(Path(common).parent.parent / SHIM_SOURCE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SystemExit(
        "cannot find the slowsync shim's source (looked at "
        + ", ".join(str(c) for c in candidates)
        + "); give it with --slowsync-source, or measure the plain disk only with --shim-ms 0"
    )


def build_shim(source: Path, workdir: Path) -> Path:
    """Compile the shim into the work folder (again only when its source is newer)."""
    library = workdir / "slowsync.so"
    if library.exists() and library.stat().st_mtime >= source.stat().st_mtime:
        return library
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
        check=True,
    )
    library.chmod(0o755)  # a PostgreSQL running as its own user loads it too
    return library


@dataclass(frozen=True)
class SyncSetting:
    """How slow every sync is made: 0 is the plain disk (no shim loaded)."""

    delay_us: int
    shim: Path | None

    @property
    def shim_label(self) -> str:
        return "none" if self.delay_us <= 0 else f"+{self.delay_us / 1000:g} ms"

    def environment(self) -> dict[str, str]:
        """The environment of a process whose syncs this setting governs."""
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env.pop("SLOWSYNC_US", None)
        if self.delay_us > 0:
            assert self.shim is not None, "a sync delay needs the shim"
            env["LD_PRELOAD"] = str(self.shim)
            env["SLOWSYNC_US"] = str(self.delay_us)
        return env

    def check_loaded(self, pid: int, name: str) -> None:
        """Fail loudly if a process that should run under the shim does not."""
        if self.delay_us <= 0 or self.shim is None:
            return
        maps = Path(f"/proc/{pid}/maps").read_text()
        if str(self.shim) not in maps:
            raise RuntimeError(f"{name} (pid {pid}) runs without {self.shim}")


# -- the cost of a sync ---------------------------------------------------------------


@dataclass(frozen=True)
class SyncCost:
    probes: int
    p50_ms: float
    mean_ms: float
    max_ms: float

    def __str__(self) -> str:
        return f"{self.p50_ms:.2f} ms"

    def note(self) -> str:
        return (
            f"fsync of a small file: p50 {self.p50_ms:.2f} ms, mean {self.mean_ms:.2f} ms,"
            f" max {self.max_ms:.1f} ms ({self.probes} probes)"
        )


def probe_syncs(folder: Path, probes: int) -> SyncCost:
    """Append 100 bytes and fsync, `probes` times, as a log's commit does: time each sync."""
    path = folder / f"sync-probe-{os.getpid()}"
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"x" * 100)
        os.fsync(fd)  # the file's creation is not what is measured
        for _ in range(probes):
            os.write(fd, b"x" * 100)
            started = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return SyncCost(probes, statistics.median(times), statistics.fmean(times), max(times))


def measure_sync(folder: Path, setting: SyncSetting, probes: int = 200) -> SyncCost:
    """The sync cost in `folder` for a process run under `setting` (a child process)."""
    output = subprocess.run(
        [sys.executable, "-m", "bench.disk", "measure", str(folder), "--probes", str(probes)],
        cwd=ROOT,
        env=setting.environment(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60 + probes * max(setting.delay_us, 10_000) / 1e6,
    ).stdout
    return SyncCost(**json.loads(output))


@dataclass(frozen=True)
class DiskSetting:
    """One setting the figures run under: the disk, the shim's delay, the sync cost measured."""

    disk: Disk
    sync: SyncSetting
    cost: SyncCost

    def header(self) -> str:
        shim = (
            "the plain disk (no shim)"
            if self.sync.delay_us <= 0
            else f"every sync made {self.sync.shim_label} slower (slowsync, SLOWSYNC_US="
            f"{self.sync.delay_us})"
        )
        return f"{shim}; {self.disk} at {self.disk.mountpoint}; {self.cost.note()}"


def settings(
    workdir: Path, delays_ms: list[float], source: Path | None, probes: int
) -> list[DiskSetting]:
    """Each requested delay, with the shim built when any needs it and its sync cost measured."""
    disk = disk_of(workdir)
    shim = build_shim(find_shim_source(source), workdir) if any(d > 0 for d in delays_ms) else None
    found = []
    for delay in delays_ms:
        sync = SyncSetting(round(delay * 1000), shim if delay > 0 else None)
        found.append(DiskSetting(disk, sync, measure_sync(workdir, sync, probes)))
    return found


def add_options(parser: argparse.ArgumentParser) -> None:
    """The disk options shared by bench.run and bench.replicas."""
    parser.add_argument(
        "--shim-ms",
        type=float,
        nargs="+",
        default=[0.0, 1.0, 5.0],
        help="sync delays to run every figure under, in ms; 0 is the plain disk (default: 0 1 5)",
    )
    parser.add_argument(
        "--slowsync-source",
        type=Path,
        help="the shim's C source (default: ../shared/tools/slowsync.c beside the checkout)",
    )
    parser.add_argument(
        "--allow-tmpfs",
        action="store_true",
        help="measure even when the workdir is on a tmpfs (a sync costs nothing there)",
    )
    parser.add_argument(
        "--sync-probes", type=int, default=200, help="fsyncs timed to measure a sync's cost"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("measure", help="time fsyncs of a small file in DIR")
    measure.add_argument("folder", type=Path)
    measure.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()
    cost = probe_syncs(args.folder, args.probes)
    print(json.dumps(cost.__dict__))


if __name__ == "__main__":
    main()
