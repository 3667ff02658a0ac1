"""Stored events parsed for the lanes, with their template facts and their messages."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from bridge.chats import CHAT_TYPES, DestinationSettings
from bridge.jobserv import Build, parse_build
from bridge.markup import plain_json
from bridge.render import Rendered, Template, build_context, context, render_message
from bridge.store import Delivery

if TYPE_CHECKING:
    from bridge.failed_tests import RunTests

# Messages kept per event: one per template and chat type it went out with, at most.
RENDERS_PER_EVENT = 4
# The most bytes of bodies kept parsed (for the lanes, and again for the intake's hand-over).
BODIES_BUDGET = 4 * 1024 * 1024
T = TypeVar("T")


@dataclass
class ParsedEvent:
    build: Build
    plain: bool = False  # parsed from a `plain_json` body: its strings need no cleaning
    # Messages that do not depend on the destination's name, by what they depend on.
    renders: dict[Hashable, Rendered] = field(default_factory=dict)

    @cached_property
    def facts(self) -> dict[str, Any]:
        """The template facts of the build (see bridge.render.build_context)."""
        return build_context(self.build, plain=self.plain)

    def message(
        self,
        delivery: Delivery,
        template: Template,
        settings: DestinationSettings,
        tests: dict[str, RunTests] | None,
    ) -> Rendered:
        """The delivery's message to the destination `settings` describes.

        A template that does not read `destination` makes the same message (but for the
        fields a chat's `send` adds) for every destination of one chat type: the first lane
        to send the event renders it, the others take that.
        """

        def render() -> Rendered:
            return render_message(
                template,
                settings,
                context(
                    self.build,
                    event_id=delivery.event_id,
                    destination=settings.name,
                    tests=tests,
                    change=delivery.transition,
                    mentions=delivery.mentions,
                    facts=None if tests else self.facts,
                ),
            )

        if tests or template.per_destination:
            return render()
        key = (
            template,
            settings.type,
            settings.max_failed_runs,
            delivery.event_id,
            delivery.transition,
            delivery.mentions,
        )
        found = self.renders.get(key)
        if found is None:
            found = render()
            if len(self.renders) < RENDERS_PER_EVENT:
                self.renders[key] = found
            return found
        posted = CHAT_TYPES[settings.type].prepare(settings, found.body)
        return Rendered(found.body, found.hidden, found.cut, posted)


class ParsedEvents:
    """Stored events parsed, with their template facts: one event often goes to several
    destinations, so the lanes share this (a few hundred events, the most recent).

    The intake hands over the builds it has just parsed, apart: a lane behind a burst must
    not find the events it is sending pushed out by newer ones it will not reach for a while.
    """

    def __init__(self, size: int = 256, budget: int = BODIES_BUDGET) -> None:
        # Keyed by the body itself: the same bytes always parse the same.
        self.entries: Recent[ParsedEvent] = Recent(size, budget)
        self.arrived: Recent[Build] = Recent(size, budget)

    def get(self, delivery: Delivery) -> tuple[Build, dict[str, Any]]:
        found = self.event(delivery)
        return found.build, found.facts

    def event(self, delivery: Delivery) -> ParsedEvent:
        body = delivery.body
        found = self.entries.get(body)
        if found is None:
            found = ParsedEvent(self.arrived.pop(body) or parse_build(body), plain_json(body))
            self.entries.put(body, found)
        return found

    def add(self, body: bytes, build: Build) -> None:
        """Keep `build`, just parsed from `body` by the intake, for the lanes to come."""
        self.arrived.put(body, build)


class Recent(Generic[T]):
    """What was kept last, by body: at most `size` entries and `budget` bytes of bodies (a
    body may be as large as the intake takes, and what is parsed from it larger still), but
    always the newest."""

    def __init__(self, size: int, budget: int) -> None:
        self.size, self.budget = size, budget
        self.items: OrderedDict[bytes, T] = OrderedDict()
        self.bytes = 0

    def get(self, body: bytes) -> T | None:
        found = self.items.get(body)
        if found is not None:
            self.items.move_to_end(body)
        return found

    def pop(self, body: bytes) -> T | None:
        found = self.items.pop(body, None)
        if found is not None:
            self.bytes -= len(body)
        return found

    def put(self, body: bytes, value: T) -> None:
        self.pop(body)
        self.items[body] = value
        self.bytes += len(body)
        while len(self.items) > 1 and (len(self.items) > self.size or self.bytes > self.budget):
            oldest, _ = self.items.popitem(last=False)
            self.bytes -= len(oldest)
