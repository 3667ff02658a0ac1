"""Digests: the builds due at once on a lane, sent as one message.

A lane held by its rate limit (or hit by a burst) finds several deliveries due at its
head. Rather than send them one a second, it sends the consecutive run at its head, up
to the destination's `digest_max`, as one message whose template lists the builds.
Nothing waits to be grouped: a lone delivery on an idle lane goes at once, as itself.

Only chats that do not thread digest: on Slack's Web API and Matrix a build's message is
its incident's root or a reply in its thread (bridge.threads), and replies stay replies.
A template digests when it reads `digest` (`Template.digests`); else builds go one by one.

A digest is one send whose outcome is every member's: sent, retried (at one time) or
dead together. Each member stays its own delivery in the store, so one whose outcome was
not recorded (a crash mid-digest) is claimed and sent again: at least once, never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bridge.chats import CHAT_TYPES
from bridge.chats.base import Body, DestinationSettings, Fits
from bridge.giveup import backoff
from bridge.jobserv import Build
from bridge.outcome import Outcome, Retry
from bridge.render import Rendered, Template, context
from bridge.store import Delivery

log = logging.getLogger("bridge.delivery")

T = TypeVar("T")

# What a digest's template gets of each build: the single-build context's keys for a
# line (factory, trigger, number, status, what changed, failed runs, link).
DIGEST_FIELDS = (
    "event_id",
    "factory",
    "project",
    "trigger",
    "build_id",
    "status",
    "failed",
    "passed",
    "note",
    "transition",
    "counts",
    "links",
    "reason",
    "created",
    "completed",
    "duration_text",
    "mentions",
)


def next_unit(due: Sequence[T], most: int, alone: Callable[[T], bool]) -> int:
    """How many deliveries at the head of `due` go as one message.

    The head alone when it must go alone (or `most` is 1); else the run of consecutive
    deliveries that may share a message, at most `most`. Only a head run, so a message
    never overtakes another of its lane.
    """
    if not due:
        return 0
    if most <= 1 or alone(due[0]):
        return 1
    count = 1
    for item in due[1:most]:
        if alone(item):
            break
        count += 1
    return count


def units(due: Sequence[T], most: int, alone: Callable[[T], bool]) -> list[list[T]]:
    """`due` cut into the messages `next_unit` makes, in order."""
    found: list[list[T]] = []
    start = 0
    while start < len(due):
        count = next_unit(due[start:], most, alone)
        found.append(list(due[start : start + count]))
        start += count
    return found


def digest_entry(context: Mapping[str, Any]) -> dict[str, Any]:
    """One build of a digest, from its single-build template context."""
    return {key: context[key] for key in DIGEST_FIELDS}


def digest_context(
    entries: Sequence[Mapping[str, Any]], *, destination: str, more: int = 0
) -> dict[str, Any]:
    """The context of a digest message: `entries` (from `digest_entry`) in lane order, and
    `more` builds due after them that this message does not carry (they follow)."""
    statuses = [entry["status"] for entry in entries]
    failed = statuses.count("FAILED")
    passed = statuses.count("PASSED")
    mentions = dict.fromkeys(mention for entry in entries for mention in entry["mentions"])
    return {
        "digest": [dict(entry) for entry in entries],
        "more_builds": more,
        "digest_counts": {
            "builds": len(entries),
            "failed": failed,
            "passed": passed,
            "other": len(entries) - failed - passed,
        },
        "destination": destination,
        "mentions": list(mentions),
    }


def fit_members(render: Callable[[int], Body], total: int, fits: Fits | None) -> tuple[int, Body]:
    """The most builds (of `total`, at least 2) whose digest fits the chat, and its body.

    `render(count)` renders the digest of the first `count` builds. When not even two
    fit, (1, "") : the head goes alone, as an ordinary message (which has its own ways
    to fit). Fitting only gets easier with fewer builds, so a binary search finds it.
    """
    if total < 2:
        return 1, ""
    body = render(total)
    if fits is None or fits(body) is None:
        return total, body
    best: tuple[int, Body] = (1, "")
    low, high = 2, total - 1
    while low <= high:
        middle = (low + high) // 2
        candidate = render(middle)
        if fits(candidate) is None:
            best, low = (middle, candidate), middle + 1
        else:
            high = middle - 1
    return best


def render_digest(
    template: Template,
    settings: DestinationSettings,
    entries: Sequence[Mapping[str, Any]],
    due: int,
) -> tuple[int, Rendered]:
    """The digest of the first of `entries` that fit the destination's chat (at least two;
    else (1, an empty Rendered): the head goes alone); `due` builds are due in all."""
    chat = CHAT_TYPES[settings.type]
    count, body = fit_members(
        lambda shown: template.render(
            digest_context(entries[:shown], destination=settings.name, more=due - shown)
        ),
        len(entries),
        chat.fits,
    )
    if count < 2:
        return 1, Rendered("", 0)
    return count, Rendered(body, 0, count < len(entries), chat.prepare(settings, body))


# A delivery's build and its template facts (the lane's cache of parsed events).
Parse = Callable[[Delivery], tuple[Build, dict[str, Any]]]
# Per delivery: the send, its outcome, and whether it was attempted.
Attempt = tuple[Delivery, Outcome, bool]


@dataclass(frozen=True)
class Digest:
    """Consecutive deliveries of a lane going as one message."""

    members: list[Delivery]
    rendered: Rendered

    @property
    def key(self) -> str:
        """The same for a resend of the same digest, which a receiver may then drop."""
        return f"{self.members[0].key}-digest-{len(self.members)}"

    def outcomes(self, outcome: Outcome, retry_initial: float, retry_max: float) -> list[Attempt]:
        """The send's outcome, every member's. A retry with no time the chat asked for gets
        one for all (the head's backoff): they are due together, and go together again."""
        if isinstance(outcome, Retry) and outcome.after is None:
            wait = backoff(self.members[0].attempts + 1, retry_initial, retry_max)
            outcome = Retry(outcome.reason, wait, code=outcome.code)
        return [(member, outcome, True) for member in self.members]


class Digester:
    """Which of a lane's due deliveries go as one digest, rendered."""

    def __init__(self, settings: DestinationSettings, template: Template, parse: Parse) -> None:
        self.settings = settings
        self.template = template
        self.parse = parse
        threads = CHAT_TYPES[settings.type].threads
        digests = settings.digest and template.digests and not threads
        self.most = settings.digest_max if digests else 1  # builds in one message

    def take(self, due: Sequence[Delivery], alone: Callable[[Delivery], bool]) -> Digest | None:
        """The digest at the head of `due` (the lane's claimed deliveries, in order), or None
        when the head goes alone. `alone`: deliveries that must (their outcome was not
        stored); so does one whose event is not a build, for its own outcome to say so."""
        if self.most < 2:
            return None
        count = next_unit(due, self.most, lambda d: alone(d) or not self._parses(d))
        if count < 2:
            return None
        members = list(due[:count])
        try:
            entries = [self._entry(delivery) for delivery in members]
            shown, rendered = render_digest(self.template, self.settings, entries, len(due))
        except Exception:  # a user's template that fails on digests: builds go one by one
            log.warning("%s: cannot render a digest", self.settings.name, exc_info=True)
            return None
        if shown < 2:
            return None
        log.info(
            "%s: %d builds due at once go as one digest (deliveries %d to %d)%s",
            self.settings.name,
            shown,
            members[0].id,
            members[shown - 1].id,
            f", {count - shown} more next: over the chat's limits" if shown < count else "",
            extra={"destination": self.settings.name, "digest": [d.id for d in members[:shown]]},
        )
        return Digest(members[:shown], rendered)

    def _parses(self, delivery: Delivery) -> bool:
        try:
            self.parse(delivery)
        except Exception:
            return False
        return True

    def _entry(self, delivery: Delivery) -> dict[str, Any]:
        """A build's line in a digest: its context's facts (no failed tests looked up)."""
        build, facts = self.parse(delivery)
        return digest_entry(
            context(
                build,
                event_id=delivery.event_id,
                destination=self.settings.name,
                change=delivery.transition,
                mentions=delivery.mentions,
                facts=facts,
            )
        )
