"""The HTML pages: the status page, its retry button, login and logout, the stylesheet."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from bridge.admin.access import (
    SESSION_COOKIE,
    SESSION_LIFETIME,
    Refused,
    read_form,
    same_secret,
    whole_number,
)
from bridge.admin.chart import CHART_HOURS, chart, chart_start, totals
from bridge.admin.silences import silence_views
from bridge.admin.site import ADMIN, log, query, see_other
from bridge.admin.views import DeliveryView, EventView, destination_views

EVENTS_SHOWN = 50
DELIVERIES_SHOWN = 50


async def index(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    factory = request.query.get("factory", "").strip() or None
    build_text = request.query.get("build", "").strip().lstrip("#")
    build_id = whole_number(build_text)
    refresh_seconds = whole_number(request.query.get("refresh"))
    if refresh_seconds is not None and not 5 <= refresh_seconds <= 3600:
        refresh_seconds = None

    now = time.time()
    counts, stats, dead, pending, events, hours = await asyncio.gather(
        admin.store.counts(),
        admin.store.destination_stats(),
        admin.store.list_deliveries(state="dead", limit=DELIVERIES_SHOWN),
        admin.store.list_deliveries(state="pending", limit=DELIVERIES_SHOWN),
        admin.store.recent_events(EVENTS_SHOWN, factory, build_id),
        admin.store.hourly_activity(chart_start(now), CHART_HOURS),
    )
    silences = await silence_views(admin, now)
    types = admin.destination_types()

    filters = {k: v for k, v in {"factory": factory, "build": build_id}.items() if v is not None}
    return admin.page(
        request,
        "index.html.j2",
        now=now,
        counts=counts,
        destinations=destination_views(types, stats, now),
        dead=[DeliveryView.of(d, types, now) for d in dead],
        pending=[DeliveryView.of(d, types, now) for d in pending],
        events=[EventView.of(e, types, now) for e in events],
        chart=chart(hours),
        totals=totals(hours),
        silences=silences,
        destination_names=sorted(types),
        factory=factory or "",
        build=build_text,
        filtered=bool(filters) or bool(build_text),
        flash=_flash(request, build_text, build_id),
        signed_in=admin.gate.authenticate(request) == "session",
        refresh=refresh_seconds,
        refresh_on=query({**filters, "refresh": 30}),
        refresh_off=query(filters),
        refresh_url=query({**filters, "refresh": refresh_seconds}),
    )


def _flash(request: web.Request, build_text: str, build_id: int | None) -> tuple[str, str] | None:
    """The note at the top of the page: what the last action did, or a bad filter."""
    retried = whole_number(request.query.get("retried"))
    not_dead = whole_number(request.query.get("not_dead"))
    for key, said in (("silenced", "Silence {} is added."), ("expired", "Silence {} expired.")):
        if (number := whole_number(request.query.get(key))) is not None:
            return ("ok", said.format(number))
    if retried is not None:
        return ("ok", f"Delivery {retried} is queued again.")
    if not_dead is not None:
        return ("problem", f"Delivery {not_dead} is not a dead letter.")
    if build_text and build_id is None:
        return ("problem", f"{build_text!r} is not a build number.")
    return None


async def retry_from_page(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    form = await read_form(request)
    if not admin.gate.csrf_valid(form.get("csrf")):
        raise Refused(403, "the form is stale or forged: reload the page, then retry")
    delivery_id = int(request.match_info["id"])
    queued = await admin.retry(delivery_id)
    key = "retried" if queued else "not_dead"
    return see_other(f"../../?{key}={delivery_id}#dead-letters")


async def login_page(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    if admin.gate.authenticate(request) is not None:
        return see_other("./")
    return admin.page(request, "login.html.j2", problem=None)


async def login(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    token = admin.gate.token
    if token is None:
        return see_other("./")
    form = await read_form(request)
    given = form.get("token")
    if not isinstance(given, str) or not same_secret(given, token):
        log.warning("status page: a wrong token was given to the login form")
        return admin.page(
            request, "login.html.j2", status=401, problem="That is not the admin token."
        )
    response = see_other("./")
    response.set_cookie(
        SESSION_COOKIE,
        admin.gate.new_session(),
        max_age=int(SESSION_LIFETIME),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    form = await read_form(request)
    if not admin.gate.csrf_valid(form.get("csrf")):
        raise Refused(403, "the form is stale or forged: reload the page")
    session = request.cookies.get(SESSION_COOKIE)
    if session is not None:
        admin.gate.sessions.pop(session, None)
    response = see_other("login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(body=request.app[ADMIN].stylesheet, content_type="text/css")
