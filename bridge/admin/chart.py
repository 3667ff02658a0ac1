"""The last 24 hours of activity: an inline SVG bar chart's geometry, and the hours as JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.admin.views import iso
from bridge.store import HourActivity
from bridge.text import plural

CHART_HOURS = 24
CHART_SLOT = 20  # SVG units per hour
CHART_HEIGHT = 100


def chart_start(now: float) -> float:
    """The start of the hour 23 hours before the current one: 24 whole hours, now included."""
    return (now // 3600) * 3600 - (CHART_HOURS - 1) * 3600


def chart(hours: list[HourActivity]) -> dict[str, Any]:
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


def totals(hours: list[HourActivity]) -> dict[str, int]:
    return {
        "events": sum(h.events for h in hours),
        "failed_builds": sum(h.failed_builds for h in hours),
        "dead_deliveries": sum(h.dead_deliveries for h in hours),
    }


def hours_json(hours: list[HourActivity]) -> list[dict[str, Any]]:
    return [
        {
            "start": iso(h.start),
            "events": h.events,
            "failed_builds": h.failed_builds,
            "dead_deliveries": h.dead_deliveries,
        }
        for h in hours
    ]
