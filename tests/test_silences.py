"""Silences: the model (globs, destination, time) and what callers may ask for."""

from __future__ import annotations

import hashlib
import json
from fnmatch import fnmatchcase

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.incidents import Edit, Incident, Post, Record, RootView, Seen, digest, plan
from bridge.silences import (
    LONGEST,
    Acknowledgement,
    Silence,
    SilenceRequest,
    acknowledged_by,
    literal,
    silencing,
)

NOW = 1_800_000_000.0


def silence(
    factory: str = "*",
    trigger: str = "*",
    destination: str | None = None,
    starts: float = NOW - 60,
    ends: float = NOW + 3600,
    id: int = 1,
) -> Silence:
    return Silence(
        factory=factory,
        trigger=trigger,
        destination=destination,
        starts_at=starts,
        ends_at=ends,
        comment="known breakage",
        author="ana",
        id=id,
        created_at=starts,
    )


def test_a_silence_matches_by_factory_and_trigger_globs_and_destination() -> None:
    muted = silence("andy-*", "platform-*", "ci-alerts")
    assert muted.matches("andy-corp", "platform-devel", "ci-alerts")
    assert not muted.matches("bob-corp", "platform-devel", "ci-alerts")
    assert not muted.matches("andy-corp", "docs", "ci-alerts")
    assert not muted.matches("andy-corp", "platform-devel", "ops")
    everywhere = silence("andy-corp")
    assert everywhere.matches("andy-corp", "", "ops")
    assert everywhere.matches("andy-corp", "anything", "ci-alerts")
    assert not silence("Andy-corp").matches("andy-corp", "x", "ops")  # case counts, as routes


def test_a_silence_is_pending_then_active_then_expired() -> None:
    muted = silence(starts=NOW, ends=NOW + 10)
    assert muted.state(NOW - 1) == "pending"
    assert muted.state(NOW) == "active"
    assert muted.state(NOW + 9.9) == "active"
    assert muted.state(NOW + 10) == "expired"


def test_silencing_picks_an_active_matching_silence_that_ends_last() -> None:
    found = [
        silence("*", "*", "ops", id=1),  # another destination
        silence(ends=NOW - 1, id=2),  # expired
        silence(starts=NOW + 5, id=3),  # pending
        silence("andy-corp", ends=NOW + 60, id=4),
        silence("andy-*", ends=NOW + 600, id=5),
    ]
    chosen = silencing(found, "andy-corp", "platform", "ci-alerts", NOW)
    assert chosen is not None and chosen.id == 5
    assert silencing(found[:3], "andy-corp", "platform", "ci-alerts", NOW) is None
    # When the silence ends, nothing mutes any more: the next build notifies as usual.
    assert silencing(found[:2] + found[3:], "andy-corp", "platform", "ci-alerts", NOW + 601) is None
    # A pending silence mutes from its start.
    started = silencing(found, "andy-corp", "platform", "ci-alerts", NOW + 601)
    assert started is not None and started.id == 3


@given(st.text(min_size=1, max_size=30), st.text(max_size=30))
def test_a_literal_glob_matches_its_name_alone(name: str, other: str) -> None:
    glob = literal(name)
    assert fnmatchcase(name, glob)
    assert fnmatchcase(other, glob) == (other == name)


def test_a_request_becomes_a_silence_starting_now() -> None:
    asked = SilenceRequest.model_validate(
        {
            "trigger": "platform-*",
            "destination": "ci-alerts",
            "for": "2h",
            "comment": " flaky ",
            "author": "ana",
        }
    )
    new = asked.at(NOW)
    assert (new.factory, new.trigger, new.destination) == ("*", "platform-*", "ci-alerts")
    assert (new.starts_at, new.ends_at) == (NOW, NOW + 7200)
    assert (new.comment, new.author) == ("flaky", "ana")
    blank = SilenceRequest.model_validate(
        {"destination": " ", "for": 60, "comment": "x", "author": "ana"}
    )
    assert blank.destination is None


