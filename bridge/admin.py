"""The status page and its JSON API, on an admin listener of their own.

What was received and what was sent where, at a glance: recent events with their
deliveries, the backlog and dead letters per destination, a chart of the last
24 hours, and a button to retry a dead letter. `/api/` answers the same in JSON.

Access, in one place (`_guard`):

- With no `[admin] token` (only allowed on a loopback address) anyone on this
  machine may look and act. Requests must name a loopback host in `Host`, so a
  web page that rebinds its own DNS name to 127.0.0.1 cannot read the page.
- With a token, every page and action needs `Authorization: Bearer <token>`, or
  the session cookie that the login form gives for the token (kept in memory,
  `SameSite=Strict`, `HttpOnly`, for `SESSION_LIFETIME`).
- Actions are POSTs. A browser sends the cookie (or reaches the open loopback
  listener) on its own, so another site could make it post a form here: every
  form carries this process's random CSRF token in a hidden field, which other
  sites cannot read; and any POST whose `Origin` (or else `Referer`) names
  another host is refused. API POSTs must carry `X-Requested-With` or a JSON
  content type, which a cross-site form cannot send without a CORS preflight
  that this listener never grants.

Secrets never reach the page: destinations are shown by name and type only, and
every value written into a page or a JSON answer goes through the Redactor.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import hdrs, web
from markupsafe import Markup

from bridge.config import Config, is_loopback
from bridge.delivery import Dispatcher
from bridge.redact import _MARK, Redactor
from bridge.store import (
    DeliveryRow,
    DestinationStats,
    EventRow,
    HourActivity,
    State,
    Store,
    StoreUnavailable,
)
from bridge.text import duration_text, plural

log = logging.getLogger("bridge.admin")

SESSION_COOKIE = "jobserv_bridge_session"
SESSION_LIFETIME = 12 * 3600.0
MAX_SESSIONS = 1000
EVENTS_SHOWN = 50
DELIVERIES_SHOWN = 50
MAX_API_LIMIT = 1000
CHART_HOURS = 24
# Small forms only: a retry, a login.
MAX_REQUEST_BODY = 16 * 1024

Access = Literal["open", "bearer", "session"]
_STATES: tuple[State, ...] = ("pending", "sent", "dead")

_SECURITY_HEADERS = {
    # No scripts at all; the stylesheet is ours; forms post only here; no framing
    # (so the retry button cannot be clickjacked).
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Admin:
    """What the admin handlers share: the store, the lanes, and the access secrets."""

    def __init__(self, config: Config, store: Store, dispatcher: Dispatcher) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        # The lanes' redactor: the one a reload adds the new config's secrets to.
        self.redact = dispatcher.redact
        token = config.admin.token
        self.token = token.get_secret_value() if token is not None else None
        if self.token is None and not is_loopback(config.admin.host):
            raise ValueError("the admin listener needs a token when it is not on loopback")
        self.csrf_token = secrets.token_urlsafe(32)
        self.sessions: dict[str, float] = {}  # session id -> expiry
        self.pages = _environment(self.redact)
        self.stylesheet = (
            resources.files("bridge.templates").joinpath("admin/style.css").read_bytes()
        )

    # -- access ---------------------------------------------------------------

    def authenticate(self, request: web.Request) -> Access | None:
        if self.token is None:
            return "open"
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same_secret(credentials.strip(), self.token):
            return "bearer"
        session = request.cookies.get(SESSION_COOKIE)
        if session is not None and self._session_valid(session):
            return "session"
        return None

    def _session_valid(self, session: str) -> bool:
        now = time.time()
        for known, expires in self.sessions.items():
            if _same_secret(session, known):
                return expires > now
        return False

    def new_session(self) -> str:
        now = time.time()
        self.sessions = {s: e for s, e in self.sessions.items() if e > now}
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[next(iter(self.sessions))]
        session = secrets.token_urlsafe(32)
        self.sessions[session] = now + SESSION_LIFETIME
        return session

    def csrf_valid(self, value: object) -> bool:
        return isinstance(value, str) and _same_secret(value, self.csrf_token)

    # -- output ---------------------------------------------------------------

    def page(
        self, request: web.Request, name: str, status: int = 200, **values: Any
    ) -> web.Response:
        # Links are relative to the page, so it also works behind a proxy under a prefix.
        root = "../" * (request.path.count("/") - 1) or "./"
        html = self.pages.get_template(name).render(
            csrf_token=self.csrf_token, root=root, status=status, **values
        )
        # Every value was redacted as it was written; this catches anything else,
        # and shows a mark it puts in text as text.
        html = self.redact(html).replace(_MARK, str(Markup.escape(_MARK)))
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def json(self, data: Any, status: int = 200) -> web.Response:
        return web.json_response(_redact_strings(data, self.redact), status=status)

    def destinations(self) -> dict[str, str]:
        """The configured destinations by name, with their types: the lanes running now."""
        return {name: lane.settings.type for name, lane in self.dispatcher.lanes.items()}

    def destination_type(self, name: str) -> str | None:
        return self.destinations().get(name)

    async def retry(self, delivery_id: int) -> bool:
        """Queue a dead letter again and wake the lanes; False when it is not dead."""
        queued = await self.store.requeue_dead([delivery_id], time.time()) > 0
        if queued:
            self.dispatcher.wake(list(self.dispatcher.lanes))
            log.info("delivery %d queued again from the status page", delivery_id)
        return queued


ADMIN = web.AppKey("admin", Admin)


class Refused(Exception):
    """An answer other than the one asked for: its status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _see_other(location: str) -> web.Response:
    # Relative, like the page's links.
    return web.Response(status=303, headers={"Location": location})


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _redact_strings(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_strings(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v, redact) for v in value]
    return value


