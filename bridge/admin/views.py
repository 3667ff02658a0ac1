"""One projection per record shown: the page's template and the JSON API both read it.

Times are kept as Unix times: the page shows them (and ages from them), `json()` gives them
as ISO 8601 in UTC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.store import DeliveryRow, DestinationStats, EventRow


def iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else max(now - at, 0.0)


@dataclass(frozen=True)
class DeliveryView:
    id: int
    event_id: int
    destination: str
    type: str | None  # the destination's chat type; None when no longer configured
    state: str
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    next_attempt_at: float | None  # while pending
    factory: str
    trigger: str
    build_id: int
    status: str
    now: float

    @classmethod
    def of(cls, row: DeliveryRow, types: Mapping[str, str], now: float) -> DeliveryView:
        return cls(
            id=row.id,
            event_id=row.event_id,
            destination=row.destination,
            type=types.get(row.destination),
            state=row.state,
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            next_attempt_at=row.next_attempt_at if row.state == "pending" else None,
            factory=row.factory,
            trigger=row.trigger,
            build_id=row.build_id,
            status=row.status,
            now=now,
        )

    @property
    def age(self) -> float:
        return self.now - self.created_at

    @property
    def next_attempt_in(self) -> float | None:
        return None if self.next_attempt_at is None else self.next_attempt_at - self.now

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "destination": self.destination,
            "destination_type": self.type,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "sent_at": iso(self.updated_at) if self.state == "sent" else None,
            "next_attempt_at": iso(self.next_attempt_at),
            "event": {
                "factory": self.factory,
                "trigger": self.trigger,
                "build_id": self.build_id,
                "status": self.status,
            },
        }


@dataclass(frozen=True)
class EventView:
    id: int
    factory: str
    trigger: str
    build_id: int
    status: str
    received_at: float
    build_url: str | None
    deliveries: list[DeliveryView]

    @classmethod
    def of(cls, event: EventRow, types: Mapping[str, str], now: float) -> EventView:
        return cls(
            id=event.id,
            factory=event.factory,
            trigger=event.trigger,
            build_id=event.build_id,
            status=event.status,
            received_at=event.received_at,
            build_url=build_url(event.body),
            deliveries=[DeliveryView.of(d, types, now) for d in event.deliveries],
        )

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "factory": self.factory,
            "trigger": self.trigger,
            "build_id": self.build_id,
            "status": self.status,
            "received_at": iso(self.received_at),
            "build_url": self.build_url,
            "deliveries": [d.json() for d in self.deliveries],
        }


@dataclass(frozen=True)
class DestinationView:
    name: str
    type: str | None
    configured: bool
    pending: int
    oldest_pending_age: float | None
    dead: int
    oldest_dead_age: float | None

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "configured": self.configured,
            "pending": self.pending,
            "oldest_pending_age": self.oldest_pending_age,
            "dead": self.dead,
            "oldest_dead_age": self.oldest_dead_age,
        }


def destination_views(
    types: Mapping[str, str], stats: Mapping[str, DestinationStats], now: float
) -> list[DestinationView]:
    """Every configured destination (`types`: name -> chat type), then any the store still
    holds deliveries for."""
    names = list(types) + sorted(set(stats) - set(types))
    views = []
    for name in names:
        found = stats.get(name, DestinationStats(0, None, 0, None))
        views.append(
            DestinationView(
                name=name,
                type=types.get(name),
                configured=name in types,
                pending=found.pending,
                oldest_pending_age=_age(found.oldest_pending_at, now),
                dead=found.dead,
                oldest_dead_age=_age(found.oldest_dead_at, now),
            )
        )
    return views


def build_url(body: bytes) -> str | None:
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
