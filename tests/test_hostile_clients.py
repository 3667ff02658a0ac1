"""Broken, slow and hostile clients against `python -m bridge serve`, in raw HTTP.

aiohttp's own test client cannot send a malformed request, dribble a body or drop a
connection half way, so these tests speak HTTP over sockets to a real bridge process.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import textwrap
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SECRET, signed_headers
from tests.serve import BridgeProcess, event_body, free_port, run_cli

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


async def refusals(bridge: BridgeProcess, status: int) -> float:
    """`jobserv_bridge_requests_refused_total` of `status`, scraped from /metrics."""
    scrape = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await exchange(bridge.port, scrape)
    assert answer.status == 200, answer
    wanted = f'jobserv_bridge_requests_refused_total{{status="{status}"}} '
    for line in answer.body.decode().splitlines():
        if line.startswith(wanted):
            return float(line.removeprefix(wanted))
    return 0.0


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


# -- item 4: answers the contract does not allow ------------------------------------------


async def test_compressed_bodies_are_refused_whole_never_decompressed(serve: Serve) -> None:
    """The signature is over the body as sent, and JobServ sends plain JSON: a compressed body
    is refused before it is read, valid or not, however much it would grow."""
    bridge = await serve()
    body = event_body(1)
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in about 64 KiB
    deflated = zlib.compress(body)
    cases = [
        ("gzip", gzip.compress(body), signed_headers(body)),  # signed as it grows back
        ("gzip", gzip.compress(body), signed_headers(gzip.compress(body))),  # as it is sent
        ("gzip", b"not gzip at all", signed_headers(body)),
        ("deflate", b"not deflate either", signed_headers(body)),
        ("deflate", deflated, signed_headers(deflated)),
        ("gzip", bomb, signed_headers(bomb)),
        ("br", b"\x1b\x00", signed_headers(body)),
        ("zstd", b"\x28\xb5\x2f\xfd", signed_headers(body)),
        ("x-unheard-of", body, signed_headers(body)),
    ]
    for encoding, sent, headers in cases:
        answer = await exchange(bridge.port, post(sent, {**headers, "Content-Encoding": encoding}))
        assert answer.status == 400, (encoding, answer)
        assert "Content-Encoding" in answer.error()
        assert answer.headers["accept-encoding"] == "identity"

    # Nothing was stored: the build is new when it comes plain, and "identity" is plain.
    answer = await exchange(bridge.port, post(body, {**signed_headers(body)}))
    assert answer.status == 202, answer
    answer = await exchange(
        bridge.port,
        post(event_body(2), {**signed_headers(event_body(2)), "Content-Encoding": "identity"}),
    )
    assert answer.status == 202, answer
    assert_quiet_log(bridge)


MALFORMED = {
    "not HTTP": b"GARBAGE\r\n\r\n",
    "TLS on the HTTP port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40,
    "a bad method": b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "a header over 8190 bytes": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "a URL over 8190 bytes": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "Content-Length with Transfer-Encoding": b"POST /webhook HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "a bad chunk size": b"POST /webhook HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "a bad Content-Length": b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    + b"\r\n",
    "a header without a colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
}


async def test_requests_the_parser_refuses_are_answered_in_json_and_logged_in_a_line(
    serve: Serve,
) -> None:
    bridge = await serve()
    for what, request in MALFORMED.items():
        answer = await exchange(bridge.port, request)
        assert answer.status == 400, (what, answer)
        error = answer.error()
        assert "aaaa" not in error and "b'" not in error, (what, error)  # quotes nothing sent
    lines = await wait_for_log(bridge, "refused a malformed request from 127.0.0.1", len(MALFORMED))
    assert all(" INFO " in line for line in lines), lines
    assert len(lines) == len(MALFORMED), lines
    assert await refusals(bridge, 400) == len(MALFORMED)
    assert_quiet_log(bridge)


async def test_an_unknown_expectation_is_a_json_417_and_100_continue_still_works(
    serve: Serve,
) -> None:
    bridge = await serve()
    answer = await exchange(bridge.port, post(b"{}", {"Expect": "something-else"}))
    assert answer.status == 417
    assert "something-else" in answer.error()
    assert await refusals(bridge, 417) == 1

    body = event_body(1)
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    head, _, _ = post(body, {**signed_headers(body), "Expect": "100-continue"}).partition(
        b"\r\n\r\n"
    )
    writer.write(head + b"\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROMPTLY)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    answer = parse_answer(await asyncio.wait_for(reader.read(), PROMPTLY))
    writer.close()
    assert answer.status == 202, answer


# -- item 5b: logs for dropped clients -------------------------------------------------


async def test_a_client_dropping_mid_body_is_one_info_line(serve: Serve) -> None:
    # A client gone before its handler began to read is noticed at the body deadline.
    bridge = await serve('read_timeout = "2s"')
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


# -- item 8: slow clients --------------------------------------------------------------


@dataclass
class Dribbled:
    seconds: float  # from connecting until the bridge closed the connection
    answer: bytes


async def dribble(port: int, head: bytes, gap: float = 0.2, most: float = 20.0) -> Dribbled:
    """Send `head`, then a byte every `gap` seconds until the bridge closes the connection
    (or `most` seconds pass); return how long that took and what the bridge answered."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.read())  # to the end: the bridge closing
    try:
        writer.write(head)
        while not answer.done() and time.monotonic() - started < most:
            writer.write(b"a")
            await writer.drain()
            await asyncio.wait([answer], timeout=gap)
    except ConnectionError:
        pass  # closed while writing
    try:
        received = await asyncio.wait_for(answer, PROMPTLY)
    except ConnectionError:
        received = b""  # closed with bytes unread: a reset
    finally:
        writer.close()
    return Dribbled(time.monotonic() - started, received)


