"""The webhook listener: aiohttp's server, hardened against hostile and broken clients.

aiohttp answers the requests its parser refuses (a bad request line, an oversized header,
a bad chunk size, ...) itself, as text/plain, logging a traceback at ERROR. Here they are
answered like every other refusal, as JSON with a one-line `error`, and logged in one line.
Clients also get deadlines: `read_timeout` for the request line and headers (aiohttp's
keep-alive timer, which runs from the connection's start and closes it while no whole request
has arrived) and again for the body (in the webhook handler); and no more than
`max_connections` connections are served at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from bridge.config import ServerConfig

log = logging.getLogger("bridge.http")

# After an answer sent before the whole body was read (a 408, a 413), how long the rest of
# the body is read and dropped so that the client sees the answer rather than a reset.
LINGER = 2.0
# Connections the kernel takes before they are served (aiohttp's default): while the app
# starts, and whenever the event loop is busy.
BACKLOG = 128
# The longest `error` made from a parser's message, which may quote what the client sent.
MOST_REASON_CHARS = 200

_BUSY_BODY = json.dumps({"error": "too many open connections; try again"}).encode()
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _BUSY_BODY
)


def _reason(exc: BaseException | None, message: str | None) -> str:
    """One line for a request the parser refused, without the bytes it quotes."""
    if isinstance(exc, LineTooLong):
        return f"the request line or a header is longer than {exc.args[1]} bytes"
    lines = (message or "").strip().splitlines()
    first = lines[0].strip().rstrip(":.") if lines else ""
    return first[:MOST_REASON_CHARS] or "malformed request"


class _Protocol(web.RequestHandler):
    """aiohttp's connection handler, answering its own refusals as JSON, and refusing the
    connection itself when the server is full."""

    def __init__(self, server: _Server, **handler_args: Any) -> None:
        super().__init__(server, **handler_args)
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.server.admits():
            super().connection_made(transport)
            return
        # Never served, so the served connections are not touched. The request, if one came
        # yet, is not read: a reset may then reach the client before the answer.
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY_ANSWER)
        transport.close()
        self.server.refused(HTTPStatus.SERVICE_UNAVAILABLE)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            # Our handlers answer every fault themselves: reaching here is a bug.
            log.error(
                "error handling %s %s from %s",
                request.method,
                request.path,
                request.remote,
                exc_info=exc,
            )
            reason = HTTPStatus(status).phrase.lower()
        else:
            reason = _reason(exc, message)
            log.info("refused a malformed request from %s: %s", request.remote, reason)
        if request.writer.output_size > 0:  # as aiohttp: an answer was begun, none can follow
            raise ConnectionError("an answer was already begun; the connection is closed")
        response = web.json_response({"error": reason}, status=status)
        response.force_close()
        self.server.refused(status)
        return response


class _Server(web.Server):
    """aiohttp's server, making `_Protocol`s and serving `max_connections` at most."""

    def __init__(
        self,
        made: web.Server,
        max_connections: int,
        refused: Callable[[int], None],
        **handler_args: Any,
    ) -> None:
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **handler_args,
        )
        self.max_connections = max_connections
        self.refused = refused  # counts a refusal, by status
        self._full = False

    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)

    def admits(self) -> bool:
        """Whether a new connection may be served now."""
        if len(self._connections) < self.max_connections:
            self._full = False
            return True
        if not self._full:  # once per crowd, not once per connection
            self._full = True
            log.warning(
                "%d connections open: refusing more until some close (max_connections)",
                self.max_connections,
            )
        return False


class Runner(web.AppRunner):
    """An AppRunner for the bridge's app with its `[server]` limits."""

    def __init__(
        self,
        app: web.Application,
        settings: ServerConfig,
        refused: Callable[[int], None] = lambda status: None,
    ) -> None:
        super().__init__(app, shutdown_timeout=settings.shutdown_timeout, access_log=None)
        self.settings = settings
        self.refused = refused

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the app started, with its handler and factory
        return _Server(
            made,
            self.settings.max_connections,
            self.refused,
            keepalive_timeout=self.settings.read_timeout,
            lingering_time=min(LINGER, self.settings.read_timeout),
            # The webhook's signature is over the body as sent: it is never decompressed.
            auto_decompress=False,
            access_log=None,
        )


@asynccontextmanager
async def listening(
    app: web.Application,
    settings: ServerConfig,
    refused: Callable[[int], None] = lambda status: None,
) -> AsyncIterator[Runner]:
    """Serve `app` on `[server] host:port` (port 0: any free one) until the block ends;
    `refused(status)` is told of each request refused before any handler.

    The address is listened on before the app starts (its store opened, and migrated on an
    upgrade, which can take seconds): the kernel takes the connections meanwhile, and their
    requests are answered once it has started. JobServ waits for an answer as long as it
    takes, but gives up on a refused connection after four tries within about 7 s.
    """
    sockets = _listen(settings.host, settings.port)
    runner = Runner(app, settings, refused)
    try:
        await runner.setup()
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    try:
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=BACKLOG).start()
        yield runner
    finally:
        await runner.cleanup()


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on every address `host` names, as asyncio's server would make them
    (port 0: the port the first one got, for all)."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
