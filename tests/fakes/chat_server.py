"""A local fake chat server (Slack Web API, Slack/other webhooks) for tests.

Usage::

    async with FakeChat() as fake:
        fake.script("/api/chat.postMessage", Reply(429, headers={"Retry-After": "2"}))
        fake.default("/api/chat.postMessage", SlackApiOk())
        ...  # point the code under test at fake.url("/api/")
        [req] = await fake.wait_for(1, path="/api/chat.postMessage")
        assert req.json["channel"] == "C1"

The server listens on 127.0.0.1 with an ephemeral port and accepts any method
on any path. Every request is recorded (as a RecordedRequest) as soon as it
arrives, before its behaviour runs, so even a hanging request is visible.

Answers are scripted per path: ``script(path, *behaviours)`` queues one-shot
behaviours, consumed in order; when a path's queue is empty, the path's
default (``default(path, b)``) or else the global default (``default(None, b)``,
initially ``Reply(200, "ok")``) answers.

Behaviours: Reply, Echo, Hang, Reset, Delay, Gate, SlackApiOk, SlackApiError, Stream, RateLimited.

``RateLimited`` answers as a chat with a real rate limit does (Slack's incoming webhooks:
about one message a second, short bursts allowed; past that, 429 with Retry-After).
``fake.delivered(path)`` lists the requests that got a 2xx answer: what a reader sees.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "Behaviour",
    "Delay",
    "Echo",
    "FakeChat",
    "Gate",
    "Hang",
    "RateLimited",
    "RecordedRequest",
    "Reply",
    "Reset",
    "SlackApiError",
    "SlackApiOk",
    "Stream",
    "slack_api_ok",
    "slack_webhook_limit",
]


@dataclass(frozen=True)
class Reply:
    """Answer with ``status`` and ``json`` (if not None) or else ``body`` text."""

    status: int = 200
    body: str = "ok"
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None


@dataclass(frozen=True)
class Echo:
    """Answer ``status`` with a text made from the request: a careless server that
    writes back what it was sent (its URL, its Authorization header), in some form."""

    status: int
    text: Callable[[RecordedRequest], str]


@dataclass(frozen=True)
class Hang:
    """Never answer; the client has to time out. Released by FakeChat.stop()."""


@dataclass(frozen=True)
class Reset:
    """Drop the connection without sending any HTTP response.

    Note: aiohttp's client silently retries an idempotent request (GET, PUT...)
    once when a reused keep-alive connection is dropped; POST is not retried.
    """


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then run the ``then`` behaviour."""

    seconds: float
    then: Behaviour = field(default_factory=Reply)


@dataclass(frozen=True)
class Gate:
    """Hold the request until the test sets ``opened``, then run the ``then`` behaviour
    (released by FakeChat.stop() too, unanswered)."""

    opened: asyncio.Event
    then: Behaviour = field(default_factory=Reply)


@dataclass(frozen=True)
class SlackApiOk:
    """Slack Web API success: ``{"ok": true, "channel": ..., "ts": <unique>}``."""

    channel: str = "C123"


@dataclass(frozen=True)
class SlackApiError:
    """Slack Web API failure: ``{"ok": false, "error": ...}``."""

    error: str = "channel_not_found"
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """Answer ``status`` with ``prefix`` and then ``chunk`` over and over, up to ``limit``
    bytes, as fast as the client reads: an answer that does not end. FakeChat.streamed
    counts the bytes written, until the client stopped reading and hung up."""

    status: int = 200
    content_type: str = "text/html"
    prefix: bytes = b""
    chunk: bytes = b" " * 65536
    limit: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class RateLimited:
    """A chat's rate limit on a path: ``rate`` requests a second on average, ``burst`` at
    once; a request past it is answered 429 with ``Retry-After`` (whole seconds, as Slack
    writes it) and ``body``, any other runs ``then``. Its token bucket is the fake's, per
    path, filled from the first request."""

    rate: float = 1.0
    burst: int = 1
    then: Behaviour = field(default_factory=Reply)
    body: str = "rate_limited"


