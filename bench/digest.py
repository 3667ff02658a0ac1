"""Digests against Slack's rate limit (issue 13 §1), measured through `jobserv-bridge serve`.

Targets: 30 failed builds of 30 triggers posted within 1 s to a `slack-webhook`
destination with its default rate limit (1 a second, bursts of 3): every build's link
is in the chat within 5 s, in at most 5 messages; a lone failure on an idle lane reaches
the chat within 100 ms of its 202.

The fake Slack (tests/fakes/chat_server.py) runs in this process with Slack's incoming
webhook limit: past it, 429 with Retry-After. Run from the repository root:

    python -m bench.digest            # 5 rounds
    python -m bench.digest --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import SECRET, TEMPLATE, free_port, serve
from bridge.jobserv import sign
from tests.fakes.chat_server import FakeChat, slack_webhook_limit

SLACK = "/services/T0/B0/bench"
BURST = 30
BUILD_LINK = re.compile(r"/lmp/builds/(\d+)(?=[|> \"\\])")


def failure(number: int) -> bytes:
    """The fixture's failed build as build `number` of its own trigger."""
    build = json.loads(TEMPLATE)
    build.update(
        build_id=number,
        trigger_name=f"platform-{number}",
        url=f"https://api.foundries.io/projects/andy-corp/lmp/builds/{number}/",
        web_url=f"https://ci.foundries.io/projects/andy-corp/lmp/builds/{number}",
    )
    return json.dumps(build).encode()


def config(folder: Path, port: int, chat: FakeChat) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout = "2s"\n'
        f'[store]\npath = "{folder / "bridge.sqlite3"}"\n'
        f'[[sources]]\nname = "bench"\nsecret = "{SECRET}"\nfactories = ["*"]\n'
        f'[[destinations]]\nname = "slack"\ntype = "slack-webhook"\nurl = "{chat.url(SLACK)}"\n'
        '[[routes]]\nnotify = ["failed"]\ndestinations = ["slack"]\n'
    )
    return path


async def post(session: aiohttp.ClientSession, port: int, body: bytes) -> float:
    """POST the body; the monotonic time its 202 arrived."""
    headers = {"Content-Type": "application/json", "X-JobServ-Sig": sign(SECRET, body)}
    async with session.post(f"http://127.0.0.1:{port}/webhook", data=body, headers=headers) as r:
        assert r.status == 202, await r.text()
        return time.monotonic()


def shown(chat: FakeChat) -> set[int]:
    return {int(n) for r in chat.delivered(SLACK) for n in BUILD_LINK.findall(r.text)}


async def posted_over(
    session: aiohttp.ClientSession, port: int, numbers: range, seconds: float
) -> None:
    """POST the failures of `numbers`, their starts spread evenly over `seconds`."""

    async def at(index: int, number: int) -> None:
        await asyncio.sleep(index * seconds / len(numbers))
        await post(session, port, failure(number))

    await asyncio.gather(*(at(i, n) for i, n in enumerate(numbers)))


async def one_round(first: int, port: int, chat: FakeChat, spread: float) -> dict[str, float]:
    """A lone failure on the idle lane, then a burst of BURST failures over `spread` s."""
    chat.clear()
    async with aiohttp.ClientSession() as session:
        answered = await post(session, port, failure(first))
        [lone] = await chat.wait_for(1, path=SLACK, timeout=10)
        lone_ms = (lone.received_at - answered) * 1000
        await asyncio.sleep(4)  # the lane is idle again, its bucket full
        chat.clear()
        numbers = range(first + 1, first + 1 + BURST)
        started = time.monotonic()
        await posted_over(session, port, numbers, spread)
        posted = time.monotonic() - started
        await chat.wait_until(lambda c: shown(c) >= set(numbers), timeout=60)
        took = time.monotonic() - started
        refused = sum(1 for _, status in chat.answered if status == 429)
        return {
            "spread_s": spread,
            "lone_ms": lone_ms,
            "posted_s": posted,
            "all_links_s": took,
            "messages": len(chat.delivered(SLACK)),
            "refused_429": refused,
        }


async def main(rounds: int) -> None:
    async with FakeChat() as chat:
        chat.default(SLACK, slack_webhook_limit())
        with tempfile.TemporaryDirectory() as folder:
            port = free_port()
            with serve(config(Path(folder), port, chat), port, Path(folder)):
                results = []
                for number in range(rounds * 2):
                    spread = 0.0 if number % 2 == 0 else 0.95  # at once, or over the second
                    found = await one_round(1 + number * (BURST + 1), port, chat, spread)
                    print(json.dumps(found))
                    results.append(found)
                    await asyncio.sleep(4)
    for spread in (0.0, 0.95):
        some = [r for r in results if r["spread_s"] == spread]
        worst_links = max(r["all_links_s"] for r in some)
        worst_messages = max(r["messages"] for r in some)
        print(
            f"burst of {BURST} posted over {spread:.2f} s: every link in the chat within "
            f"{worst_links:.2f} s (target 5 s), in {worst_messages:.0f} messages at worst "
            f"(target 5); 429s: {sum(r['refused_429'] for r in some):.0f}"
        )
    lone = [r["lone_ms"] for r in results]
    print(
        f"lone failure on an idle lane, 202 -> chat: median {statistics.median(lone):.1f} ms,"
        f" worst {max(lone):.1f} ms (target 100 ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
