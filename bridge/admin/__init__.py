"""The status page and its JSON API, on an admin listener of their own.

What was received and what was sent where, at a glance: recent events with their deliveries,
the backlog and dead letters per destination, a chart of the last 24 hours, and a button to
retry a dead letter. `/api/` answers the same in JSON, from the same views (`views`).

access: who may look and act; pages: the HTML handlers; api: the JSON handlers; views: one
projection per record; chart: the last 24 hours; site: what the handlers share; app: the app
and its listener.
"""

from __future__ import annotations

from bridge.admin.access import SESSION_COOKIE
from bridge.admin.app import AdminListener, create_admin_app

__all__ = ["SESSION_COOKIE", "AdminListener", "create_admin_app"]
