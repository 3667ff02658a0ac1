"""Builds whose fields are made to hurt the logs: huge, or full of control characters.

A signed sender may put anything in a build's fields. A near-1 MB trigger of repeated
`http://` once froze the event loop in the log redactor (quadratic backtracking): the
202, `/healthz` and the status page must still answer at once. A trigger holding a
newline and terminal escapes once forged a whole log line: one record is one line.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FAST_DELIVERY, generic_destination, jobserv_source, signed_headers
from tests.fakes.chat_server import FakeChat
from tests.serve import BridgeProcess, event_body, free_port

# Generous: a linear bridge answers in milliseconds; the quadratic one took minutes.
ANSWER_WITHIN = aiohttp.ClientTimeout(total=15.0)
HUMAN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")
FORGED = "2026-01-01 00:00:00,000 INFO bridge.intake: event 999: forged"
# A line break, a carriage return, a terminal escape (erase the line), C1's next line,
# and Unicode's line separator: each ends a line for some reader.
BREAKS = ("\n", "\r", "\x1b[2K", "\x85", "\u2028")


def with_trigger(number: int, trigger: str) -> bytes:
    build = json.loads(event_body(number))
    build["trigger_name"] = trigger
    return json.dumps(build).encode()


@pytest.fixture
async def bridge(fake_chat: FakeChat, tmp_path: Path) -> AsyncIterator[tuple[BridgeProcess, str]]:
    """A serve process with the status page on; yields it and the page's URL."""
    process = BridgeProcess(tmp_path / "config.toml", free_port(), tmp_path)
    admin_port = free_port()
    process.config.write_text(
        f"""
        [server]
        port = {process.port}
        shutdown_timeout = "0.5s"
        [admin]
        port = {admin_port}
        [store]
        path = "bridge.sqlite3"
        {FAST_DELIVERY}
        {jobserv_source()}
        {generic_destination(fake_chat, "team")}
        [[routes]]
        notify = ["failed", "passed"]
        destinations = ["team"]
        """
    )
    yield process, f"http://127.0.0.1:{admin_port}"
    await process.close()


async def test_a_huge_trigger_of_urls_is_taken_and_shown_at_once(
    bridge: tuple[BridgeProcess, str],
) -> None:
    process, admin = bridge
    await process.start()
    body = with_trigger(1, "http://" * ((1024 * 1024 - 4096) // len("http://")))
    async with aiohttp.ClientSession(timeout=ANSWER_WITHIN) as client:
        async with client.post(
            f"{process.base_url}/webhook", data=body, headers=signed_headers(body)
        ) as answer:
            assert answer.status == 202
        async with client.get(f"{process.base_url}/healthz") as answer:
            assert answer.status == 200
        for path in ("/", "/api/events"):
            async with client.get(f"{admin}{path}") as answer:
                assert answer.status == 200
                assert "http://http://" in await answer.text()
    process.send_signal(signal.SIGTERM)
    assert await process.wait_exit(timeout=10.0) == 0
    # The log names the build, but holds no megabyte line.
    [accepted] = [line for line in process.stderr().splitlines() if "accepted" in line]
    assert "http://http://" in accepted
    assert len(accepted) < 2000


@pytest.mark.parametrize("log_format", ["human", "json"])
async def test_control_characters_in_a_trigger_cannot_forge_a_log_line(
    log_format: str, bridge: tuple[BridgeProcess, str]
) -> None:
    process, _ = bridge
    process.args = ["--log-format", log_format]
    await process.start()
    trigger = "nightly" + "".join(f"{mark}{FORGED}" for mark in BREAKS)
    assert await process.post(with_trigger(1, trigger)) == 202
    process.send_signal(signal.SIGTERM)
    assert await process.wait_exit(timeout=10.0) == 0

    log = process.stderr()
    assert "\x1b" not in log
    lines = log.splitlines()  # which ends a line at each of BREAKS
    assert not [line for line in lines if line.startswith(FORGED)]
    if log_format == "human":
        assert all(HUMAN_LINE.match(line) for line in lines), log
        [accepted] = [line for line in lines if "accepted" in line]
        assert "nightly\\n2026-01-01" in accepted
        assert "\\x1b[2K" in accepted
    else:
        entries = [json.loads(line) for line in lines]
        [accepted] = [e for e in entries if "accepted" in e["message"]]
        assert trigger.startswith(accepted["trigger"].rstrip("…"))
        assert len(accepted["trigger"]) < len(trigger)  # bounded
