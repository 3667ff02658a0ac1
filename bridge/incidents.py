"""Incidents: the failing streaks of one (factory, trigger), by build number, and what a
threaded chat must show of them.

An incident runs from its first failed build up to the first passed build after it (its
fixer). Every build belongs to one incident, or fixes one, or neither; builds of other
statuses (neither FAILED nor PASSED) are left out. Counts are of failed builds by build
number, whenever they arrived.

A threaded destination shows a wanted incident as one root message, a living summary
whose content is a function of the incident alone, and a thread with one reply per later
build of the incident (its later failures and its fixer), each a function of its own
build alone. So, whatever order builds arrive in, `plan` brings the chat to the one state
those builds call for: post what is missing, edit what differs, and mark (edit) what no
longer belongs, since a posted message cannot be taken back.

Everything here is pure: the store reads builds and records, `bridge.threads` carries out
the actions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Literal

from bridge.silences import Acknowledgement, Silence, acknowledged_by

FAILED = "FAILED"
PASSED = "PASSED"

# A build's role in its trigger's incidents; the same names as the `notify` policies.
Role = Literal["first_failure", "still_failing", "fixed", "passed"]
# root: an incident's summary; reply: a later build in its thread; single: a passed build
# in no incident, posted in the channel (for routes that want every pass).
MessageKind = Literal["root", "reply", "single"]
# A message's place: (kind, anchor, build). A root's anchor is the build it was first posted
# for and never changes; a reply's anchor is its root's; a single's is its build.
Key = tuple[MessageKind, int, int]


@dataclass(frozen=True)
class Seen:
    """A build as the store knows it now: its status, and the stored event that said so."""

    status: str
    event_id: int | None = None  # None: the event is no longer stored


@dataclass(frozen=True)
class Incident:
    failed: tuple[int, ...]  # its failed builds, in build number order
    fixed_by: int | None = None

    @property
    def first(self) -> int:
        return self.failed[0]

    @property
    def latest(self) -> int:
        return self.failed[-1]

    @property
    def count(self) -> int:
        return len(self.failed)

    @property
    def builds(self) -> tuple[int, ...]:
        """Its failed builds and its fixer."""
        return self.failed + ((self.fixed_by,) if self.fixed_by is not None else ())


def incidents(builds: Mapping[int, str | Seen]) -> list[Incident]:
    """The incidents of a trigger's builds (build number -> status), lowest first."""
    found: list[Incident] = []
    streak: list[int] = []
    for number in sorted(builds):
        status = _status(builds[number])
        if status == FAILED:
            streak.append(number)
        elif status == PASSED and streak:
            found.append(Incident(tuple(streak), number))
            streak = []
    if streak:
        found.append(Incident(tuple(streak)))
    return found


def roles(builds: Mapping[int, str | Seen]) -> dict[int, Role]:
    """What each failed or passed build is to its trigger's incidents."""
    found: dict[int, Role] = {
        n: "passed" for n, status in builds.items() if _status(status) == PASSED
    }
    for incident in incidents(builds):
        found[incident.first] = "first_failure"
        found.update(dict.fromkeys(incident.failed[1:], "still_failing"))
        if incident.fixed_by is not None:
            found[incident.fixed_by] = "fixed"
    return found


def _status(value: str | Seen) -> str:
    return (value.status if isinstance(value, Seen) else value).upper()


@dataclass(frozen=True)
class Window:
    """The builds whose incidents a build's arrival can change: those above the newest
    passed build below it (`lower`), up to and including the first passed build above it
    (`upper`); None where there is no such build."""

    lower: int | None
    upper: int | None
    builds: dict[int, Seen]

    def holds(self, number: int) -> bool:
        return (self.lower is None or number > self.lower) and (
            self.upper is None or number <= self.upper
        )

    def covers(self, record: Record) -> bool:
        """Whether `plan` decides this record: its build is in the window, or its root's
        anchor lies strictly between the passed builds that bound it."""
        inside = (self.lower is None or record.anchor > self.lower) and (
            self.upper is None or record.anchor < self.upper
        )
        return inside or self.holds(record.build)


