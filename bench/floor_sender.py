"""The floor of a sender: the least a delivery can cost on this machine.

Posts the sample build as JSON (as a `generic` destination does) to the fake chat's paths
/d0.../dN, one sender per path, each waiting for its answer before the next, on one
aiohttp session: no store, no template, no log. Prints one JSON line: the requests sent,
the seconds they took and the CPU seconds this process spent.
Run: python -m bench.floor_sender --port 9000 [--requests 10000] [--senders 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from bench.common import TEMPLATE


async def send_all(port: int, requests: int, senders: int) -> dict[str, float]:
    build = json.loads(TEMPLATE)
    async with aiohttp.ClientSession() as session:

        async def sender(path: int, count: int) -> None:
            url = f"http://127.0.0.1:{port}/d{path}"
            for number in range(count):
                headers = {"Idempotency-Key": f"floor-{path}-{number}"}
                async with session.post(url, json=build, headers=headers) as response:
                    await response.read()

        await asyncio.gather(*(sender(path, 20) for path in range(senders)))  # warm-up
        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(sender(path, requests // senders) for path in range(senders)))
        seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    return {"requests": requests // senders * senders, "seconds": seconds, "cpu": cpu_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(send_all(args.port, args.requests, args.senders))))


if __name__ == "__main__":
    main()
