"""What a build's outcome means next to the builds before it: broken, still broken, fixed.

History is kept per (factory, trigger) and ordered by build number, not by arrival,
so events that arrive late or twice do not change what an earlier build meant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

# What a route's `notify` can ask for.
Policy = Literal["failed", "first_failure", "still_failing", "fixed", "passed"]
POLICIES: tuple[Policy, ...] = ("failed", "first_failure", "still_failing", "fixed", "passed")

# How many earlier builds are looked at to find where a failing streak began.
HISTORY_DEPTH = 1000


@dataclass(frozen=True)
class Transition:
    kind: Literal["first_failure", "still_failing", "fixed", "passed", "other"]
    summary: str  # e.g. "Still failing since #41", "Fixed after 3 failed builds (#41-#43)"
    since: int | None = None  # the first failed build of the streak
    failed_builds: tuple[int, ...] = ()  # the streak, oldest first (this build included)
    previous: int | None = None  # the build just before, if known
    previous_status: str | None = None

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
        data = asdict(self)
        data["failed_builds"] = list(self.failed_builds)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transition:
        return cls(**{**data, "failed_builds": tuple(data.get("failed_builds") or ())})


def _span(builds: list[int]) -> str:
    return f"#{builds[0]}" if len(builds) == 1 else f"#{builds[0]}-#{builds[-1]}"


def transition(build_id: int, status: str, earlier: list[tuple[int, str]]) -> Transition:
    """This build's transition, given the builds before it, newest first."""
    previous, previous_status = earlier[0] if earlier else (None, None)
    streak: list[int] = []
    for number, earlier_status in earlier:
        if earlier_status != "FAILED":
            break
        streak.append(number)
    streak.reverse()
    status = status.upper()
    if status == "FAILED":
        if streak:
            builds = (*streak, build_id)
            return Transition(
                "still_failing",
                f"Still failing since #{streak[0]} ({len(builds)} failed builds)",
                streak[0],
                builds,
                previous,
                previous_status,
            )
        passed_before = previous_status == "PASSED"
        summary = f"New failure after #{previous} passed" if passed_before else "Failed"
        return Transition(
            "first_failure", summary, build_id, (build_id,), previous, previous_status
        )
    if status == "PASSED":
        if streak:
            count = len(streak)
            plural = "s" if count > 1 else ""
            return Transition(
                "fixed",
                f"Fixed after {count} failed build{plural} ({_span(streak)})",
                streak[0],
                tuple(streak),
                previous,
                previous_status,
            )
        return Transition("passed", "Passed", None, (), previous, previous_status)
    return Transition("other", status.capitalize(), None, (), previous, previous_status)
