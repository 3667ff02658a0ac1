"""The admin app, its guard, and its listener beside the webhook listener."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge.admin.access import Refused
from bridge.admin.api import (
    api_activity,
    api_dead,
    api_deliveries,
    api_destinations,
    api_events,
    api_retry,
)
from bridge.admin.pages import index, login, login_page, logout, retry_from_page, stylesheet
from bridge.admin.silences import (
    add_from_page,
    api_add_silence,
    api_expire_silence,
    api_silences,
    expire_from_page,
)
from bridge.admin.site import ADMIN, Admin
from bridge.config import Config
from bridge.delivery import Dispatcher
from bridge.listener import Runner
from bridge.store import Store, StoreUnavailable

log = logging.getLogger("bridge.admin")

# Small forms only: a retry, a login.
MAX_REQUEST_BODY = 16 * 1024

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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Access in one place; every refusal and fault answered as a page or as JSON."""
    admin = request.app[ADMIN]
    try:
        admin.gate.check(request)
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
    if request.path.startswith("/api/"):
        response = admin.json({"error": message}, status=status)
    elif status == 401:
        response = admin.page(request, "login.html.j2", status=401, problem=None)
    else:
        response = admin.page(request, "error.html.j2", status=status, message=message)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="jobserv-bridge admin"'
    return response


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
    app.router.add_post("/silences", add_from_page)
    app.router.add_post(r"/silences/{id:\d{1,18}}/expire", expire_from_page)
    app.router.add_get("/api/silences", api_silences)
    app.router.add_post("/api/silences", api_add_silence)
    app.router.add_post(r"/api/silences/{id:\d{1,18}}/expire", api_expire_silence)
    return app


class AdminListener:
    """The admin app on `[admin] host:port`, beside the webhook listener, with the same
    hardening (`bridge.listener.Runner`): the `[server]` read timeout and connection cap,
    and malformed requests answered as JSON and logged in one line."""

    def __init__(self, config: Config, store: Store, dispatcher: Dispatcher) -> None:
        self.settings = config.admin
        limits = config.server.model_copy(
            update={"host": config.admin.host, "port": config.admin.port}
        )
        self.runner = Runner(create_admin_app(config, store, dispatcher), limits)
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
