"""Stored events parsed for the lanes, with their template facts."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from bridge.jobserv import Build, parse_build
from bridge.render import build_context
from bridge.store import Delivery


class ParsedEvents:
    """Stored events parsed, with their template facts: one event often goes to several
    destinations, so the lanes share this (a few hundred events, the most recent)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        # Keyed by the body itself: the same bytes always parse the same.
        self.entries: OrderedDict[bytes, tuple[Build, dict[str, Any]]] = OrderedDict()

    def get(self, delivery: Delivery) -> tuple[Build, dict[str, Any]]:
        found = self.entries.get(delivery.body)
        if found is not None:
            self.entries.move_to_end(delivery.body)
            return found
        build = parse_build(delivery.body)
        found = self.entries[delivery.body] = (build, build_context(build))
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return found
