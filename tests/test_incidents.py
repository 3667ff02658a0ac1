"""The incident model and `plan`, pure: whatever order builds arrive in, with repeats and
re-runs, planning after each arrival leaves a chat in the state in-order arrival gives.

A small chat model applies the planned actions (post, edit) and keeps the records, as the
lane does with a real chat and store; hypothesis draws the builds and their orders.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.incidents import (
    BuildView,
    Content,
    Edit,
    Incident,
    Key,
    Mark,
    Post,
    Record,
    Role,
    RootView,
    Seen,
    digest,
    incidents,
    plan,
    roles,
    root_summary,
    wanted_roles,
    window,
)

INCIDENT_POLICIES = wanted_roles(["first_failure", "still_failing", "fixed"])


def test_incidents_are_failing_streaks_by_build_number() -> None:
    builds = {5: "PASSED", 1: "FAILED", 2: "FAILED", 3: "PASSED", 7: "FAILED", 6: "SKIPPED"}
    assert incidents(builds) == [Incident((1, 2), 3), Incident((7,))]
    assert roles(builds) == {
        1: "first_failure",
        2: "still_failing",
        3: "fixed",
        5: "passed",
        7: "first_failure",
    }


def test_a_window_reaches_from_the_passed_build_below_to_the_one_above() -> None:
    status = {"P": "PASSED", "F": "FAILED"}
    builds = {n: Seen(status[s]) for n, s in enumerate("PFFPFFFP", start=1)}
    around = window(builds, 6)
    assert (around.lower, around.upper, sorted(around.builds)) == (4, 8, [5, 6, 7, 8])
    newest = window(builds, 9)
    assert (newest.lower, newest.upper, sorted(newest.builds)) == (8, None, [])


def test_summaries_say_the_state_and_the_counts() -> None:
    assert root_summary(Incident((4,))) == "Failing since #4 (1 failed build)"
    assert root_summary(Incident((4, 6, 7))) == "Failing since #4 (3 failed builds, latest #7)"
    assert root_summary(Incident((4, 6), 9)) == "Fixed by #9 after 2 failed builds (#4-#6)"


# -- a chat model that applies plans ---------------------------------------------------------


@dataclass
class Message:
    content: Content
    thread: str | None  # the ref of its root


@dataclass
class ModelChat:
    """A threaded chat and a destination's records, as the lane keeps them."""

    wanted: frozenset[Role]
    builds: dict[int, Seen] = field(default_factory=dict)
    completed: dict[int, int] = field(default_factory=dict)  # the newest completion stored
    messages: dict[str, Message] = field(default_factory=dict)
    records: dict[Key, Record] = field(default_factory=dict)
    refs: itertools.count[int] = field(default_factory=itertools.count)

    def arrive(self, number: int, status: str, completion: int, event_id: int) -> None:
        """Store a build's completion (the newest completion wins), then reconcile."""
        if completion >= self.completed.get(number, -1):
            self.completed[number] = completion
            self.builds[number] = Seen(status, event_id)
        around = window(self.builds, number)
        held = [r for r in self.records.values() if around.covers(r)]
        for action in plan(around.builds, held, self.wanted):
            self.apply(action)

    def apply(self, action: Post | Edit) -> None:
        if isinstance(action, Post):
            kind, anchor, number = action.key
            thread = self.records[("root", anchor, anchor)].ref if kind == "reply" else None
            ref = f"m{next(self.refs)}"
            self.messages[ref] = Message(action.content, thread)
            reposted = isinstance(action.content, RootView) and action.content.reposted
            self.records[action.key] = Record(
                kind, anchor, number, ref, digest(action.content), reposted
            )
        else:
            record = action.record
            self.messages[record.ref].content = action.content
            self.records[record.key] = Record(
                record.kind,
                record.anchor,
                record.build,
                record.ref,
                digest(action.content),
                record.reposted,
            )

    def state(self) -> tuple[frozenset[tuple[RootView, frozenset[BuildView]]], frozenset[Content]]:
        """What the channel shows, refs aside: each live root with its live replies, and the
        live messages in the channel that are not roots."""
        live = {ref: m for ref, m in self.messages.items() if not isinstance(m.content, Mark)}
        roots = frozenset(
            (
                m.content,
                frozenset(
                    r.content
                    for r in live.values()
                    if r.thread == ref and isinstance(r.content, BuildView)
                ),
            )
            for ref, m in live.items()
            if isinstance(m.content, RootView)
        )
        singles = frozenset(
            m.content
            for m in live.values()
            if m.thread is None and isinstance(m.content, BuildView)
        )
        return roots, singles


# A scenario: per build, its completions (re-runs) in completion order; an arrival order
# of (build, completion) pairs with repeats.
Completions = dict[int, list[str]]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Completions, list[tuple[int, int]]]:
    count = draw(st.integers(1, 9))
    statuses = st.sampled_from(["FAILED", "PASSED", "FAILED"])
    builds: Completions = {
        n: draw(st.lists(statuses, min_size=1, max_size=2)) for n in range(1, count + 1)
    }
    arrivals = [(n, k) for n, runs in builds.items() for k in range(len(runs))]
    repeats = draw(st.lists(st.sampled_from(arrivals), max_size=3))
    order = draw(st.permutations(arrivals + repeats))
    return builds, order


def event_id(number: int, completion: int) -> int:
    return number * 10 + completion


