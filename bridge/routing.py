"""Which destinations an event reaches, who is mentioned there, and why."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from bridge.config import Route
from bridge.jobserv import Build
from bridge.policy import Transition


@dataclass(frozen=True)
class RouteMatch:
    index: int
    matched: bool
    why: str


@dataclass(frozen=True)
class Target:
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


def _mentions(route: Route, build: Build) -> list[str]:
    if build.status.upper() != "FAILED":
        return []
    found = list(route.mention)
    failed = [run.name for run in build.runs if run.status == "FAILED"]
    for owner in route.owners:
        if any(fnmatchcase(name, owner.runs) for name in failed):
            found += owner.mention
    return found


def targets(routes: list[Route], build: Build, transition: Transition) -> list[Target]:
    """Every matching route contributes; each destination appears once, in route order,
    with the mentions of every route that chose it."""
    chosen: dict[str, dict[str, None]] = {}
    for match in explain(routes, build, transition):
        if match.matched:
            route = routes[match.index]
            for name in route.destinations:
                chosen.setdefault(name, {}).update(dict.fromkeys(_mentions(route, build)))
    return [Target(name, tuple(mentions)) for name, mentions in chosen.items()]


def destinations_for(routes: list[Route], build: Build, transition: Transition) -> list[str]:
    return [target.destination for target in targets(routes, build, transition)]
