"""Silences on the status page and in its JSON API: list, add, expire (bridge.silences)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bridge.admin.access import Refused, read_form
from bridge.admin.site import ADMIN, Admin, log, see_other
from bridge.admin.views import iso
from bridge.config_env import place
from bridge.silences import Silence, SilenceRequest, SilenceState

PAGE_AUTHOR = "status page"
API_AUTHOR = "status page API"


@dataclass(frozen=True)
class SilenceView:
    """A silence as the page and the API show it."""

    silence: Silence
    state: SilenceState
    now: float

    @classmethod
    def of(cls, silence: Silence, now: float) -> SilenceView:
        return cls(silence, silence.state(now), now)

    @property
    def left(self) -> float | None:
        """How long it still mutes (None once expired)."""
        return None if self.state == "expired" else self.silence.ends_at - self.now

    def json(self) -> dict[str, Any]:
        silence = self.silence
        return {
            "id": silence.id,
            "factory": silence.factory,
            "trigger": silence.trigger,
            "destination": silence.destination,
            "starts_at": iso(silence.starts_at),
            "ends_at": iso(silence.ends_at),
            "state": self.state,
            "comment": silence.comment,
            "author": silence.author,
            "created_at": iso(silence.created_at),
        }


async def silence_views(admin: Admin, now: float) -> list[SilenceView]:
    """The silences not yet expired, for the page."""
    return [SilenceView.of(s, now) for s in await admin.store.silences(now)]


def _request(admin: Admin, asked: dict[str, Any]) -> SilenceRequest:
    """What a form or a JSON body asks for, checked; a 400 for what cannot be a silence."""
    try:
        request = SilenceRequest.model_validate(asked)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = place(error["loc"]) if error["loc"] else "the silence"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise Refused(400, f"{where}: {message}") from None
    names = admin.destination_types()
    if request.destination is not None and request.destination not in names:
        raise Refused(400, f'no destination named "{request.destination}"')
    return request


async def _add(admin: Admin, request: SilenceRequest, how: str) -> Silence:
    now = time.time()
    silence = await admin.store.add_silence(request.at(now), now)
    log.info("silence %d added %s by %s: %s", silence.id, how, silence.author, silence.scope)
    return silence


async def _expire(admin: Admin, silence_id: int, how: str) -> Silence:
    expired = await admin.store.expire_silence(silence_id, time.time())
    if expired is None:
        raise Refused(404, f"no silence {silence_id}")
    log.info("silence %d expired %s", silence_id, how)
    return expired


# -- the page's forms --------------------------------------------------------------------


async def add_from_page(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    form = await read_form(request)
    if not admin.gate.csrf_valid(form.get("csrf")):
        raise Refused(403, "the form is stale or forged: reload the page, then add it again")
    asked = {
        name: form.get(name)
        for name in ("factory", "trigger", "destination", "for", "comment", "author")
        if form.get(name) not in (None, "")
    }
    asked.setdefault("author", PAGE_AUTHOR)
    silence = await _add(admin, _request(admin, asked), "on the status page")
    return see_other(f"./?silenced={silence.id}#silences")


async def expire_from_page(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    form = await read_form(request)
    if not admin.gate.csrf_valid(form.get("csrf")):
        raise Refused(403, "the form is stale or forged: reload the page, then expire it")
    expired = await _expire(admin, int(request.match_info["id"]), "on the status page")
    return see_other(f"../../?expired={expired.id}#silences")


# -- the JSON API ------------------------------------------------------------------------


def _from_script(request: web.Request) -> None:
    # A cross-site form can send neither without a preflight, which is never granted.
    if "X-Requested-With" not in request.headers and request.content_type != "application/json":
        raise Refused(
            403, "send the X-Requested-With header or a JSON body (Content-Type: application/json)"
        )


async def api_silences(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    now = time.time()
    everything = request.query.get("all", "") not in ("", "0", "false")
    found = await admin.store.silences(None if everything else now)
    return admin.json({"silences": [SilenceView.of(s, now).json() for s in found]})


async def api_add_silence(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    _from_script(request)
    try:
        asked = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(asked, dict):
        raise Refused(400, "the body is not a JSON object")
    asked.setdefault("author", API_AUTHOR)
    silence = await _add(admin, _request(admin, asked), "through the API")
    return admin.json({"silence": SilenceView.of(silence, time.time()).json()}, status=201)


async def api_expire_silence(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    _from_script(request)
    expired = await _expire(admin, int(request.match_info["id"]), "through the API")
    return admin.json({"silence": SilenceView.of(expired, time.time()).json()})