# -- the guard: host, origin, authentication, errors ----------------------------

_PUBLIC_PATHS = {"/login", "/style.css"}


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _hostname(host_header: str) -> str:
    try:
        return (urlsplit("//" + host_header).hostname or "").lower()
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return ""


def _same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from a page of another host."""
    origin = request.headers.get("Origin")
    if origin is None:
        origin = request.headers.get("Referer")
        if not origin:
            return True  # a script, or a browser told to send neither: the CSRF token decides
    elif origin == "null":
        return False
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


def _whole_number(text: str | None) -> int | None:
    """A number of up to 18 digits (it fits the store's 64-bit integers), else None."""
    if text is None or not re.fullmatch(r"[0-9]{1,18}", text):
        return None
    return int(text)


async def _form(request: web.Request) -> Mapping[str, object]:
    if request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity":
        raise Refused(400, "a compressed form is not accepted")  # never decompressed
    try:
        return await request.post()
    except ValueError:
        raise Refused(400, "the form could not be read") from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    admin = request.app[ADMIN]
    try:
        hostname = _hostname(request.host)
        if admin.token is None and not (
            is_loopback(hostname) or hostname == admin.config.admin.host
        ):
            raise Refused(421, "without a token the status page answers only to a loopback name")
        if request.method not in ("GET", "HEAD") and not _same_origin(request):
            raise Refused(403, "a request from another site is refused")
        if request.path not in _PUBLIC_PATHS and admin.authenticate(request) is None:
            raise Refused(401, "a valid admin token is needed")
        response = await handler(request)
    except Refused as refusal:
        response = _error_response(admin, request, refusal.status, refusal.message)
    except StoreUnavailable as exc:
        response = _error_response(admin, request, 503, f"the store is not available: {exc}")
    except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413
        if exc.status < 400:
            raise
        response = _error_response(admin, request, exc.status, exc.reason)
    response.headers.update(_SECURITY_HEADERS)
    return response


def _error_response(admin: Admin, request: web.Request, status: int, message: str) -> web.Response:
    if _is_api(request):
        response = admin.json({"error": message}, status=status)
    elif status == 401:
        response = admin.page(request, "login.html.j2", status=401, problem=None)
    else:
        response = admin.page(request, "error.html.j2", status=status, message=message)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="jobserv-bridge admin"'
    return response


# -- pages --------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    factory = request.query.get("factory", "").strip() or None
    build_text = request.query.get("build", "").strip().lstrip("#")
    build_id = _whole_number(build_text)
    refresh_seconds = _whole_number(request.query.get("refresh"))
    if refresh_seconds is not None and not 5 <= refresh_seconds <= 3600:
        refresh_seconds = None

    now = time.time()
    since = _chart_start(now)
    counts, stats, dead, pending, events, hours = await asyncio.gather(
        admin.store.counts(),
        admin.store.destination_stats(),
        admin.store.list_deliveries(state="dead", limit=DELIVERIES_SHOWN),
        admin.store.list_deliveries(state="pending", limit=DELIVERIES_SHOWN),
        admin.store.recent_events(EVENTS_SHOWN, factory, build_id),
        admin.store.hourly_activity(since, CHART_HOURS),
    )

    filters = {k: v for k, v in {"factory": factory, "build": build_id}.items() if v is not None}
    flash = None
    retried = _whole_number(request.query.get("retried"))
    not_dead = _whole_number(request.query.get("not_dead"))
    if retried is not None:
        flash = ("ok", f"Delivery {retried} is queued again.")
    elif not_dead is not None:
        flash = ("problem", f"Delivery {not_dead} is not a dead letter.")
    elif build_text and build_id is None:
        flash = ("problem", f"{build_text!r} is not a build number.")
    return admin.page(
        request,
        "index.html.j2",
        now=now,
        counts=counts,
        destinations=_destination_rows(admin, stats, now),
        dead=[_delivery_view(admin, d, now) for d in dead],
        pending=[_delivery_view(admin, d, now) for d in pending],
        events=[_event_view(admin, e, now) for e in events],
        chart=_chart(hours),
        totals=_totals(hours),
        factory=factory or "",
        build=build_text,
        filtered=bool(filters) or bool(build_text),
        flash=flash,
        signed_in=admin.authenticate(request) == "session",
        refresh=refresh_seconds,
        refresh_on=_query({**filters, "refresh": 30}),
        refresh_off=_query(filters),
        refresh_url=_query({**filters, "refresh": refresh_seconds}),
    )


async def retry_from_page(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    form = await _form(request)
    if not admin.csrf_valid(form.get("csrf")):
        raise Refused(403, "the form is stale or forged: reload the page, then retry")
    delivery_id = int(request.match_info["id"])
    queued = await admin.retry(delivery_id)
    key = "retried" if queued else "not_dead"
    return _see_other(f"../../?{key}={delivery_id}#dead-letters")


async def login_page(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    if admin.authenticate(request) is not None:
        return _see_other("./")
    return admin.page(request, "login.html.j2", problem=None)


async def login(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    if admin.token is None:
        return _see_other("./")
    form = await _form(request)
    given = form.get("token")
    if not isinstance(given, str) or not _same_secret(given, admin.token):
        log.warning("status page: a wrong token was given to the login form")
        return admin.page(
            request, "login.html.j2", status=401, problem="That is not the admin token."
        )
    response = _see_other("./")
    response.set_cookie(
        SESSION_COOKIE,
        admin.new_session(),
        max_age=int(SESSION_LIFETIME),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    form = await _form(request)
    if not admin.csrf_valid(form.get("csrf")):
        raise Refused(403, "the form is stale or forged: reload the page")
    session = request.cookies.get(SESSION_COOKIE)
    if session is not None:
        admin.sessions.pop(session, None)
    response = _see_other("login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(body=request.app[ADMIN].stylesheet, content_type="text/css")


# -- the JSON API ---------------------------------------------------------------


def _int_query(request: web.Request, name: str, default: int | None, maximum: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    number = _whole_number(text)
    if number is None or not 1 <= number <= maximum:
        raise Refused(400, f"{name} must be a whole number from 1 to {maximum}")
    return number


async def api_events(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    limit = _int_query(request, "limit", EVENTS_SHOWN, MAX_API_LIMIT) or EVENTS_SHOWN
    build_id = _int_query(request, "build", None, 10**18 - 1)
    factory = request.query.get("factory") or None
    events = await admin.store.recent_events(limit, factory, build_id)
    return admin.json({"events": [_event_json(admin, e) for e in events]})


async def api_deliveries(request: web.Request) -> web.Response:
    state = request.query.get("state") or None
    if state is not None and state not in _STATES:
        raise Refused(400, f"state must be one of {', '.join(_STATES)}")
    return await _deliveries(request, state)


async def api_dead(request: web.Request) -> web.Response:
    return await _deliveries(request, "dead")


async def _deliveries(request: web.Request, state: State | None) -> web.Response:
    admin = request.app[ADMIN]
    limit = _int_query(request, "limit", 100, MAX_API_LIMIT) or 100
    destination = request.query.get("destination") or None
    rows = await admin.store.list_deliveries(state=state, destination=destination, limit=limit)
    return admin.json({"deliveries": [_delivery_json(admin, d) for d in rows]})


async def api_destinations(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    now = time.time()
    rows = _destination_rows(admin, await admin.store.destination_stats(), now)
    return admin.json(
        {
            "destinations": [
                {
                    "name": row.name,
                    "type": row.type,
                    "configured": row.configured,
                    "pending": row.pending,
                    "oldest_pending_age": row.oldest_pending_age,
                    "dead": row.dead,
                    "oldest_dead_age": row.oldest_dead_age,
                }
                for row in rows
            ]
        }
    )


async def api_activity(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    hours = await admin.store.hourly_activity(_chart_start(time.time()), CHART_HOURS)
    return admin.json(
        {
            "hours": [
                {
                    "start": _iso(h.start),
                    "events": h.events,
                    "failed_builds": h.failed_builds,
                    "dead_deliveries": h.dead_deliveries,
                }
                for h in hours
            ]
        }
    )


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


# -- views of the store's rows ----------------------------------------------------


@dataclass(frozen=True)
class DestinationRow:
    name: str
    type: str | None
    configured: bool
    pending: int
    oldest_pending_age: float | None
    dead: int
    oldest_dead_age: float | None


def _destination_rows(
    admin: Admin, stats: dict[str, DestinationStats], now: float
) -> list[DestinationRow]:
    """Every configured destination, then any the store still holds deliveries for."""
    configured = admin.destinations()
    names = list(configured) + sorted(set(stats) - set(configured))
    rows = []
    for name in names:
        found = stats.get(name, DestinationStats(0, None, 0, None))
        rows.append(
            DestinationRow(
                name=name,
                type=configured.get(name),
                configured=name in configured,
                pending=found.pending,
                oldest_pending_age=_age(found.oldest_pending_at, now),
                dead=found.dead,
                oldest_dead_age=_age(found.oldest_dead_at, now),
            )
        )
    return rows


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else max(now - at, 0.0)


def _delivery_view(admin: Admin, row: DeliveryRow, now: float) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "destination": row.destination,
        "type": admin.destination_type(row.destination),
        "state": row.state,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "age": now - row.created_at,
        "updated_at": row.updated_at,
        "next_attempt_in": row.next_attempt_at - now if row.state == "pending" else None,
        "factory": row.factory,
        "trigger": row.trigger,
        "build_id": row.build_id,
        "status": row.status,
    }


def _event_view(admin: Admin, event: EventRow, now: float) -> dict[str, Any]:
    return {
        "id": event.id,
        "factory": event.factory,
        "trigger": event.trigger,
        "build_id": event.build_id,
        "status": event.status,
        "received_at": event.received_at,
        "build_url": _build_url(event.body),
        "deliveries": [_delivery_view(admin, d, now) for d in event.deliveries],
    }


def _build_url(body: bytes) -> str | None:
    """The build's web page (else its API URL) from the stored body; only http(s) links."""
    try:
        build = json.loads(body)
    except ValueError:
        return None
    if not isinstance(build, dict):
        return None
    for key in ("web_url", "url"):
        url = build.get(key)
        if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
            return url
    return None


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def _delivery_json(admin: Admin, row: DeliveryRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "destination": row.destination,
        "destination_type": admin.destination_type(row.destination),
        "state": row.state,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "sent_at": _iso(row.updated_at) if row.state == "sent" else None,
        "next_attempt_at": _iso(row.next_attempt_at) if row.state == "pending" else None,
        "event": {
            "factory": row.factory,
            "trigger": row.trigger,
            "build_id": row.build_id,
            "status": row.status,
        },
    }


def _event_json(admin: Admin, event: EventRow) -> dict[str, Any]:
    return {
        "id": event.id,
        "factory": event.factory,
        "trigger": event.trigger,
        "build_id": event.build_id,
        "status": event.status,
        "received_at": _iso(event.received_at),
        "build_url": _build_url(event.body),
        "deliveries": [_delivery_json(admin, d) for d in event.deliveries],
    }


# -- the chart ----------------------------------------------------------------------

CHART_SLOT = 20  # SVG units per hour
CHART_HEIGHT = 100


def _chart_start(now: float) -> float:
    """The start of the hour 23 hours before the current one: 24 whole hours, now included."""
    return (now // 3600) * 3600 - (CHART_HOURS - 1) * 3600


def _chart(hours: list[HourActivity]) -> dict[str, Any]:
    """Geometry for an inline SVG bar chart, drawn by the template."""
    top = max([max(h.events, h.dead_deliveries) for h in hours] + [1])

    def height(count: int) -> float:
        return round(count / top * CHART_HEIGHT, 2)

    slots = []
    for index, hour in enumerate(hours):
        start = datetime.fromtimestamp(hour.start, UTC)
        slots.append(
            {
                "x": index * CHART_SLOT,
                "events": height(hour.events),
                "failed": height(hour.failed_builds),
                "dead": height(hour.dead_deliveries),
                # Every 6 hours, but none near the right end, which says "now".
                "label": (
                    start.strftime("%H:00")
                    if start.hour % 6 == 0 and index < len(hours) - 3
                    else None
                ),
                "title": (
                    f"{start:%H:00}–{(start.hour + 1) % 24:02d}:00 UTC: "
                    f"{plural(hour.events, 'event')}, "
                    f"{plural(hour.failed_builds, 'failed build')}, "
                    f"{plural(hour.dead_deliveries, 'dead delivery', 'dead deliveries')}"
                ),
            }
        )
    return {
        "slots": slots,
        "top": top,
        "width": len(hours) * CHART_SLOT,
        "height": CHART_HEIGHT,
    }


def _totals(hours: list[HourActivity]) -> dict[str, int]:
    return {
        "events": sum(h.events for h in hours),
        "failed_builds": sum(h.failed_builds for h in hours),
        "dead_deliveries": sum(h.dead_deliveries for h in hours),
    }


# -- formatting for the templates ---------------------------------------------------


def format_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _query(values: dict[str, Any]) -> str:
    present = {k: v for k, v in values.items() if v is not None}
    return "?" + urlencode(present) if present else "./"


def _environment(redact: Redactor) -> jinja2.Environment:
    def finalize(value: Any) -> Any:
        # Applied to every {{ value }} before it is escaped.
        return redact(value) if isinstance(value, str) and not isinstance(value, Markup) else value

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("bridge.templates", "admin"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["age"] = lambda seconds: duration_text(seconds) or "–"
    environment.filters["time"] = format_time
    environment.filters["iso"] = _iso
    environment.globals["plural"] = plural
    return environment


# -- the app and its listener -------------------------------------------------------


def create_admin_app(config: Config, store: Store, dispatcher: Dispatcher) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=MAX_REQUEST_BODY)
    app[ADMIN] = Admin(config, store, dispatcher)
    app.router.add_get("/", index)
    app.router.add_get("/style.css", stylesheet)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post(r"/deliveries/{id:\d{1,18}}/retry", retry_from_page)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/deliveries", api_deliveries)
    app.router.add_get("/api/dead", api_dead)
    app.router.add_get("/api/destinations", api_destinations)
    app.router.add_get("/api/activity", api_activity)
    app.router.add_post(r"/api/deliveries/{id:\d{1,18}}/retry", api_retry)
    return app


class AdminListener:
    """The admin app on `[admin] host:port`, beside the webhook listener."""

    def __init__(self, config: Config, store: Store, dispatcher: Dispatcher) -> None:
        self.settings = config.admin
        self.runner = web.AppRunner(
            create_admin_app(config, store, dispatcher), access_log=None, auto_decompress=False
        )
        self.url: str | None = None

    async def start(self) -> None:
        """Serve; when the address cannot be had, log why and go on without the page,
        since a missing status page must not stop webhooks from being taken."""
        host, port = self.settings.host, self.settings.port
        await self.runner.setup()
        try:
            await web.TCPSite(self.runner, host, port).start()
        except OSError as exc:
            log.error("status page is off: cannot listen on %s port %d: %s", host, port, exc)
            await self.runner.cleanup()
            return
        bound_port = self.runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown_host}:{bound_port}/"
        token = "needs the admin token" if self.settings.token else "open to this machine only"
        log.info("status page on %s (%s)", self.url, token)

    async def stop(self) -> None:
        if self.url is not None:
            self.url = None
            await self.runner.cleanup()