Behaviour = (
    Reply | Echo | Hang | Reset | Delay | Gate | SlackApiOk | SlackApiError | Stream | RateLimited
)


def slack_webhook_limit() -> RateLimited:
    """Slack's incoming webhook: 1 message a second, a short burst allowed, 429 past it."""
    return RateLimited(rate=1.0, burst=3, then=Reply(200, "ok"))


def slack_api_ok(channel: str = "C123") -> SlackApiOk:
    """Behaviour answering like a successful chat.postMessage (unique ts)."""
    return SlackApiOk(channel=channel)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received by the fake."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    json: Any  # parsed JSON or urlencoded form (as a dict), else None
    received_at: float  # time.monotonic()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _parse_body(content_type: str, body: bytes) -> Any:
    if not body:
        return None
    try:
        if content_type == "application/x-www-form-urlencoded":
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        if content_type.endswith("json") or body.lstrip()[:1] in (b"{", b"["):
            return json.loads(body)
    except ValueError:
        pass
    return None


_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


class _Dropped(Exception):
    """Internal: the connection was closed instead of answered."""


class FakeChat:
    """Fake chat server on 127.0.0.1:<ephemeral port>; see the module docstring."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._queues: dict[str, deque[Behaviour]] = {}
        self._defaults: dict[str | None, Behaviour] = {None: Reply(200, "ok")}
        self._arrived = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: web.ServerRunner | None = None
        self._port: int | None = None
        self._ts_counter = 0
        self.streamed = 0  # bytes of the last Stream answer written
        # Each answered request and its status, in the order they were answered.
        self.answered: list[tuple[RecordedRequest, int]] = []
        # RateLimited: per path, (tokens, when they were counted).
        self._buckets: dict[str, tuple[float, float]] = {}

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeChat already started")
        self._stopping.clear()
        server = web.Server(self._handle, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        self._stopping.set()  # releases Hang / Delay handlers
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeChat not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # --- scripting -----------------------------------------------------------

    def script(self, path: str, *behaviours: Behaviour) -> None:
        """Queue one-shot behaviours for ``path``, used in order."""
        self._queues.setdefault(path, deque()).extend(behaviours)

    def default(self, path: str | None, behaviour: Behaviour) -> None:
        """Set the behaviour used when ``path``'s queue is empty (None: all paths)."""
        self._defaults[path] = behaviour

    def _next_behaviour(self, path: str) -> Behaviour:
        queue = self._queues.get(path)
        if queue:
            return queue.popleft()
        return self._defaults.get(path, self._defaults[None])

    # --- inspection ----------------------------------------------------------

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def delivered(self, path: str | None = None) -> list[RecordedRequest]:
        """The requests (to ``path``, if given) answered with a 2xx, in answer order."""
        return [
            request
            for request, status in self.answered
            if 200 <= status < 300 and (path is None or request.path == path)
        ]

    def clear(self) -> None:
        """Forget recorded requests (scripts and defaults are kept)."""
        self.requests.clear()
        self.answered.clear()

    async def wait_for(
        self,
        count: int,
        timeout: float = 5.0,  # noqa: ASYNC109 (the API the tests want)
        path: str | None = None,
    ) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests (to ``path``, if given) arrived.

        Returns the matching requests; raises AssertionError on timeout.
        """

        def matching() -> list[RecordedRequest]:
            return self.requests if path is None else self.requests_to(path)

        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: len(matching()) >= count)
        except TimeoutError:
            seen = [f"{r.method} {r.path}" for r in self.requests]
            where = "" if path is None else f" to {path}"
            raise AssertionError(
                f"expected >= {count} request(s){where} within {timeout}s, "
                f"got {len(matching())}; all received: {seen}"
            ) from None
        return list(matching())

    async def wait_until(
        self,
        done: Callable[[FakeChat], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 (the API the tests want)
    ) -> None:
        """Wait until `done(self)` holds, checked as requests arrive and are answered;
        raises AssertionError on timeout."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: done(self))
        except TimeoutError:
            answers = [f"{r.method} {r.path} {status}" for r, status in self.answered]
            raise AssertionError(f"not done within {timeout}s; answered: {answers}") from None

    # --- serving -------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            body=body,
            json=_parse_body(request.content_type, body),
            received_at=time.monotonic(),
        )
        async with self._arrived:
            self.requests.append(recorded)
            self._arrived.notify_all()
        behaviour = self._next_behaviour(request.path)
        if isinstance(behaviour, Stream):
            return await self._stream(request, behaviour)
        try:
            response = await self._respond(behaviour, recorded)
            async with self._arrived:
                self.answered.append((recorded, response.status))
                self._arrived.notify_all()
            return response
        except _Dropped:
            if request.transport is not None:
                request.transport.abort()
            # Writing this response fails on the closed transport; aiohttp
            # treats that as a client disconnect and sends nothing.
            return web.Response(status=599)

    async def _respond(self, behaviour: Behaviour, request: RecordedRequest) -> web.Response:
        match behaviour:
            case Echo(status=status, text=make_text):
                return _response(status, make_text(request), {}, _TEXT)
            case Reply(status=status, body=text, headers=headers, json=payload):
                if payload is not None:
                    return _response(status, json.dumps(payload), headers, _JSON)
                return _response(status, text, headers, _TEXT)
            case SlackApiOk(channel=channel):
                payload = {"ok": True, "channel": channel, "ts": self._next_ts()}
                return _response(200, json.dumps(payload), {}, _JSON)
            case SlackApiError(error=error, status=status, headers=headers):
                payload = {"ok": False, "error": error}
                return _response(status, json.dumps(payload), headers, _JSON)
            case Delay(seconds=seconds, then=then):
                if await self._sleep_unless_stopped(seconds):
                    return await self._respond(then, request)
                raise _Dropped
            case Gate(opened=opened, then=then):
                if await self._wait_unless_stopped(opened):
                    return await self._respond(then, request)
                raise _Dropped
            case Hang():
                await self._stopping.wait()
                raise _Dropped
            case Reset():
                raise _Dropped
            case RateLimited(rate=rate, burst=burst, then=then, body=text):
                wait = self._take_token(request.path, rate, burst)
                if wait > 0:
                    retry_after = str(max(1, math.ceil(wait)))
                    return _response(429, text, {"Retry-After": retry_after}, _TEXT)
                return await self._respond(then, request)
        raise TypeError(f"unknown behaviour: {behaviour!r}")

    async def _stream(self, request: web.BaseRequest, stream: Stream) -> web.StreamResponse:
        response = web.StreamResponse(
            status=stream.status, headers={"Content-Type": stream.content_type}
        )
        await response.prepare(request)
        self.streamed = 0
        part = stream.prefix or stream.chunk
        try:
            while self.streamed < stream.limit and not self._stopping.is_set():
                await response.write(part)
                self.streamed += len(part)
                part = stream.chunk
            await response.write_eof()
        except ConnectionError:
            pass  # the client had read enough and hung up
        return response

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep; return False early if the server is stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _wait_unless_stopped(self, opened: asyncio.Event) -> bool:
        """Wait until `opened` is set; return False early if the server is stopping."""
        waits = {asyncio.ensure_future(opened.wait()), asyncio.ensure_future(self._stopping.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return opened.is_set() and not self._stopping.is_set()

    def _take_token(self, path: str, rate: float, burst: int) -> float:
        """Take a token of `path`'s bucket: 0 when there was one, else how long until one."""
        now = time.monotonic()
        tokens, then = self._buckets.get(path, (float(burst), now))
        tokens = min(float(burst), tokens + (now - then) * rate)
        if tokens >= 1.0:
            self._buckets[path] = (tokens - 1.0, now)
            return 0.0
        self._buckets[path] = (tokens, now)
        return (1.0 - tokens) / rate

    def _next_ts(self) -> str:
        self._ts_counter += 1
        micros = 1_700_000_000_000_000 + 100 * self._ts_counter
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _response(
    status: int, text: str, headers: Mapping[str, str], content_type: str
) -> web.Response:
    all_headers = CIMultiDict(headers)
    all_headers.setdefault("Content-Type", content_type)
    return web.Response(status=status, body=text.encode(), headers=all_headers)
