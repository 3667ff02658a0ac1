"""The aiohttp app: intake on POST /webhook, and /healthz."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from bridge.chats import CHAT_TYPES
from bridge.config import Config
from bridge.delivery import Dispatcher
from bridge.jobserv import SIGNATURE_HEADER, NotABuild, parse_build, signature_digest, signed_by
from bridge.redact import Redactor
from bridge.routing import destinations_for
from bridge.store import NewEvent, Store, StoreUnavailable, open_store

log = logging.getLogger("bridge.intake")

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)


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


async def webhook(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    limit = config.server.max_body_size
    try:
        body = await _read_body(request, limit)
    except _BodyTooLarge:
        return _error(413, f"body is larger than the limit of {limit} bytes")

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

    destinations = destinations_for(config.routes, build)
    event = NewEvent(
        key=build.identity,
        factory=build.factory,
        trigger=build.trigger_name or "",
        build_id=build.build_id,
        status=build.status,
        body=body,
        received_at=time.time(),
    )
    try:
        accepted = await request.app[STORE].accept(event, destinations)
    except StoreUnavailable as exc:
        log.error("could not store build %s of %s: %s", build.build_id, build.factory, exc)
        return _error(503, "the event could not be stored; try again")

    answer = {"event_id": accepted.event_id, "deliveries": accepted.deliveries}
    what = f"event {accepted.event_id}: {build.factory} {event.trigger} #{build.build_id}"
    if accepted.duplicate:
        log.info("%s %s is a repeat; nothing new stored", what, build.status)
        return web.json_response({**answer, "duplicate": True}, status=200)
    log.info(
        "%s accepted from source %s for %s", what, source.name, destinations or "no destination"
    )
    request.app[DISPATCHER].wake(destinations)
    return web.json_response(answer, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


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


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=config.server.max_body_size)
    app[CONFIG] = config
    app.router.add_post("/webhook", webhook)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(_pipeline)
    return app


async def _pipeline(app: web.Application) -> AsyncIterator[None]:
    """Open the store, the chats' HTTP session and the delivery lanes; close them in reverse."""
    config = app[CONFIG]
    store = open_store(str(config.store.path))
    await store.open(serving=True)
    app[STORE] = store
    session = aiohttp.ClientSession()
    chats = {
        name: CHAT_TYPES[settings.type].create(settings, session)
        for name, settings in config.destinations.items()
    }
    dispatcher = Dispatcher(config, store, chats, Redactor(config.secrets()))
    app[DISPATCHER] = dispatcher
    await dispatcher.start()
    try:
        yield
    finally:
        await dispatcher.stop(config.server.shutdown_timeout)
        await session.close()
        await store.close()