async def test_slow_clients_are_cut_off_while_a_normal_post_is_served_at_once(
    serve: Serve,
) -> None:
    bridge = await serve('read_timeout = "1s"')
    header_head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: "
    body_head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    silent = asyncio.open_connection("127.0.0.1", bridge.port)
    slow = [
        *(asyncio.ensure_future(dribble(bridge.port, header_head)) for _ in range(20)),
        *(asyncio.ensure_future(dribble(bridge.port, body_head)) for _ in range(20)),
    ]
    reader, writer = await silent  # connects and sends nothing at all

    await asyncio.sleep(0.5)  # the slow ones are in
    began = time.monotonic()
    assert await bridge.post(event_body(1)) == 202
    assert time.monotonic() - began < PROMPTLY

    results = await asyncio.gather(*slow)
    # 1s to read, then at most 1s more reading and dropping what follows a 408: far below 20s.
    assert max(r.seconds for r in results) < 8.0, [r.seconds for r in results]
    for result in results[20:]:
        answer = parse_answer(result.answer)
        assert answer.status == 408
        assert "1s" in answer.error()
    assert await asyncio.wait_for(reader.read(), 8.0) == b""  # the silent one is closed too
    writer.close()
    assert len(log_lines(bridge, "sent the body too slowly")) == 20
    assert_quiet_log(bridge)


async def test_connections_past_the_cap_are_refused_at_once_and_the_served_ones_go_on(
    serve: Serve,
) -> None:
    bridge = await serve('max_connections = 8\nread_timeout = "60s"')
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def served_connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A kept-alive connection that was answered; a moment of 503 may come while the
        connections of the start-up check are closing."""
        deadline = time.monotonic() + PROMPTLY
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROMPTLY)
            answer = parse_answer(head)
            await reader.readexactly(int(answer.headers["content-length"]))
            if answer.status == 200:
                return reader, writer
            writer.close()
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.1)

    for _ in range(8):
        streams.append(await served_connection())
    warned = len(log_lines(bridge, "refusing more until some close"))
    for _ in range(5):
        # One that waits before it speaks reads the refusal, and the connection's end.
        began = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        refused = parse_answer(await asyncio.wait_for(reader.read(), PROMPTLY))
        writer.close()
        assert time.monotonic() - began < PROMPTLY
        assert refused.status == 503
        assert "too many open connections" in refused.error()
        assert refused.headers["connection"] == "close"
        # One that speaks at once is cut off at once too: its request was never read, so
        # the refusal may be lost to a reset.
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            cut = await asyncio.wait_for(reader.read(), PROMPTLY)
            assert cut == b"" or cut.startswith(b"HTTP/1.1 503 "), cut
        except ConnectionResetError:
            pass
        writer.close()
    # One warning for the crowd, not one a connection; each refusal is counted.
    assert len(log_lines(bridge, "refusing more until some close")) == warned + 1

    # A served connection goes on: it posts a webhook on its kept-alive connection.
    reader, writer = streams[0]
    body = event_body(1)
    writer.write(post(body, signed_headers(body)))
    answer = parse_answer(await asyncio.wait_for(reader.read(), PROMPTLY))
    assert answer.status == 202, answer

    for _, other in streams[1:]:
        other.close()
    assert (await served_connection()) is not None  # room again
    assert await refusals(bridge, 503) >= 10
    assert_quiet_log(bridge)


# -- the admin listener's login form ---------------------------------------------------


TOKEN = "admin-token-0123456789-abcdef"


@pytest.mark.parametrize(
    ("encoding", "sent"),
    [
        ("gzip", b"token=not-gzip"),
        ("deflate", b"token=not-deflate"),
        ("gzip", gzip.compress(b"token=" + b"a" * (16 * 1024 * 1024))),  # a bomb
    ],
)
async def test_login_form_with_a_compressed_body_is_400(
    serve: Serve, encoding: str, sent: bytes
) -> None:
    """Like the webhook, the admin listener never decompresses: no browser compresses a form."""
    admin_port = free_port()
    bridge = await serve(admin=f'port = {admin_port}\ntoken = "{TOKEN}"')
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": encoding}
    answer = await exchange(admin_port, post(sent, headers, path="/login"))
    assert answer.status == 400, answer
    assert b"not accepted" in answer.body
    assert_quiet_log(bridge)


@pytest.mark.parametrize(
    ("setting", "place"),
    [
        ('read_timeout = "0s"', "server.read_timeout: Input should be greater than 0"),
        ("max_connections = 0", "server.max_connections: Input should be greater than or equal"),
    ],
)
def test_limits_that_would_serve_nobody_are_refused(
    tmp_path: Path, setting: str, place: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(bridge_toml(free_port(), setting))
    result = run_cli("check-config", "--config", config)
    assert result.returncode != 0
    assert place in result.stderr, result.stderr
