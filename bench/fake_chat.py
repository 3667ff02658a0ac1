"""A fast fake chat: answers 200 "ok" at once to any POST, and counts what arrived.

GET /_stats answers {"count", "first", "last", "by_path"} (times are time.time()).
With --record, each arrival's time is also noted by its path and the `build_id` of the
JSON message (a generic webhook's), and GET /_arrivals answers {path: {build_id: time}}.
Run: python -m bench.fake_chat --port 9000 [--record]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from aiohttp import web


class ArrivalLog:
    def __init__(self, record: bool = False) -> None:
        self.record_builds = record
        self.builds: dict[str, dict[int, float]] = {}
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.by_path: Counter[str] = Counter()

    def record(self, path: str) -> float:
        now = time.time()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1
        self.by_path[path] += 1
        return now


def create_app(arrivals: ArrivalLog) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        now = arrivals.record(request.path)
        if arrivals.record_builds:
            build_id = int(json.loads(body)["build_id"])
            arrivals.builds.setdefault(request.path, {})[build_id] = now
        return web.Response(text="ok")

    async def builds(request: web.Request) -> web.Response:
        return web.json_response(arrivals.builds)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "count": arrivals.count,
                "first": arrivals.first,
                "last": arrivals.last,
                "by_path": dict(arrivals.by_path),
            }
        )

    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_arrivals", builds)
    app.router.add_post("/{path:.*}", receive)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", action="store_true", help="note each build's arrival")
    args = parser.parse_args()
    app = create_app(ArrivalLog(args.record))
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
