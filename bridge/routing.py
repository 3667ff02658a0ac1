"""Which destinations an event reaches, and why."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from bridge.config import Route
from bridge.jobserv import Build

_OUTCOMES = {"FAILED": "failed", "PASSED": "passed"}


@dataclass(frozen=True)
class RouteMatch:
    index: int
    matched: bool
    why: str


def _any_glob(patterns: list[str] | None, value: str) -> bool:
    return patterns is None or any(fnmatchcase(value, p) for p in patterns)


def explain(routes: list[Route], build: Build) -> list[RouteMatch]:
    """For each route, whether the build matches it and why (or why not)."""
    outcome = _OUTCOMES.get(build.status.upper())
    trigger = build.trigger_name or ""
    results = []
    for index, route in enumerate(routes):
        if not _any_glob(route.factories, build.factory):
            why = f"factory {build.factory!r} matches none of {route.factories}"
        elif not _any_glob(route.triggers, trigger):
            why = f"trigger {trigger!r} matches none of {route.triggers}"
        elif outcome not in route.notify:
            why = f"status {build.status} is not in notify {route.notify}"
        else:
            results.append(RouteMatch(index, True, f"matched: sends to {route.destinations}"))
            continue
        results.append(RouteMatch(index, False, why))
    return results


def destinations_for(routes: list[Route], build: Build) -> list[str]:
    """Every matching route contributes; each destination appears once, in route order."""
    chosen: dict[str, None] = {}
    for match in explain(routes, build):
        if match.matched:
            chosen.update(dict.fromkeys(routes[match.index].destinations))
    return list(chosen)