def in_order(builds: Completions, wanted: frozenset[Role]) -> ModelChat:
    """Each build once, in build number order, with its final completion."""
    chat = ModelChat(wanted)
    for number in sorted(builds):
        last = len(builds[number]) - 1
        chat.arrive(number, builds[number][last], last, event_id(number, last))
    return chat


def arrived(
    builds: Completions, order: list[tuple[int, int]], wanted: frozenset[Role]
) -> ModelChat:
    chat = ModelChat(wanted)
    for number, completion in order:
        status = builds[number][completion]
        chat.arrive(number, status, completion, event_id(number, completion))
    return chat


NOTIFY_SETS = st.sampled_from(
    [
        ["first_failure", "still_failing", "fixed"],
        ["failed"],
        ["failed", "passed"],
        ["first_failure"],
        ["still_failing", "fixed"],
        ["fixed"],
    ]
)


@settings(max_examples=400, deadline=None)
@given(scenarios(), NOTIFY_SETS)
def test_any_arrival_order_ends_in_the_in_order_state(
    scenario: tuple[Completions, list[tuple[int, int]]], notify: list[str]
) -> None:
    builds, order = scenario
    wanted = wanted_roles(notify)
    reference = in_order(builds, wanted)
    chat = arrived(builds, order, wanted)

    assert chat.state() == reference.state()
    # Once in the state, planning again changes nothing.
    for number in builds:
        around = window(chat.builds, number)
        assert (
            plan(around.builds, [r for r in chat.records.values() if around.covers(r)], wanted)
            == []
        )


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_no_root_says_failing_when_the_newest_build_passed(
    scenario: tuple[Completions, list[tuple[int, int]]],
) -> None:
    builds, order = scenario
    chat = arrived(builds, order, INCIDENT_POLICIES)
    newest = max(chat.builds)
    roots, _ = chat.state()
    if chat.builds[newest].status == "PASSED":
        assert all(root.incident.fixed_by is not None for root, _ in roots)
    # Each incident shows once, with a reply for each of its later builds.
    assert sorted((root.incident for root, _ in roots), key=lambda i: i.first) == incidents(
        chat.builds
    )
    for root, replies in roots:
        assert {r.build for r in replies} == set(root.incident.builds[1:])


def run(arrivals: list[tuple[int, str]], wanted: frozenset[Role] = INCIDENT_POLICIES) -> ModelChat:
    chat = ModelChat(wanted)
    for index, (number, status) in enumerate(arrivals):
        chat.arrive(number, status, index, index)
    return chat


def test_a_late_failure_after_a_newer_pass_is_an_incident_already_fixed() -> None:
    chat = run([(3, "PASSED"), (5, "PASSED"), (4, "FAILED")])
    [(root, replies)] = chat.state()[0]
    assert root.summary == "Fixed by #5 after 1 failed build (#4)"
    assert [r.build for r in replies] == [5]


def test_a_late_failure_in_a_closed_incident_joins_its_thread() -> None:
    chat = run([(1, "FAILED"), (3, "PASSED"), (2, "FAILED"), (4, "FAILED")])
    roots = {root.summary: {r.build for r in replies} for root, replies in chat.state()[0]}
    assert roots == {
        "Fixed by #3 after 2 failed builds (#1-#2)": {2, 3},
        "Failing since #4 (1 failed build)": set(),
    }
    assert len([m for m in chat.messages.values() if m.thread is None]) == 2


def test_a_late_failure_between_two_counts_three() -> None:
    chat = run([(6, "FAILED"), (8, "FAILED"), (7, "FAILED")])
    [(root, replies)] = chat.state()[0]
    assert root.summary == "Failing since #6 (3 failed builds, latest #8)"
    assert {r.build for r in replies} == {7, 8}


def test_a_late_pass_splits_an_incident_and_marks_what_moved() -> None:
    chat = run([(1, "FAILED"), (3, "FAILED"), (2, "PASSED")])
    roots = {root.summary: {r.build for r in replies} for root, replies in chat.state()[0]}
    assert roots == {
        "Fixed by #2 after 1 failed build (#1)": {2},
        "Failing since #3 (1 failed build)": set(),
    }
    marks = [m.content.text for m in chat.messages.values() if isinstance(m.content, Mark)]
    assert marks == ["#3 now opens this incident: see the first message"]


def test_a_rerun_that_fails_merges_two_incidents() -> None:
    chat = run([(1, "FAILED"), (2, "PASSED"), (3, "FAILED"), (2, "FAILED")])
    roots = {root.summary: {r.build for r in replies} for root, replies in chat.state()[0]}
    assert roots == {"Failing since #1 (3 failed builds, latest #3)": {2, 3}}
    marks = sorted(m.content.text for m in chat.messages.values() if isinstance(m.content, Mark))
    # #2's reply (it fixed #1) stays in #1's thread, edited to show it failed.
    assert marks == ["Merged into the incident since #1: see its thread"]


def test_a_root_the_chat_lost_is_posted_again_saying_so_with_its_replies() -> None:
    builds = {1: Seen("FAILED", 10), 2: Seen("FAILED", 20)}
    # The lane forgot the thread's replies and kept the root without a ref (`threads`).
    lost = Record("root", 1, 1, "", "gone", reposted=True)

    actions = plan(builds, [lost], INCIDENT_POLICIES)

    root = RootView(Incident((1, 2)), 10, 20, reposted=True)
    assert actions == [
        Post(("root", 1, 1), root),
        Post(("reply", 1, 2), BuildView(2, "FAILED", 20, "still_failing")),
    ]
    assert root.summary.endswith("— the first message of this incident was deleted")
