"""What a build's outcome means next to the builds before it: broken, still broken, fixed.

History is kept per (factory, trigger) and ordered by build number, not by arrival,
so events that arrive late or twice do not change what an earlier build meant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

# What a route's `notify` can ask for.
Policy = Literal["failed", "first_failure", "still_failing", "fixed", "passed"]
POLICIES: tuple[Policy, ...] = ("failed", "first_failure", "still_failing", "fixed", "passed")


# A failing streak is counted up to this many builds ("1000+ failed builds").
STREAK_LIMIT = 1000


def _builds(count: int) -> str:
    number = f"{STREAK_LIMIT}+" if count >= STREAK_LIMIT else str(count)
    return f"{number} failed build" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class Transition:
    kind: Literal["first_failure", "still_failing", "fixed", "passed", "other"]
    summary: str  # e.g. "Still failing since #41", "Fixed after 3 failed builds (#41-#43)"
    since: int | None = None  # the first failed build of the streak
    failed_count: int = 0  # failed builds in the streak (this one included when it failed)
    previous: int | None = None  # the build just before, if known
    previous_status: str | None = None
    # Builds above this one that arrived before it: the newest (None: this build is news),
    # and the passed build that ends this failure's streak.
    later: int | None = None
    fixed_by: int | None = None

    @property
    def policies(self) -> frozenset[Policy]:
        """The `notify` values this event answers to."""
        if self.kind in ("first_failure", "still_failing"):
            return frozenset(("failed", self.kind))
        if self.kind == "fixed":
            return frozenset(("passed", "fixed"))
        if self.kind == "passed":
            return frozenset(("passed",))
        return frozenset()

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "summary": self.summary,
            "since": self.since,
            "failed_count": self.failed_count,
            "previous": self.previous,
            "previous_status": self.previous_status,
            "later": self.later,
            "fixed_by": self.fixed_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transition:
        return cls(**data)


@dataclass(frozen=True)
class History:
    """What the store knows of the builds before this one (of the same factory and trigger)."""

    previous: int | None = None
    previous_status: str | None = None
    # The failed builds that end at `previous`: the first one and how many (none: 0).
    streak_since: int | None = None
    streak_count: int = 0
    # What is known above it: the newest build, the first build above that did not fail
    # and its status, and how many failed builds lie between (counted up to STREAK_LIMIT).
    later: int | None = None
    ended_above: tuple[int, str] | None = None
    failed_above: int = 0


def above(
    before: History, later: int | None, ended: tuple[int, str] | None, failed: int
) -> History:
    """`before` with what a store read of the builds above this one."""
    return replace(before, later=later, ended_above=ended, failed_above=failed)


def history(earlier: Iterable[tuple[int, str]]) -> History:
    """History from the earlier builds, newest first (read only as far as needed)."""
    builds = iter(earlier)
    first = next(builds, None)
    if first is None:
        return History()
    previous, previous_status = first
    if previous_status != "FAILED":
        return History(previous, previous_status)
    since, count = previous, 1
    for number, status in builds:
        if status != "FAILED":
            break
        since, count = number, count + 1
    return History(previous, previous_status, since, count)


def streak_history(
    build_id: int,
    rerun_status: str | None,
    prior: tuple[int, str] | None,
    streak: tuple[int, int] | None,
) -> History:
    """History from what a store read: the status of an earlier completion of this same
    build (a re-run ended it otherwise), the newest build below it, and, when that one
    failed, the failing streak it ends (its first build and its length)."""
    if rerun_status is not None:
        previous, status = build_id, rerun_status
    elif prior is not None:
        previous, status = prior
    else:
        return History()
    if status != "FAILED":
        return History(previous, status)
    if streak is None:  # only the re-run failed
        return History(previous, status, build_id, 1)
    since, count = streak
    return History(previous, status, since, count + (rerun_status is not None))


def transition(build_id: int, status: str, before: History) -> Transition:
    """This build's transition, given its history."""
    previous, previous_status = before.previous, before.previous_status
    streak = before.streak_count
    status = status.upper()
    later = {"later": before.later}
    if status == "FAILED":
        # A late failure counts the failed builds above it too, by build number; when a
        # newer build passed already, it says so (a chat that cannot edit cannot do better).
        count = streak + 1 + before.failed_above
        ended = before.ended_above
        fixed_by = ended[0] if ended is not None and ended[1] == "PASSED" else None
        since = f"; #{fixed_by} has passed since" if fixed_by is not None else ""
        if streak:
            return Transition(
                "still_failing",
                f"Still failing since #{before.streak_since} ({_builds(count)}){since}",
                before.streak_since,
                count,
                previous,
                previous_status,
                fixed_by=fixed_by,
                **later,
            )
        passed_before = previous_status == "PASSED"
        if passed_before and previous == build_id:  # this very build passed, then a re-run
            summary = f"Failed when re-run (it had passed){since}"
        elif passed_before:
            summary = f"New failure after #{previous} passed{since}"
        else:
            summary = since.removeprefix("; ") or "Failed"
        return Transition(
            "first_failure",
            summary,
            build_id,
            count,
            previous,
            previous_status,
            fixed_by=fixed_by,
            **later,
        )
    if status == "PASSED":
        if streak:
            span = f"#{before.streak_since}" + (f"-#{previous}" if streak > 1 else "")
            return Transition(
                "fixed",
                f"Fixed after {_builds(streak)} ({span})",
                before.streak_since,
                streak,
                previous,
                previous_status,
                **later,
            )
        return Transition("passed", "Passed", None, 0, previous, previous_status, **later)
    return Transition("other", status.capitalize(), None, 0, previous, previous_status, **later)
