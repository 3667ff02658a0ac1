"""The aiohttp app: intake on POST /webhook; /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.chats import CHAT_TYPES
from bridge.config import Config
from bridge.intake import new_event
from bridge.jobserv import (
    SIGNATURE_HEADER,
    NotABuild,
    parse_build,
    signature_digest,
    signed_by,
)
from bridge.log_throttle import FailureLog
from bridge.logs import FIELD_LIMIT, bounded
from bridge.redact import Redactor
from bridge.routing import targets
from bridge.runtime import Runtime
from bridge.slack_endpoint import interactions
from bridge.store import Accepted, NewEvent, Plan, Store, StoreUnavailable

log = logging.getLogger("bridge.intake")

# The store, lanes and admin listener serving the app, with the config in force.
RUNTIME = web.AppKey("runtime", Runtime)
# The webhooks' tries that the store could not commit, logged as news (not one line a try).
STORE_FAILURES = web.AppKey("store_failures", FailureLog)

# /readyz waits this long for the store to take a write.
READY_TIMEOUT = 2.0
# While the store cannot commit, a webhook's event is tried again after these pauses (doubling).
STORE_RETRY_FIRST, STORE_RETRY_MOST = 0.1, 1.0


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _encoding_refused(request: web.Request) -> web.Response | None:
    """The answer to a body with a Content-Encoding, else None.

    The signature is over the body as sent, and JobServ sends plain JSON: a compressed body is
    refused whole, never decompressed (which would also let anyone unsigned spend our CPU).
    """
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if encoding in ("", "identity"):
        return None
    response = _error(
        400, f"Content-Encoding {encoding[:40]!r} is not accepted: send the JSON body as it is"
    )
    response.headers[hdrs.ACCEPT_ENCODING] = "identity"
    return response


async def webhook(request: web.Request) -> web.Response:
    response = await _intake(request)
    outcome = {202: "accepted", 200: "duplicate"}.get(response.status, str(response.status))
    request.app[RUNTIME].metrics.webhooks.labels(outcome).inc()
    return response


def _went_away(request: web.Request) -> web.Response:
    """Log a client that closed its connection before sending the whole body."""
    expected = request.content_length
    log.info(
        "client %s went away after %d of %s body bytes",
        request.remote,
        request.content.total_bytes,
        expected if expected is not None else "?",
    )
    return _error(400, "the connection was lost before the whole body came")  # never sent


async def _intake(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    config = runtime.config
    refusal = _encoding_refused(request)
    if refusal is not None:
        return refusal
    limit, deadline = config.server.max_body_size, config.server.read_timeout
    try:
        async with asyncio.timeout(deadline):
            body = await _read_body(request, limit)
    except _BodyTooLarge:
        return _error(413, f"body is larger than the limit of {limit} bytes")
    except TimeoutError:
        if request.transport is None:  # it went before this handler began to read
            return _went_away(request)
        log.info("client %s sent the body too slowly: cut off after %gs", request.remote, deadline)
        response = _error(408, f"the body did not arrive within {deadline:g}s")
        response.force_close()
        return response
    except ConnectionError:
        return _went_away(request)

    header = request.headers.get(SIGNATURE_HEADER)
    if header is None:
        return _error(401, f"missing {SIGNATURE_HEADER} header")
    digest = signature_digest(header)
    if digest is None:
        return _error(401, f"malformed {SIGNATURE_HEADER} header: expected sha256:<64 hex digits>")
    secrets = [s.secret.get_secret_value() for s in config.sources]
    index = signed_by(digest, body, secrets)
    if index is None:
        return _error(401, "signature does not match any configured source")
    source = config.sources[index]

    try:
        build = parse_build(body)
    except NotABuild as exc:
        return _error(400, str(exc))
    if not source.may_report(build.factory):
        return _error(403, f'source "{source.name}" may not report factory "{build.factory}"')

    threaded = {n for n, d in config.destinations.items() if CHAT_TYPES[d.type].threads}

    event = new_event(build, body)
    try:
        # The store mutes what a silence covers, in the transaction that stores the event.
        accepted = await _stored(
            runtime.store,
            event,
            lambda change: targets(config.routes, build, change, threaded),
            config.server.store_wait,
            request.app[STORE_FAILURES],
        )
    except StoreUnavailable as exc:
        factory = bounded(build.factory, FIELD_LIMIT)
        log.error(
            "could not store build %s of %s (tried for store_wait, %gs): %s",
            build.build_id,
            factory,
            config.server.store_wait,
            exc,
        )
        return _error(503, "the event could not be stored; try again")

    answer = {"event_id": accepted.event_id, "deliveries": accepted.deliveries}
    # What a build says is logged bounded: a sender may make it any length.
    factory, trigger, status = (
        bounded(v, FIELD_LIMIT) for v in (build.factory, event.trigger, build.status)
    )
    what = f"event {accepted.event_id}: {factory} {trigger} #{build.build_id}"
    fields = {
        "event_id": accepted.event_id,
        "factory": factory,
        "trigger": trigger,
        "build": build.build_id,
        "status": status,
        "source": source.name,
    }
    if accepted.duplicate:
        log.info("%s %s: a repeat, nothing new stored", what, status, extra=fields)
        return web.json_response({**answer, "duplicate": True}, status=200)
    destinations = list(accepted.destinations)
    summary = accepted.transition.summary if accepted.transition else status
    log.info(
        "%s %s (%s): accepted from source %s for %s",
        what,
        status,
        summary,
        source.name,
        ", ".join(destinations) or "no destination",
        extra=fields,
    )
    runtime.dispatcher.arrived(body, build, destinations)
    return web.json_response(answer, status=202)


async def _stored(
    store: Store, event: NewEvent, plan: Plan, wait: float, failures: FailureLog
) -> Accepted:
    """The event accepted by the store, tried again while the store cannot commit, for
    `wait` seconds at most. A try that committed but could not say so (a connection lost
    with its answer) is found again by the next one, as a repeat."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pause = STORE_RETRY_FIRST
    while True:
        try:
            accepted = await store.accept(event, plan)
        except StoreUnavailable as exc:
            failures.failed(exc)
            left = deadline - loop.time()
            if left <= 0:
                raise
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, STORE_RETRY_MOST)
        else:
            failures.succeeded()
            return accepted


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded and the store takes a write."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await request.app[RUNTIME].store.ping()
    except TimeoutError:
        return _error(503, f"store did not take a write within {READY_TIMEOUT:g}s")
    except StoreUnavailable as exc:
        return _error(503, f"store is not writable: {exc}")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    try:
        # A stuck store must not make the scrape time out: that is when it is needed most.
        async with asyncio.timeout(READY_TIMEOUT):
            stats = await runtime.store.destination_stats()
    except (StoreUnavailable, TimeoutError):
        stats = None  # the counters still tell a story; gauges keep their last values
    if stats is not None:
        runtime.metrics.refresh_backlog(runtime.config.destinations, stats)
    body = generate_latest(runtime.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def expectation(request: web.Request) -> web.Response | None:
    """aiohttp's handling of an Expect header, with an unknown expectation answered as JSON
    (the expect handler runs before the middlewares)."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != aiohttp.HttpVersion11:
        return None
    if expect.lower() != "100-continue":
        request.app[RUNTIME].metrics.refused.labels("417").inc()
        return _error(417, f"unknown Expect: {expect[:40]!r}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp: the answer itself has not begun
    return None


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own answers (404, 405, ...) as JSON with a one-line `error`, like ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


def create_app(config: Config, redact: Redactor | None = None) -> web.Application:
    """The bridge's app; `redact` is shared with the logs so a reload updates both."""
    app = web.Application(middlewares=[json_errors], client_max_size=config.server.max_body_size)
    app[RUNTIME] = Runtime(config, redact)
    app[STORE_FAILURES] = FailureLog(log, "webhooks: the store cannot commit their events")
    app.router.add_post("/webhook", webhook, expect_handler=expectation)
    app.router.add_get("/healthz", healthz, expect_handler=expectation)
    app.router.add_get("/readyz", readyz, expect_handler=expectation)
    app.router.add_get("/metrics", metrics, expect_handler=expectation)
    # Slack's button presses (404 without [slack]): docs/slack.md.
    app.router.add_post(
        "/slack/interactions", interactions(app[RUNTIME]), expect_handler=expectation
    )
    app.cleanup_ctx.append(_running)
    return app


async def _running(app: web.Application) -> AsyncIterator[None]:
    """The runtime's resources open while the app serves."""
    runtime = app[RUNTIME]
    await runtime.start()
    try:
        yield
    finally:
        await runtime.stop()