@pytest.mark.parametrize(
    "changes",
    [
        {"for": "0s"},
        {"for": "soon"},
        {"for": f"{LONGEST + 1}"},
        {"comment": ""},
        {"comment": "   "},
        {"comment": "two\nlines"},
        {"comment": "x" * 501},
        {"author": ""},
        {"factory": ""},
        {"trigger": "a\tb"},
        {"unknown": "key"},
    ],
)
def test_a_request_that_cannot_be_a_silence_is_refused(changes: dict[str, object]) -> None:
    asked: dict[str, object] = {"for": "2h", "comment": "flaky", "author": "ana"}
    with pytest.raises(ValidationError):
        SilenceRequest.model_validate({**asked, **changes})


def test_an_incident_is_acknowledged_by_whoever_did_first_on_any_of_its_roots() -> None:
    def ack(anchor: int, user: str, at: float) -> Acknowledgement:
        return Acknowledgement(
            destination="ci-alerts",
            factory="andy-corp",
            trigger="platform",
            anchor=anchor,
            user_id=user,
            user_name="",
            at=at,
        )

    acks = [ack(43, "U2", NOW + 5), ack(41, "U1", NOW), ack(50, "U3", NOW - 5)]
    assert acknowledged_by(acks, (41, 42, 43)) == "U1"
    assert acknowledged_by(acks, (43, 44)) == "U2"  # a root anchored at #43, merged
    assert acknowledged_by(acks, (44, 45)) == ""


def test_what_a_message_says_of_a_silence() -> None:
    shown = silence(ends=NOW).shown()
    assert shown["until"] == "2027-01-15T08:00:00+00:00"
    assert (shown["author"], shown["comment"]) == ("ana", "known breakage")


# --- what a root shows of them (bridge.incidents.plan) ----------------------------------


def ack(anchor: int, user: str = "U1") -> Acknowledgement:
    return Acknowledgement(
        destination="ci-alerts",
        factory="andy-corp",
        trigger="platform",
        anchor=anchor,
        user_id=user,
        user_name="",
        at=NOW,
    )


def held_root(builds: dict[int, Seen]) -> Record:
    """The record of the root that shows these builds' incident as it is now."""
    (action,) = plan(builds, [], frozenset({"first_failure"}))
    assert isinstance(action, Post)
    return Record("root", 41, 41, "C1/1.0", digest(action.content))


FAILING = {41: Seen("FAILED", 1), 42: Seen("FAILED", 2)}


def test_an_acknowledgement_edits_the_root_once_to_say_who() -> None:
    root = held_root(FAILING)
    wanted = frozenset({"first_failure"})
    (edit,) = plan(FAILING, [root], wanted, acks=[ack(41)])
    assert isinstance(edit, Edit) and isinstance(edit.content, RootView)
    assert edit.content.acknowledged_by == "U1"
    done = Record("root", 41, 41, "C1/1.0", digest(edit.content))
    assert plan(FAILING, [done], wanted, acks=[ack(41)]) == []
    assert plan(FAILING, [root], wanted, acks=[ack(50)]) == []  # another incident's


def test_a_silence_is_shown_on_a_failing_root_while_it_mutes() -> None:
    root = held_root(FAILING)
    wanted = frozenset({"first_failure"})
    muted = silence("andy-corp", "platform")
    (edit,) = plan(FAILING, [root], wanted, muted=muted)
    assert isinstance(edit.content, RootView) and edit.content.muted == muted
    shown = Record("root", 41, 41, "C1/1.0", digest(edit.content))
    (back,) = plan(FAILING, [shown], wanted)  # it ended: the root says so no more
    assert isinstance(back.content, RootView) and back.content.muted is None
    fixed = {**FAILING, 43: Seen("PASSED", 3)}
    fixing = plan(fixed, [root], frozenset({"first_failure", "fixed"}), muted=muted)
    roots = [a.content for a in fixing if isinstance(a.content, RootView)]
    assert len(roots) == 1 and roots[0].muted is None


def test_roots_recorded_before_acknowledgements_existed_are_not_edited() -> None:
    view = RootView(Incident((41, 42)), 1, 2)
    before = json.dumps(
        [
            "RootView",
            {
                "incident": {"failed": [41, 42], "fixed_by": None},
                "first_event": 1,
                "latest_event": 2,
                "reposted": False,
            },
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    assert digest(view) == "R" + hashlib.sha256(before.encode()).hexdigest()[:23]
