"""`POST /slack/interactions`: Slack's button presses on the public listener.

The raw body is read (capped) before anything parses it, since the signature is over its
bytes; then the press is kept in the store (an acknowledgement, or a silence) together with
a delivery that redraws the incident's root, and only then answered 200. Slack wants an
answer within 3 seconds: the chat.update is the lane's, in order and within the
destination's rate limit, retried like any delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge.logs import FIELD_LIMIT, bounded
from bridge.runtime import Runtime
from bridge.silences import Acknowledgement
from bridge.slack_interactions import (
    MAX_BODY,
    ButtonPress,
    NotAPress,
    SignatureCheck,
    mute,
    muting_already,
    parse_press,
)
from bridge.store import StoreUnavailable

log = logging.getLogger("bridge.slack")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _TooLarge(Exception):
    pass


async def _raw_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def interactions(runtime: Runtime) -> Handler:
    """The handler, with the signatures it has seen (per signing secret: a reload may
    change it)."""
    checks: dict[str, SignatureCheck] = {}
    muting = asyncio.Lock()  # two presses of Mute at once see each other's silence

    async def handle(request: web.Request) -> web.StreamResponse:
        slack = runtime.config.slack
        if slack is None:
            return _error(404, "Slack interactions are off: the config has no [slack] section")
        try:
            async with asyncio.timeout(runtime.config.server.read_timeout):
                body = await _raw_body(request)
        except _TooLarge:
            return _error(413, f"body is larger than the limit of {MAX_BODY} bytes")
        except (TimeoutError, ConnectionError):
            return _error(408, "the body did not arrive in time")
        secret = slack.signing_secret.get_secret_value()
        check = checks.get(secret)
        if check is None:
            checks.clear()
            check = checks[secret] = SignatureCheck(secret)
        refusal = check.refusal(body, request.headers)
        if refusal is not None:
            log.info("slack interaction from %s refused: %s", request.remote, refusal)
            return _error(401, refusal)
        try:
            press = parse_press(body)
        except NotAPress as exc:
            return _error(400, str(exc))
        if press is None:
            return web.Response(status=200)  # another button of the app: not ours to do
        return await _carry_out(runtime, press, muting)

    return handle


async def _carry_out(runtime: Runtime, press: ButtonPress, muting: asyncio.Lock) -> web.Response:
    incident = press.incident
    settings = runtime.config.destinations.get(incident.destination)
    if settings is None or settings.type != "slack-api":
        return _error(400, "the button names no slack-api destination of this bridge")
    now = time.time()
    store = runtime.store
    done = "acknowledged" if press.action == "acknowledge" else "muted for 24h"
    try:
        if press.action == "acknowledge":
            ack = Acknowledgement(
                destination=incident.destination,
                factory=incident.factory,
                trigger=incident.trigger,
                anchor=incident.anchor,
                user_id=press.user.id,
                user_name=press.user.name,
                at=now,
            )
            await store.acknowledge(ack)
        else:
            async with muting:
                wanted = mute(press, now)
                found = muting_already(wanted, await store.silences(now))
                if found is None:
                    await store.add_silence(wanted, now)
                else:
                    done = f"already muted by silence {found.id}"
        await store.redraw(
            incident.destination, incident.factory, incident.trigger, incident.anchor, now
        )
    except StoreUnavailable as exc:
        log.error("could not keep a Slack %s: %s", press.action, exc)
        return _error(503, "the store cannot keep it now; press again")
    log.info(
        "%s: %s %s #%d: %s by %s",
        incident.destination,
        bounded(incident.factory, FIELD_LIMIT),
        bounded(incident.trigger, FIELD_LIMIT),
        incident.anchor,
        done,
        press.user.author,
    )
    runtime.dispatcher.wake([incident.destination])
    return web.Response(status=200)
