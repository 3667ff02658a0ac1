"""Shares of a serve's time by kind of work, from a py-spy profile in its raw format.

    py-spy record --pid PID --duration 7 --rate 250 --gil --threads --format raw -o serve.txt
    python -m bench.kinds serve.txt

Each sample of the event loop's thread (MainThread) goes to the deepest of its frames
that is of a kind below (a log line's JSON is the log line's, not "JSON of the answer");
the other threads' samples are counted apart.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# Checked in this order on each frame, the deepest frame first.
KINDS = [
    ("the build parsed and validated", r"jobserv\.py|pydantic|urllib/parse"),
    ("the log lines", r"logging/|bridge/logs\.py|bridge/redact\.py"),
    ("Prometheus metrics", r"prometheus_client"),
    ("the HMAC", r"hmac\.py|signed_by|signature_digest"),
    ("the event to store", r"bridge/intake\.py"),
    ("routing", r"bridge/routing\.py|bridge/store/records\.py"),
    (
        "waiting on the store (futures, the hand-off)",
        r"sqlite_writer\.py|sqlite_intake\.py|_stored \(",
    ),
    ("the deliveries", r"bridge/delivery\.py|bridge/recorder\.py|bridge/chats/|render"),
    ("JSON of the answer", r"json/"),
    ("aiohttp (its server, and a delivery's POST)", r"aiohttp/"),
    ("the handler's own lines", r"bridge/server\.py"),
    ("the event loop's own work", r"asyncio/|selectors\.py"),
]
PATTERNS = [(kind, re.compile(pattern)) for kind, pattern in KINDS]


def kind_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for kind, pattern in PATTERNS:
            if pattern.search(frame):
                return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path, help="py-spy's --format raw output")
    args = parser.parse_args()
    shares: Counter[str] = Counter()
    elsewhere = 0
    for line in args.profile.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        thread, *frames = stack.split(";")
        if "MainThread" in thread:
            shares[kind_of(frames)] += int(count)
        else:
            elsewhere += int(count)
    loop = sum(shares.values())
    print(f"event loop thread: {loop} samples, {100 * loop / max(1, loop + elsewhere):.0f}% of all")
    for kind, count in shares.most_common():
        print(f"{100 * count / max(1, loop):5.1f}% {kind}")


if __name__ == "__main__":
    main()
