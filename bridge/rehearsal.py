"""check-config's rehearsal: every destination's template rendered against sample builds.

Each sample is rendered through the one render path (`render_message`), with undefined
variables as errors, and the result checked as the chat would take it: its size limits
and the least it must hold (`ChatType.check`). A template that would fail only when
sending fails here, named with its place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from importlib import resources
from typing import Any

from bridge.chats import CHAT_TYPES, DestinationSettings
from bridge.config import Config
from bridge.digest import digest_context, digest_entry, render_digest
from bridge.failed_tests import FailedTest, RunTests
from bridge.jobserv import Build, parse_build
from bridge.render import Template, TemplateError, build_context, context, render_message
from bridge.slack_interactions import IncidentRef, button_value
from bridge.threads import Draft
from bridge.transitions import History, above, history, transition

# A sample: what it is ("a failed build"), and its template context for a destination.
MakeContext = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class Sample:
    what: str
    make: MakeContext
    threads_only: bool = False  # only chats that thread render it (an incident's root)
    digest: bool = False  # a digest's context: only templates that read `digest` render it


@cache
def _failed() -> Build:
    return parse_build(
        resources.files("bridge").joinpath("samples", "failed-build.json").read_bytes()
    )


def _passed() -> Build:
    build = _failed()
    runs = [run.model_copy(update={"status": "PASSED"}) for run in build.runs]
    return build.model_copy(update={"status": "PASSED", "runs": runs})


def _tests(build: Build) -> dict[str, RunTests]:
    """A failed test for each failed run, so that templates' test lines render too."""
    test = FailedTest("unit-tests", f"{build.url}tests/unit-tests/", 2, ["test_boot"])
    return {r.name: RunTests([test], more=1) for r in build.runs if r.status == "FAILED"}


def _message(build: Build, before: History) -> MakeContext:
    change = transition(build.build_id, build.status, before)

    def make(destination: str) -> dict[str, Any]:
        return context(
            build,
            event_id=1,
            destination=destination,
            tests=_tests(build),
            change=change,
            mentions=("@oncall",) if build.status == "FAILED" else (),
        )

    return make


def _before(build: Build, *statuses: str) -> History:
    """The history of `build` when the builds before it ended as `statuses`, newest first."""
    return history((build.build_id - 1 - i, status) for i, status in enumerate(statuses))


def _incident_root(destination: str, acted: bool = False) -> dict[str, Any]:
    """A failing incident's root, with Slack's buttons; `acted`: acknowledged and muted."""
    build = _failed()
    first = build.model_copy(update={"build_id": build.build_id - 1})
    ref = IncidentRef(destination, build.factory, build.trigger_name or "", first.build_id)
    muted = {"until": "2021-07-28T09:03:20+00:00", "author": "ana", "comment": "swap", "id": 1}
    details = {
        "summary": "Failing since #67 (2 failed builds)",
        "failing": True,
        "fixed_by": None,
        "count": 2,
        "failed_builds": [first.build_id, build.build_id],
        "reposted": False,
        "first": build_context(first),
        "latest": build_context(build),
        "acknowledged_by": "U0SAMPLE" if acted else "",
        "muted": muted if acted else None,
        "buttons": button_value(ref),
    }
    draft = Draft(build, 1, str(details["summary"]), details, ("@oncall",))
    return draft.context(destination, build_context(build, _tests(build)))


def _late_failure() -> History:
    build = _failed()
    newer = build.build_id + 1
    return above(_before(build), newer, (newer, "PASSED"), 0)


def _digest(destination: str) -> dict[str, Any]:
    """Builds due at once: a still failing one, a first failure, a fixed one."""
    messages = (
        _message(_failed(), _before(_failed(), "FAILED", "FAILED")),
        _message(_failed(), _before(_failed(), "PASSED")),
        _message(_passed(), _before(_passed(), "FAILED")),
    )
    entries = [digest_entry(make(destination)) for make in messages]
    return digest_context(entries, destination=destination)


# Every template is rendered against each of these.
SAMPLES = (
    Sample("a failed build", _message(_failed(), _before(_failed()))),
    Sample("a first failure", _message(_failed(), _before(_failed(), "PASSED"))),
    Sample("a still failing build", _message(_failed(), _before(_failed(), "FAILED", "FAILED"))),
    Sample("a passed build", _message(_passed(), _before(_passed(), "PASSED"))),
    Sample("a first passed build", _message(_passed(), _before(_passed()))),
    Sample("a fixed build", _message(_passed(), _before(_passed(), "FAILED", "FAILED"))),
    Sample("a late failure fixed since", _message(_failed(), _late_failure())),
    Sample("an incident root", _incident_root, threads_only=True),
    Sample("an acknowledged, muted root", partial(_incident_root, acted=True), threads_only=True),
    Sample("a digest", _digest, digest=True),
)


def template_problem(
    template: Template, settings: DestinationSettings, sample: Sample
) -> str | None:
    """What is wrong with the message `template` renders for `sample`, or None."""
    chat = CHAT_TYPES[settings.type]
    try:
        if sample.digest:
            builds = sample.make(settings.name)["digest"]
            shown, rendered = render_digest(template, settings, builds, len(builds))
            if shown < 2:
                return "a digest of two builds is over the chat's limits"
        else:
            rendered = render_message(template, settings, sample.make(settings.name))
    except TemplateError as exc:
        return str(exc).removeprefix(f"{template.name}: ")
    if chat.check is not None and rendered.posted is not None:
        problem = chat.check(rendered.posted)
        if problem is not None:
            return f"not a {chat.name} message: {problem}"
    return None


def template_problems(config: Config) -> list[str]:
    """Every destination's template against every sample: each problem once, with its place
    and the first sample that shows it."""
    problems = []
    for index, (name, settings) in enumerate(config.destinations.items()):
        template = config.templates[name]
        threads = CHAT_TYPES[settings.type].threads
        seen: set[str] = set()
        for sample in SAMPLES:
            if (sample.threads_only and not threads) or (sample.digest and not template.digests):
                continue
            problem = template_problem(template, settings, sample)
            if problem is not None and problem not in seen:
                seen.add(problem)
                problems.append(
                    f"destinations[{index}].template: {template.name}: "
                    f"rendering {sample.what}: {problem}"
                )
    return problems
