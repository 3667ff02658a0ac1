"""Digests: the builds due at once on a lane, sent as one message.

A lane held by its rate limit (or hit by a burst) finds several deliveries due at its
head. Rather than send them one a second, it sends the consecutive run at its head, up
to the destination's `digest_max`, as one message whose template lists the builds.
Nothing waits to be grouped: a lone delivery on an idle lane goes at once, as itself.

These are the pure parts: which deliveries share a message, what a digest's template
context holds, and how many builds fit in the chat's size limits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jinja2
from jinja2 import meta

from bridge.chats.base import Body, Fits

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


def handles_digest(environment: jinja2.Environment, source: str) -> bool:
    """Whether a template's source (for `environment`, whose filters it may use) reads the
    context's `digest`: if not, its builds go one by one."""
    try:
        return "digest" in meta.find_undeclared_variables(environment.parse(source))
    except jinja2.TemplateError:  # it does not compile: refused at load anyway
        return False


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
