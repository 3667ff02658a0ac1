"""Broken, slow and hostile clients against `python -m bridge serve`, in raw HTTP.

aiohttp's own test client cannot send a malformed request, dribble a body or drop a
connection half way, so these tests speak HTTP over sockets to a real bridge process.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SECRET
from tests.serve import BridgeProcess, event_body, free_port

# How long a test waits for an answer it expects at once: generous, for busy machines.
PROMPTLY = 5.0


def bridge_toml(port: int, server: str = "", admin: str = "enabled = false") -> str:
    return textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        shutdown_timeout = "2s"
        {server}

        [admin]
        {admin}

        [store]
        path = "bridge.sqlite3"

        [[sources]]
        name = "jobserv"
        secret = "{SECRET}"
        factories = ["*"]

        [[destinations]]
        name = "log"
        type = "console"

        [[routes]]
        notify = ["failed"]
        destinations = ["log"]
        """)


Serve = Callable[..., Awaitable[BridgeProcess]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Starts a bridge with `[server]` (and `[admin]`) lines added; killed at the end."""
    started: list[BridgeProcess] = []

    async def start(server: str = "", admin: str = "enabled = false") -> BridgeProcess:
        folder = tmp_path / f"bridge-{len(started)}"
        folder.mkdir()
        port = free_port()
        config = folder / "config.toml"
        config.write_text(bridge_toml(port, server, admin))
        bridge = BridgeProcess(config, port, folder)
        started.append(bridge)
        await bridge.start()
        return bridge

    yield start
    for bridge in started:
        await bridge.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def error(self) -> str:
        """The JSON `error` of the answer, checking that it is one."""
        assert self.headers["content-type"].startswith("application/json"), self
        error = json.loads(self.body)["error"]
        assert isinstance(error, str) and error and "\n" not in error, self
        return error


def parse_answer(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines)
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    return Answer(int(status_line.split()[1]), headers, body)


async def exchange(port: int, request: bytes) -> Answer:
    """Send `request` on a new connection; the answer is what comes until the bridge closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), PROMPTLY)
    finally:
        writer.close()
    return parse_answer(raw)


def post(body: bytes, headers: dict[str, str], path: str = "/webhook") -> bytes:
    """A whole POST request on a connection to be closed after the answer."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if "Content-Length" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def log_lines(bridge: BridgeProcess, part: str) -> list[str]:
    return [line for line in bridge.stderr().splitlines() if part in line]


def assert_quiet_log(bridge: BridgeProcess) -> None:
    """Nothing at ERROR, no traceback: what the clients did is theirs, not the bridge's fault."""
    log = bridge.stderr()
    assert " ERROR " not in log and "Traceback" not in log, log


async def wait_for_log(bridge: BridgeProcess, part: str, count: int) -> list[str]:
    deadline = time.monotonic() + PROMPTLY
    while len(lines := log_lines(bridge, part)) < count:
        assert time.monotonic() < deadline, f"{count} times {part!r} expected:\n{bridge.stderr()}"
        await asyncio.sleep(0.05)
    return lines


# -- item 5b: logs for dropped clients -------------------------------------------------


async def test_a_client_dropping_mid_body_is_one_info_line(serve: Serve) -> None:
    bridge = await serve()
    clients = 30

    async def drop(chunked: bool) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        if chunked:
            writer.write(b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"64\r\n" + b"{" * 40)
        else:
            writer.write(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            writer.write(b"{" * 100)
        await writer.drain()
        await asyncio.sleep(0.2)  # the bridge is reading the body now
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(drop(chunked=i % 3 == 0) for i in range(clients)))
    lines = await wait_for_log(bridge, "went away after", clients)
    assert len(lines) == clients
    for line in lines:
        assert " INFO " in line and "client 127.0.0.1 " in line, line
        assert "after 100 of 1000 body bytes" in line or "after 40 of ? body bytes" in line, line
    assert_quiet_log(bridge)
    assert await bridge.post(event_body(1)) == 202  # and the bridge serves on
