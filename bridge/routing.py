"""Which destinations an event reaches, who is mentioned there, and why."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import NamedTuple

from bridge.config import Route
from bridge.jobserv import Build
from bridge.transitions import Policy, Transition


@dataclass(frozen=True)
class RouteMatch:
    index: int
    matched: bool
    why: str


class Target(NamedTuple):
    """A destination chosen, and who is mentioned there (a store's (destination, mentions))."""

    destination: str
    mentions: tuple[str, ...] = ()


def _any_glob(patterns: list[str] | None, value: str) -> bool:
    return patterns is None or any(fnmatchcase(value, p) for p in patterns)


def explain(routes: list[Route], build: Build, transition: Transition) -> list[RouteMatch]:
    """For each route, whether the build matches it and why (or why not)."""
    trigger = build.trigger_name or ""
    results = []
    for index, route in enumerate(routes):
        if not _any_glob(route.factories, build.factory):
            why = f"factory {build.factory!r} matches none of {route.factories}"
        elif not _any_glob(route.triggers, trigger):
            why = f"trigger {trigger!r} matches none of {route.triggers}"
        elif not transition.policies.intersection(route.notify):
            what = transition.kind.replace("_", " ")
            why = f"{build.status} ({what}) is not in notify {route.notify}"
        else:
            results.append(RouteMatch(index, True, f"matched: sends to {route.destinations}"))
            continue
        results.append(RouteMatch(index, False, why))
    return results


def _mentions(route: Route, build: Build, transition: Transition) -> list[str]:
    """Who to tell of a failure that is news: the newest build of its trigger on arrival."""
    if build.status.upper() != "FAILED" or transition.later is not None:
        return []
    found = list(route.mention)
    failed = [run.name for run in build.runs if run.status == "FAILED"]
    for owner in route.owners:
        if any(fnmatchcase(name, owner.runs) for name in failed):
            found += owner.mention
    return found


def targets(
    routes: list[Route],
    build: Build,
    transition: Transition,
    threaded: Collection[str] = (),
) -> list[Target]:
    """Every matching route contributes; each destination appears once, in route order,
    with the mentions of every route that chose it.

    A `threaded` destination (one that keeps incidents in threads) gets every failed or
    passed build of the triggers its routes follow: a late build can change what the
    builds around it mean, and its lane decides what the chat shows.
    """
    chosen: dict[str, dict[str, None]] = {}
    for match in explain(routes, build, transition):
        route = routes[match.index]
        if match.matched:
            for name in route.destinations:
                found = _mentions(route, build, transition)
                chosen.setdefault(name, {}).update(dict.fromkeys(found))
        elif threaded and build.status.upper() in ("FAILED", "PASSED") and _follows(route, build):
            for name in route.destinations:
                if name in threaded:
                    chosen.setdefault(name, {})
    return [Target(name, tuple(mentions)) for name, mentions in chosen.items()]


def _follows(route: Route, build: Build) -> bool:
    return _any_glob(route.factories, build.factory) and _any_glob(
        route.triggers, build.trigger_name or ""
    )


def notify_for(routes: list[Route], destination: str, factory: str, trigger: str) -> set[Policy]:
    """The `notify` policies of every route that sends (factory, trigger) to `destination`."""
    return {
        policy
        for route in routes
        if destination in route.destinations
        and _any_glob(route.factories, factory)
        and _any_glob(route.triggers, trigger)
        for policy in route.notify
    }


def destinations_for(routes: list[Route], build: Build, transition: Transition) -> list[str]:
    return [target.destination for target in targets(routes, build, transition)]