def window(builds: Mapping[int, Seen], around: int) -> Window:
    """`Window` of `around` in all of a trigger's builds (what the stores read by index)."""
    passed = [n for n, seen in builds.items() if seen.status.upper() == PASSED]
    lower = max((n for n in passed if n < around), default=None)
    upper = min((n for n in passed if n > around), default=None)
    held = Window(lower, upper, {})
    return replace(held, builds={n: s for n, s in builds.items() if held.holds(n)})


def wanted_roles(notify: Iterable[str]) -> frozenset[Role]:
    """The roles a destination's `notify` policies ask for."""
    wanted: set[Role] = set()
    for policy in notify:
        if policy == "failed":
            wanted.update(("first_failure", "still_failing"))
        elif policy == "passed":
            wanted.update(("fixed", "passed"))
        elif policy == "first_failure":
            wanted.add("first_failure")
        elif policy == "still_failing":
            wanted.add("still_failing")
        elif policy == "fixed":
            wanted.add("fixed")
    return frozenset(wanted)


# -- what a message shows: a function of the incident, or of one build ----------------------


@dataclass(frozen=True)
class RootView:
    incident: Incident
    first_event: int | None
    latest_event: int | None
    reposted: bool = False  # the first root of this incident was deleted from the chat
    # What people did about it: who acknowledged it (a Slack user id), the silence that
    # mutes its trigger there now (while it fails).
    acknowledged_by: str = ""
    muted: Silence | None = None

    @property
    def summary(self) -> str:
        return root_summary(self.incident, reposted=self.reposted)


@dataclass(frozen=True)
class BuildView:
    """A reply in a thread, or a single message in the channel."""

    build: int
    status: str
    event_id: int | None
    role: Role

    @property
    def note(self) -> str:
        return {"still_failing": "Still failing", "fixed": "Fixed"}.get(self.role, "")


@dataclass(frozen=True)
class Mark:
    """What a message that no longer belongs is edited to say."""

    text: str


Content = RootView | BuildView | Mark


def _failed_builds(count: int) -> str:
    return f"{count} failed build" + ("" if count == 1 else "s")


def root_summary(incident: Incident, *, reposted: bool = False) -> str:
    """ "Failing since #41 (3 failed builds, latest #43)" or "Fixed by #44 after ..."."""
    span = f"#{incident.first}" + (f"-#{incident.latest}" if incident.count > 1 else "")
    if incident.fixed_by is not None:
        text = f"Fixed by #{incident.fixed_by} after {_failed_builds(incident.count)} ({span})"
    else:
        latest = f", latest #{incident.latest}" if incident.count > 1 else ""
        text = f"Failing since #{incident.first} ({_failed_builds(incident.count)}{latest})"
    return text + (" — the first message of this incident was deleted" if reposted else "")


def digest(content: Content) -> str:
    """A short fingerprint of what a message shows: a record whose digest differs is edited."""
    kind = type(content).__name__
    shown = asdict(content)
    # Left out when unset, so that roots recorded before these existed are not edited.
    for name, unset in (("acknowledged_by", ""), ("muted", None)):
        if name in shown and shown[name] == unset:
            del shown[name]
    data = json.dumps([kind, shown], sort_keys=True, separators=(",", ":"))
    return kind[0] + hashlib.sha256(data.encode()).hexdigest()[:23]


def is_mark(record_digest: str) -> bool:
    return record_digest.startswith("M")


# -- records and actions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """A message a destination holds: where it is (`ref`) and what it shows (`digest`)."""

    kind: MessageKind
    anchor: int
    build: int
    ref: str
    digest: str
    reposted: bool = False

    @property
    def key(self) -> Key:
        return (self.kind, self.anchor, self.build)

    @property
    def live(self) -> bool:
        return not is_mark(self.digest)


@dataclass(frozen=True)
class Post:
    key: Key
    content: Content

    @property
    def thread(self) -> int | None:
        """The anchor of the root a reply goes under."""
        return self.key[1] if self.key[0] == "reply" else None


@dataclass(frozen=True)
class Edit:
    record: Record
    content: Content


Action = Post | Edit


