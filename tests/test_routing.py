"""Routing: which destinations a build reaches, in which order, and why."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from bridge import routing
from bridge.config import Route
from bridge.jobserv import Build, parse_build
from bridge.routing import RouteMatch
from bridge.transitions import History, transition
from tests.conftest import FAILED, PASSED, fixture_body


# These tests are about globs and outcomes: each build is the first of its trigger seen.
def destinations_for(routes: list[Route], build: Build) -> list[str]:
    return routing.destinations_for(
        routes, build, transition(build.build_id, build.status, History())
    )


def explain(routes: list[Route], build: Build) -> list[RouteMatch]:
    return routing.explain(routes, build, transition(build.build_id, build.status, History()))


Notify = list[Literal["failed", "passed"]]


def build(name: str = FAILED, **changes: Any) -> Build:
    data = json.loads(fixture_body(name))
    data.update(changes)
    return parse_build(json.dumps(data).encode())


def route(
    *destinations: str,
    factories: list[str] | None = None,
    triggers: list[str] | None = None,
    notify: Notify | None = None,
) -> Route:
    fields: dict[str, Any] = {"destinations": list(destinations)}
    if factories is not None:
        fields["factories"] = factories
    if triggers is not None:
        fields["triggers"] = triggers
    if notify is not None:
        fields["notify"] = notify
    return Route(**fields)


def factory_build(factory: str) -> Build:
    return build(url=f"https://api.foundries.io/projects/{factory}/lmp/builds/68/")


# -- factories and triggers ------------------------------------------------------------------


def test_absent_factories_and_triggers_match_any_build() -> None:
    routes = [route("alerts")]

    assert destinations_for(routes, build()) == ["alerts"]
    assert destinations_for(routes, factory_build("zeta")) == ["alerts"]
    assert destinations_for(routes, build(trigger_name="platform-main")) == ["alerts"]
    assert destinations_for(routes, build(trigger_name=None)) == ["alerts"]


@pytest.mark.parametrize(
    ("patterns", "factory", "matches"),
    [
        (["andy-corp"], "andy-corp", True),
        (["andy-corp"], "andy-corp2", False),
        (["andy"], "andy-corp", False),
        (["andy-*"], "andy-corp", True),
        (["*-corp"], "andy-corp", True),
        (["andy-c?rp"], "andy-corp", True),
        (["[ab]ndy-corp"], "andy-corp", True),
        (["bob-*"], "andy-corp", False),
        (["bob-*", "andy-*"], "andy-corp", True),
        (["*"], "lmp", True),
    ],
)
def test_factory_globs(patterns: list[str], factory: str, matches: bool) -> None:
    routes = [route("alerts", factories=patterns)]

    assert destinations_for(routes, factory_build(factory)) == (["alerts"] if matches else [])


def test_public_lmp_factory_is_matched_by_name() -> None:
    lmp = build(url="https://api.foundries.io/projects/lmp/builds/2225/")

    assert destinations_for([route("lmp", factories=["lmp"])], lmp) == ["lmp"]
    assert destinations_for([route("lmp", factories=["andy-corp"])], lmp) == []


@pytest.mark.parametrize(
    ("patterns", "trigger", "matches"),
    [
        (["containers-devel"], "containers-devel", True),
        (["containers-*"], "containers-devel", True),
        (["containers-*"], "containers-feature-x", True),
        (["platform-*"], "containers-devel", False),
        (["containers"], "containers-devel", False),
        (["*-devel"], "platform-devel", True),
        (["platform-*", "containers-*"], "containers-devel", True),
        (["containers-*"], None, False),
    ],
)
def test_trigger_globs(patterns: list[str], trigger: str | None, matches: bool) -> None:
    routes = [route("alerts", triggers=patterns)]

    assert destinations_for(routes, build(trigger_name=trigger)) == (["alerts"] if matches else [])


def test_factories_and_triggers_must_both_match() -> None:
    routes = [route("alerts", factories=["andy-*"], triggers=["platform-*"])]

    assert destinations_for(routes, build(trigger_name="platform-main")) == ["alerts"]
    assert destinations_for(routes, build(trigger_name="containers-main")) == []
    assert (
        destinations_for(
            routes,
            build(
                trigger_name="platform-main",
                url="https://api.foundries.io/projects/zeta/lmp/builds/68/",
            ),
        )
        == []
    )


# -- notify ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("notify", "on_failed", "on_passed"),
    [
        (None, True, False),
        (["failed"], True, False),
        (["passed"], False, True),
        (["failed", "passed"], True, True),
    ],
    ids=["default", "failed", "passed", "both"],
)
def test_notify(notify: Notify | None, on_failed: bool, on_passed: bool) -> None:
    routes = [route("alerts", notify=notify)]

    assert destinations_for(routes, build(FAILED)) == (["alerts"] if on_failed else [])
    assert destinations_for(routes, build(PASSED)) == (["alerts"] if on_passed else [])


@pytest.mark.parametrize("status", ["RUNNING", "CANCELLING", "SOMETHING_NEW"])
def test_other_build_statuses_are_not_announced(status: str) -> None:
    routes = [route("alerts", notify=["failed", "passed"])]

    assert destinations_for(routes, build(status=status)) == []


# -- several routes ------------------------------------------------------------------------------


def test_every_matching_route_contributes() -> None:
    routes = [
        route("by-factory", factories=["andy-corp"]),
        route("by-trigger", triggers=["containers-*"]),
        route("elsewhere", factories=["zeta"]),
        route("passes", notify=["passed"]),
        route("everything", notify=["failed", "passed"]),
    ]

    assert destinations_for(routes, build(FAILED)) == ["by-factory", "by-trigger", "everything"]
    assert destinations_for(routes, build(PASSED)) == ["passes", "everything"]


def test_a_destination_named_by_several_routes_gets_one_message() -> None:
    routes = [
        route("alerts", "audit"),
        route("audit", "alerts", triggers=["containers-*"]),
        route("alerts", factories=["andy-*"]),
    ]

    assert destinations_for(routes, build()) == ["alerts", "audit"]


def test_destinations_keep_the_order_of_routes_and_of_their_lists() -> None:
    routes = [
        route("c", "a"),
        route("never", factories=["zeta"]),
        route("b", "a", "d"),
        route("e", "c"),
    ]

    assert destinations_for(routes, build()) == ["c", "a", "b", "d", "e"]


def test_no_routes_no_destinations() -> None:
    assert destinations_for([], build()) == []
    assert explain([], build()) == []


# -- explain -----------------------------------------------------------------------------------


def test_explain_says_why_for_every_route() -> None:
    routes = [
        route("zeta-alerts", factories=["zeta", "omega-*"]),
        route("platform", triggers=["platform-*"]),
        route("green", notify=["passed"]),
        route("alerts", "audit", factories=["andy-*"], triggers=["containers-*"]),
    ]

    matches = explain(routes, build(FAILED))

    assert [(m.index, m.matched) for m in matches] == [
        (0, False),
        (1, False),
        (2, False),
        (3, True),
    ]
    factory, trigger, status, matched = (m.why for m in matches)
    assert "factory 'andy-corp'" in factory
    assert "zeta" in factory
    assert "omega-*" in factory
    assert "trigger 'containers-devel'" in trigger
    assert "platform-*" in trigger
    assert "FAILED" in status
    assert "passed" in status
    assert "alerts" in matched
    assert "audit" in matched


def test_explain_reports_the_first_reason_a_route_does_not_match() -> None:
    routes = [route("x", factories=["zeta"], triggers=["platform-*"], notify=["passed"])]

    [match] = explain(routes, build(FAILED))

    assert not match.matched
    assert "factory" in match.why
    assert "trigger" not in match.why


def test_explain_agrees_with_destinations_for() -> None:
    routes = [
        route("a", factories=["andy-*"]),
        route("b", triggers=["platform-*"]),
        route("c", notify=["failed", "passed"]),
    ]
    failed = build(FAILED)

    chosen = [d for m in explain(routes, failed) if m.matched for d in routes[m.index].destinations]

    assert chosen == destinations_for(routes, failed) == ["a", "c"]
