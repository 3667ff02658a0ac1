"""Who may look and act: the admin token, login sessions, the CSRF token, same-origin checks.

- With no `[admin] token` (only allowed on a loopback address) anyone on this machine may look
  and act. Requests must name a loopback host in `Host`, so a web page that rebinds its own DNS
  name to 127.0.0.1 cannot read the page.
- With a token, every page and action needs `Authorization: Bearer <token>`, or the session
  cookie that the login form gives for the token (kept in memory, `SameSite=Strict`,
  `HttpOnly`, for `SESSION_LIFETIME`).
- Actions are POSTs. A browser sends the cookie (or reaches the open loopback listener) on its
  own, so another site could make it post a form here: every form carries this process's random
  CSRF token in a hidden field, which other sites cannot read; and any POST whose `Origin` (or
  else `Referer`) names another host is refused. API POSTs must carry `X-Requested-With` or a
  JSON content type, which a cross-site form cannot send without a CORS preflight that this
  listener never grants.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from bridge.config import AdminConfig, is_loopback

SESSION_COOKIE = "jobserv_bridge_session"
SESSION_LIFETIME = 12 * 3600.0
MAX_SESSIONS = 1000
# Paths served without authentication.
PUBLIC_PATHS = {"/login", "/style.css"}

Access = Literal["open", "bearer", "session"]


class Refused(Exception):
    """An answer other than the one asked for: its status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class Gate:
    """The access secrets of one admin listener: its token, sessions and CSRF token."""

    def __init__(self, settings: AdminConfig) -> None:
        self.host = settings.host
        token = settings.token
        self.token = token.get_secret_value() if token is not None else None
        if self.token is None and not is_loopback(settings.host):
            raise ValueError("the admin listener needs a token when it is not on loopback")
        self.csrf_token = secrets.token_urlsafe(32)
        self.sessions: dict[str, float] = {}  # session id -> expiry

    def authenticate(self, request: web.Request) -> Access | None:
        if self.token is None:
            return "open"
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and same_secret(credentials.strip(), self.token):
            return "bearer"
        session = request.cookies.get(SESSION_COOKIE)
        if session is not None and self._session_valid(session):
            return "session"
        return None

    def _session_valid(self, session: str) -> bool:
        now = time.time()
        for known, expires in self.sessions.items():
            if same_secret(session, known):
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
        return isinstance(value, str) and same_secret(value, self.csrf_token)

    def check(self, request: web.Request) -> None:
        """Refuse a request by its host, its origin, or its lack of credentials."""
        hostname = _hostname(request.host)
        if self.token is None and not (is_loopback(hostname) or hostname == self.host):
            raise Refused(421, "without a token the status page answers only to a loopback name")
        if request.method not in ("GET", "HEAD") and not _same_origin(request):
            raise Refused(403, "a request from another site is refused")
        if request.path not in PUBLIC_PATHS and self.authenticate(request) is None:
            raise Refused(401, "a valid admin token is needed")


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


def whole_number(text: str | None) -> int | None:
    """A number of up to 18 digits (it fits the store's 64-bit integers), else None."""
    if text is None or not re.fullmatch(r"[0-9]{1,18}", text):
        return None
    return int(text)


async def read_form(request: web.Request) -> Mapping[str, object]:
    if request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity":
        raise Refused(400, "a compressed form is not accepted")  # never decompressed
    try:
        return await request.post()
    except ValueError:
        raise Refused(400, "the form could not be read") from None
