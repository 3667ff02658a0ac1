"""The JSON API under /api/: the same records as the page, from the same views."""

from __future__ import annotations

import time

from aiohttp import web

from bridge.admin.access import Refused, whole_number
from bridge.admin.chart import CHART_HOURS, chart_start, hours_json
from bridge.admin.site import ADMIN
from bridge.admin.views import DeliveryView, EventView, destination_views
from bridge.store import STATES, State

EVENTS_LISTED = 50
DELIVERIES_LISTED = 100
MAX_API_LIMIT = 1000
_STATES = STATES


def _int_query(request: web.Request, name: str, default: int | None, maximum: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    number = whole_number(text)
    if number is None or not 1 <= number <= maximum:
        raise Refused(400, f"{name} must be a whole number from 1 to {maximum}")
    return number


async def api_events(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    limit = _int_query(request, "limit", EVENTS_LISTED, MAX_API_LIMIT) or EVENTS_LISTED
    build_id = _int_query(request, "build", None, 10**18 - 1)
    factory = request.query.get("factory") or None
    events = await admin.store.recent_events(limit, factory, build_id)
    types, now = admin.destination_types(), time.time()
    return admin.json({"events": [EventView.of(e, types, now).json() for e in events]})


async def api_deliveries(request: web.Request) -> web.Response:
    state = request.query.get("state") or None
    if state is not None and state not in _STATES:
        raise Refused(400, f"state must be one of {', '.join(_STATES)}")
    return await _deliveries(request, state)


async def api_dead(request: web.Request) -> web.Response:
    return await _deliveries(request, "dead")


async def _deliveries(request: web.Request, state: State | None) -> web.Response:
    admin = request.app[ADMIN]
    limit = _int_query(request, "limit", DELIVERIES_LISTED, MAX_API_LIMIT) or DELIVERIES_LISTED
    destination = request.query.get("destination") or None
    rows = await admin.store.list_deliveries(state=state, destination=destination, limit=limit)
    types, now = admin.destination_types(), time.time()
    return admin.json({"deliveries": [DeliveryView.of(d, types, now).json() for d in rows]})


async def api_destinations(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    stats = await admin.store.destination_stats()
    views = destination_views(admin.destination_types(), stats, time.time())
    return admin.json({"destinations": [view.json() for view in views]})


async def api_activity(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    hours = await admin.store.hourly_activity(chart_start(time.time()), CHART_HOURS)
    return admin.json({"hours": hours_json(hours)})


async def api_retry(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    # A cross-site form can send neither without a preflight, which is never granted.
    if "X-Requested-With" not in request.headers and request.content_type != "application/json":
        raise Refused(
            403, "send the X-Requested-With header or a JSON body (Content-Type: application/json)"
        )
    delivery_id = int(request.match_info["id"])
    if not await admin.retry(delivery_id):
        raise Refused(404, f"delivery {delivery_id} is not a dead letter")
    return admin.json({"retried": delivery_id})