def plan(
    builds: Mapping[int, Seen],
    records: Iterable[Record],
    wanted: frozenset[Role],
    acks: Iterable[Acknowledgement] = (),
    muted: Silence | None = None,
    silenced: frozenset[int] = frozenset(),
) -> list[Action]:
    """The actions that bring a destination's messages about `builds` (a `Window`'s) to
    what those builds call for, given the `records` of the messages it holds about them,
    the trigger's acknowledgements there and the silence that mutes it there now.
    A `silenced` build (its delivery here was muted) gets no message of its own; its
    incident's root still counts it.

    Roots come first (replies need them), then replies and singles, then marks.
    """
    held = {record.key: record for record in records}
    desired = _desired(builds, held, wanted, tuple(acks), muted, silenced)
    actions: list[Action] = []
    for key, content in desired.items():
        record = held.get(key)
        if record is None or not record.ref:  # no ref: the chat lost it, post it again
            actions.append(Post(key, content))
        elif record.digest != digest(content):
            actions.append(Edit(record, content))
    # A message marked once stays as it is (what it says depends on what a window sees).
    marks = [
        Edit(record, _mark(record, builds, desired))
        for key, record in sorted(held.items())
        if key not in desired and record.live and record.ref
    ]
    order = {"root": 0, "reply": 1, "single": 1}
    actions.sort(key=lambda a: (order[_key(a)[0]], _key(a)[2], _key(a)[1]))
    return actions + marks


def _key(action: Action) -> Key:
    return action.key if isinstance(action, Post) else action.record.key


def _desired(
    builds: Mapping[int, Seen],
    held: Mapping[Key, Record],
    wanted: frozenset[Role],
    acks: tuple[Acknowledgement, ...] = (),
    muted: Silence | None = None,
    silenced: frozenset[int] = frozenset(),
) -> dict[Key, Content]:
    desired: dict[Key, Content] = {}
    role = roles(builds)
    for incident in incidents(builds):
        if not wanted.intersection(role[n] for n in incident.builds):
            continue
        anchor, reposted = _root_of(incident, held)
        failing = incident.fixed_by is None
        view = RootView(
            incident,
            builds[incident.first].event_id,
            builds[incident.latest].event_id,
            reposted,
            acknowledged_by(acks, incident.failed),
            muted if failing else None,
        )
        desired[("root", anchor, anchor)] = view
        for number in incident.builds[1:]:
            if role[number] in wanted and number not in silenced:
                seen = builds[number]
                status = seen.status.upper()
                desired[("reply", anchor, number)] = BuildView(
                    number, status, seen.event_id, role[number]
                )
    if "passed" in wanted:
        for number, kind in role.items():
            if kind == "passed" and number not in silenced:
                seen = builds[number]
                desired[("single", number, number)] = BuildView(
                    number, PASSED, seen.event_id, "passed"
                )
    return desired


def _root_of(incident: Incident, held: Mapping[Key, Record]) -> tuple[int, bool]:
    """The root record that shows `incident` (its anchor, and whether it was reposted): a
    live one anchored in the incident before a marked one, the lowest anchor first; else a
    new root anchored at its first build."""
    members = set(incident.failed)
    roots = [r for r in held.values() if r.kind == "root" and r.anchor in members]
    if not roots:
        return incident.first, False
    chosen = min(roots, key=lambda r: (not r.live, r.anchor))
    return chosen.anchor, chosen.reposted


def _mark(record: Record, builds: Mapping[int, Seen], desired: Mapping[Key, Content]) -> Mark:
    """What a message that no longer belongs says instead, pointing to where it went."""
    home = {
        number: content.incident
        for content in desired.values()
        if isinstance(content, RootView)
        for number in content.incident.builds
    }
    number = record.anchor if record.kind == "root" else record.build
    seen = builds.get(number)
    moved = home.get(number)
    if moved is not None:
        where = f"the incident since #{moved.first}"
        if record.kind == "reply" and moved.first == number:
            return Mark(f"#{number} now opens this incident: see the first message")
        if record.kind == "root":
            return Mark(f"Merged into {where}: see its thread")
        return Mark(f"#{number} is now part of {where}: see its thread")
    if seen is not None and seen.status.upper() == PASSED:
        return Mark(f"#{number} has passed since (a re-run): no longer a failure")
    return Mark(f"#{number}: no longer part of this incident")
