"""Silences and acknowledgements: who is told, never what is stored.

Silences mute what a factory and trigger glob match, at one destination or all, for a time.

Alertmanager's silences are the model: a silence has a start and an end, a comment and an
author; it is pending before its start, active until its end, then expired (and kept, so
that the status page can say what was muted and by whom). Expiring one early sets its end
to now.

A silence acts at intake: a delivery it matches is stored `silenced` (shown, never sent).
So when a silence ends while its incident still fails, the next build notifies as usual.
An acknowledgement says that someone looks after an incident (Slack's "Acknowledge" on
its root): the incident's later builds are still shown, without mentions.

Everything here is pure; the store keeps both, so replicas share them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from bridge.durations import Duration

SilenceState = Literal["pending", "active", "expired"]

# A silence lasts at most this long: a longer one is a route to remove, not a mute.
LONGEST = 90 * 86400.0
COMMENT_LIMIT = 500
NAME_LIMIT = 200


@dataclass(frozen=True, kw_only=True)
class NewSilence:
    """A silence to keep; the store gives it its id."""

    factory: str  # glob; "*" matches every factory
    trigger: str  # glob; "*" matches every trigger (and builds without one)
    destination: str | None  # None: every destination
    starts_at: float
    ends_at: float
    comment: str
    author: str

    def matches(self, factory: str, trigger: str, destination: str) -> bool:
        """Whether the silence covers a build of (factory, trigger) sent to `destination`."""
        return (
            (self.destination is None or self.destination == destination)
            and fnmatchcase(factory, self.factory)
            and fnmatchcase(trigger, self.trigger)
        )

    def state(self, now: float) -> SilenceState:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def active(self, now: float) -> bool:
        return self.state(now) == "active"


@dataclass(frozen=True, kw_only=True)
class Silence(NewSilence):
    id: int
    created_at: float

    @property
    def scope(self) -> str:
        """What it mutes, in a few words: "andy-corp / platform-* at ci-alerts"."""
        where = "every destination" if self.destination is None else self.destination
        return f"{self.factory} / {self.trigger} at {where}"

    def shown(self) -> dict[str, Any]:
        """What a message says of it (the template's `incident.muted`)."""
        until = datetime.fromtimestamp(self.ends_at, UTC).isoformat()
        return {"until": until, "author": self.author, "comment": self.comment, "id": self.id}


def silencing(
    silences: Iterable[Silence], factory: str, trigger: str, destination: str, now: float
) -> Silence | None:
    """The active silence that mutes (factory, trigger) at `destination`, if any (the one
    that ends last, so that what is shown says how long the mute lasts)."""
    found = [s for s in silences if s.active(now) and s.matches(factory, trigger, destination)]
    return max(found, key=lambda s: (s.ends_at, s.id), default=None)


@dataclass(frozen=True, kw_only=True)
class Acknowledgement:
    """Someone looks after the incident whose root (at `destination`) is anchored at
    `anchor`, the build that root was first posted for."""

    destination: str
    factory: str
    trigger: str
    anchor: int
    user_id: str  # Slack's U…/W… id
    user_name: str
    at: float


def acknowledged_by(acks: Iterable[Acknowledgement], failed_builds: Iterable[int]) -> str:
    """Who acknowledged the incident of these failed builds (its roots are anchored at one
    of them, whatever merged since): the first to, or ""."""
    members = set(failed_builds)
    found = sorted((a for a in acks if a.anchor in members), key=lambda a: a.at)
    return found[0].user_id if found else ""


_GLOB_SPECIALS = re.compile(r"([*?\[])")


def literal(name: str) -> str:
    """A glob that matches `name` alone (its `*`, `?` and `[` taken as they are)."""
    return _GLOB_SPECIALS.sub(r"[\1]", name)


def _one_line(value: str) -> str:
    if any(not c.isprintable() for c in value):
        raise ValueError("must be one line of printable text")
    return value


def _glob(value: str) -> str:
    value = _one_line(value.strip())
    if not value:
        raise ValueError("must not be empty (use * for any)")
    return value


Glob = Annotated[str, Field(max_length=NAME_LIMIT), AfterValidator(_glob)]


class SilenceRequest(BaseModel):
    """What the CLI, the status page and its JSON API ask for when they add a silence."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    factory: Glob = "*"
    trigger: Glob = "*"
    destination: str | None = Field(default=None, max_length=NAME_LIMIT)
    duration: Duration = Field(alias="for")
    comment: str = Field(min_length=1, max_length=COMMENT_LIMIT)
    author: str = Field(min_length=1, max_length=NAME_LIMIT)

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        return _one_line(value) if value else None

    @field_validator("duration")
    @classmethod
    def _duration(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("a silence must last some time (e.g. 2h)")
        if seconds > LONGEST:
            raise ValueError(f"a silence lasts at most {LONGEST / 86400:.0f}d")
        return seconds

    @field_validator("comment", "author")
    @classmethod
    def _text(cls, value: str) -> str:
        value = _one_line(value.strip())
        if not value:
            raise ValueError("must not be empty")
        return value

    def at(self, now: float) -> NewSilence:
        """The silence this asks for, starting `now`."""
        return NewSilence(
            factory=self.factory,
            trigger=self.trigger,
            destination=self.destination,
            starts_at=now,
            ends_at=now + self.duration,
            comment=self.comment,
            author=self.author,
        )
