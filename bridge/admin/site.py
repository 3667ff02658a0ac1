"""What the admin handlers share: the store, the lanes, the gate, and how answers are written.

Secrets never reach the page: destinations are shown by name and type only, and every value
written into a page or a JSON answer goes through the lanes' Redactor.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from bridge.admin.access import Gate
from bridge.admin.views import iso
from bridge.config import Config
from bridge.delivery import Dispatcher
from bridge.redact import MARK, Redactor
from bridge.store import Store
from bridge.text import duration_text, plural

log = logging.getLogger("bridge.admin")


class Admin:
    """The store and lanes the pages show, the gate in front of them, and the page writer."""

    def __init__(self, config: Config, store: Store, dispatcher: Dispatcher) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        # The lanes' redactor: the one a reload adds the new config's secrets to.
        self.redact = dispatcher.redact
        self.gate = Gate(config.admin)
        self.pages = _environment(self.redact)
        self.stylesheet = (
            resources.files("bridge.templates").joinpath("admin/style.css").read_bytes()
        )

    def page(
        self, request: web.Request, name: str, status: int = 200, **values: Any
    ) -> web.Response:
        # Links are relative to the page, so it also works behind a proxy under a prefix.
        root = "../" * (request.path.count("/") - 1) or "./"
        html = self.pages.get_template(name).render(
            csrf_token=self.gate.csrf_token, root=root, status=status, **values
        )
        # Every value was redacted as it was written; this catches anything else,
        # and shows a mark it puts in text as text.
        html = self.redact(html).replace(MARK, str(Markup.escape(MARK)))
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def json(self, data: Any, status: int = 200) -> web.Response:
        return web.json_response(_redact_strings(data, self.redact), status=status)

    def destination_types(self) -> dict[str, str]:
        """The configured destinations by name, with their types: the lanes running now."""
        return self.dispatcher.destination_types()

    async def retry(self, delivery_id: int) -> bool:
        """Queue a dead letter again and wake the lanes; False when it is not dead."""
        queued = await self.store.requeue_dead([delivery_id], time.time()) > 0
        if queued:
            self.dispatcher.wake_all()
            log.info("delivery %d queued again from the status page", delivery_id)
        return queued


ADMIN = web.AppKey("admin", Admin)


def see_other(location: str) -> web.Response:
    # Relative, like the page's links.
    return web.Response(status=303, headers={"Location": location})


def _redact_strings(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_strings(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v, redact) for v in value]
    return value


def format_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def query(values: dict[str, Any]) -> str:
    """A link to the page with these query values (None left out)."""
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
    environment.filters["iso"] = iso
    environment.globals["plural"] = plural
    return environment
