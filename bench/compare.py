"""This checkout against an earlier revision, on the same machine the same day.

A machine's speed changes from day to day (a virtual machine's neighbours): a figure taken
today is compared with another revision's taken now, not with last week's table. This
checks REV out in a git worktree with a venv of its own, then runs `bench.run` on each side
in turn, alternating, `--rounds` times, and prints each figure of both with the ratio of
their medians. Run from the repository root:

    python -m bench.compare bc5e6c4 [intake latency drain] [--rounds 2] [--shim-ms 0]

The worktree, its venv and both sides' workdirs stay in --workdir (reused by a later run
against the same revision); each side's tables are in <workdir>/<side>-<round>.txt.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from bench.disk import ROOT, find_shim_source

# "... (1,853/s)" or "(476 µs vs 99 µs)": what a label says of one run, not of the figure.
_RUN_DETAIL = re.compile(r" \([^)]*\d[^)]*\)")
_CPU = re.compile(r"(\d+) µs CPU/(?:event|delivery)")

Figures = dict[str, list[tuple[float, str]]]  # label -> (value, unit) per round


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev", help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("benches", nargs="*", default=["intake", "latency", "drain"])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--shim-ms", default="0", help="as bench.run's (one setting: 0, 1, 5)")
    parser.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp/jobserv-bridge-compare"), help="on a disk"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sides = {args.rev: _checkout(args.rev, args.workdir), "this": (ROOT, Path(sys.executable))}
    found: dict[str, Figures] = {side: {} for side in sides}
    shim = [] if float(args.shim_ms) == 0 else ["--slowsync-source", str(find_shim_source(None))]
    for number in range(1, args.rounds + 1):
        for side, (root, python) in sides.items():
            name = "base" if side == args.rev else "this"
            workdir = args.workdir / f"{name}-runs"
            command = [str(python), "-m", "bench.run", *args.benches, "--rounds", "1"]
            command += ["--shim-ms", args.shim_ms, "--workdir", str(workdir), *shim]
            print(f"round {number}, {side}: {' '.join(command[1:])}", flush=True)
            with (args.workdir / f"{name}-{number}.txt").open("w") as out:
                subprocess.run(command, cwd=root, stdout=out, stderr=subprocess.STDOUT, check=True)
            _collect(workdir / "results.json", found[side])
    _report(args.rev, found[args.rev], found["this"])


def _checkout(rev: str, workdir: Path) -> tuple[Path, Path]:
    """REV's worktree (made once) and its venv's python, with REV installed in it."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = workdir / f"rev-{commit[:12]}"
    if not tree.exists():
        _git("worktree", "add", "--detach", str(tree), commit)
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        install = [str(python), "-m", "pip", "install", "--quiet", "-e", str(tree)]
        subprocess.run(install, check=True)
    return tree, python


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _collect(results: Path, into: Figures) -> None:
    for figure in json.loads(results.read_text())["figures"]:
        label = _RUN_DETAIL.sub("", figure["what"])
        into.setdefault(label, []).append((float(figure["value"]), str(figure["unit"])))
        cpu = _CPU.search(figure["note"])
        if cpu:
            into.setdefault(f"{label}: CPU", []).append((float(cpu.group(1)), "µs"))


def _report(rev: str, base: Figures, this: Figures) -> None:
    print(f"\n| figure | {rev} | this checkout | this / {rev} (medians) |\n|---|---|---|---|")
    for label, theirs in base.items():
        ours = this.get(label)
        if not ours:
            continue
        unit = theirs[0][1]
        before = statistics.median(v for v, _ in theirs)
        after = statistics.median(v for v, _ in ours)
        ratio = f"{after / before:.2f}" if before else "-"
        print(f"| {label} | {_values(theirs)} {unit} | {_values(ours)} {unit} | {ratio} |")


def _values(runs: list[tuple[float, str]]) -> str:
    return " / ".join(f"{value:,.2f}" if value < 10 else f"{value:,.0f}" for value, _ in runs)


if __name__ == "__main__":
    main()
