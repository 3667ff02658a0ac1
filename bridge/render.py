"""Templates: compiled once in a Jinja sandbox, rendered with a documented context.

A JSON template is data: every `{{ ... }}` in it writes a JSON value (a string is
quoted and escaped), so nothing a build carries can break the document.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from json.encoder import encode_basestring
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.chats import CHAT_TYPES
from bridge.chats.base import Body, DestinationSettings, Fits
from bridge.jobserv import Build, reason_headline
from bridge.markup import (
    clean,
    clean_data,
    html,
    html_link,
    markdown,
    markdown_link,
    quote_url,
    safe_url,
    unmention,
)
from bridge.template_filters import (
    first_line,
    fit_lines,
    human_time,
    mrkdwn,
    shorten,
    slack_date,
    slack_link,
)
from bridge.text import duration_text
from bridge.transitions import History, Transition, transition

if TYPE_CHECKING:
    from bridge.failed_tests import RunTests

# The build data whose line breaks are kept (the rest is one line each).
MULTILINE_FIELDS = frozenset({"reason", "reason_full"})
# A run's links, as JobServ sends them.
_RUN_URLS = ("url", "log_url", "web_url", "tests")


class TemplateError(ValueError):
    """A template that does not compile, or does not render to a valid message."""


def _json_value(value: Any) -> str:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here, naming the variable
    return _to_json(value)


# Made once: json.dumps with options builds an encoder per call, and a template calls
# this for every value it prints.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def _to_json(value: Any) -> str:
    # A template prints mostly text, numbers and nulls: the encoder is for the rest.
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _ENCODER.encode(value)


def _environment(kind: Literal["json", "text"]) -> jinja2.Environment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        finalize=_json_value if kind == "json" else None,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(
        mrkdwn=mrkdwn,
        shorten=shorten,
        fit_lines=fit_lines,
        first_line=first_line,
        duration=duration_text,
        tojson=_to_json,
        markdown=markdown,
        unmention=unmention,
        safe_url=safe_url,
        html=html,
        human_time=human_time,
    )
    env.globals.update(
        slack_link=slack_link,
        markdown_link=markdown_link,
        html_link=html_link,
        slack_date=slack_date,
    )
    return env


_ENVIRONMENTS = {kind: _environment(kind) for kind in ("json", "text")}


@dataclass(frozen=True)
class Rendered:
    body: Body
    hidden: int  # failed runs left out (over the destination's maximum, or to fit the chat)
    cut: bool = False  # whether the chat's size limits made us leave runs out
    # The body as the chat posts it, with the fields its `send` adds (`render_message` sets it).
    posted: Body | None = None


@dataclass(frozen=True)
class Template:
    name: str
    kind: Literal["json", "text"]
    compiled: jinja2.Template
    digests: bool = False  # it renders a digest (reads `digest`): bridge.digest
    # Whether it reads `destination`: if not, every destination of one chat type gets the
    # same message from it for one delivery, which the lanes then render once.
    per_destination: bool = True

    def render_within(
        self, context: dict[str, Any], fits: Fits | None, most: int | None = None
    ) -> Rendered:
        """Render with at most `most` failed runs, and as many as the chat's limits allow.

        Templates list `failed_runs` and say `more_failed` more exist; everything
        else (header, build link, reason) is always kept.
        """
        failed = context["failed_runs"]

        def showing(count: int) -> Body:
            return self.render(
                {**context, "failed_runs": failed[:count], "more_failed": len(failed) - count}
            )

        count = len(failed) if most is None else min(most, len(failed))
        body = showing(count)
        if fits is None or (problem := fits(body)) is None:
            return Rendered(body, len(failed) - count)
        best: tuple[int, Body] | None = None
        low, high = 0, count - 1
        while low <= high:  # the most runs that fit: fitting only gets easier with fewer
            middle = (low + high) // 2
            candidate = showing(middle)
            if fits(candidate) is None:
                best, low = (middle, candidate), middle + 1
            else:
                high = middle - 1
        if best is None:
            raise TemplateError(f"{self.name}: the message is over the chat's limits: {problem}")
        return Rendered(best[1], len(failed) - best[0], cut=True)

    def render(self, context: dict[str, Any]) -> Body:
        try:
            text = self.compiled.render(context)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.name}: {exc.message or type(exc).__name__}") from None
        except Exception as exc:  # a template can raise anything a filter raises
            raise TemplateError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        if self.kind == "text":
            return text
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateError(
                f"{self.name}: rendered invalid JSON at line {exc.lineno} column {exc.colno}: "
                f"{exc.msg}"
            ) from None
        if not isinstance(document, dict):
            raise TemplateError(f"{self.name}: rendered JSON is not an object")
        return document


def render_message(
    template: Template, settings: DestinationSettings, context: dict[str, Any]
) -> Rendered:
    """The one render path: what a lane sends, `render` prints and `check-config` checks.

    At most the destination's `max_failed_runs`, within its chat's size limits; `body` is
    what the chat's `send` takes, `posted` what it posts (with the fields it adds).
    """
    chat = CHAT_TYPES[settings.type]
    found = template.render_within(context, chat.fits, settings.max_failed_runs)
    return Rendered(found.body, found.hidden, found.cut, chat.prepare(settings, found.body))


# One object per template, however many destinations load it: the lanes share the
# messages of one template (bridge.parsed_events).
@functools.lru_cache(maxsize=64)
def compile_template(source: str, name: str, kind: Literal["json", "text"]) -> Template:
    env = _ENVIRONMENTS[kind]
    try:
        code = env.compile(source, name=name, filename=name)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{name}, line {exc.lineno}: {exc.message}") from None
    compiled = env.template_class.from_code(env, code, env.make_globals(None))
    reads = context_read(env, source)
    return Template(
        name, kind, compiled, digests="digest" in reads, per_destination="destination" in reads
    )


def context_read(environment: jinja2.Environment, source: str) -> set[str]:
    """The context's names a template's source (for `environment`, whose filters it may
    use) reads."""
    try:
        return meta.find_undeclared_variables(environment.parse(source))
    except jinja2.TemplateError:  # it does not compile: refused at load anyway
        return set()


def load_template(path: Path, kind: Literal["json", "text"]) -> Template:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read: {exc}") from None
    return compile_template(source, str(path), kind)


@functools.cache
def default_template(file_name: str, kind: Literal["json", "text"]) -> Template:
    """A template shipped in the package, found wherever the package is installed."""
    source = resources.files("bridge.templates").joinpath(file_name)
    return compile_template(source.read_text(encoding="utf-8"), file_name, kind)


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def build_context(
    build: Build, tests: dict[str, RunTests] | None = None, *, plain: bool = False
) -> dict[str, Any]:
    """The part of the context that comes from the build alone (and its failed tests).

    Plain data that templates cannot change (the sandbox is immutable), so one event's
    facts serve every destination it goes to. Every string in it is `clean`: no terminal
    escapes, control or bidi characters reach a chat or a user's template. `plain`: the
    build was parsed from a `plain_json` body, so none of its strings holds one.
    """
    runs = []
    for run in build.runs:
        data = run.model_dump(mode="json")
        seconds = _seconds_between(run.created, run.completed)
        found = (tests or {}).get(run.name)
        for key in _RUN_URLS:
            if data.get(key):
                data[key] = quote_url(data[key])
        data.update(
            link=data["web_url"] or data["log_url"] or data["url"],
            duration=seconds,
            duration_text=duration_text(seconds),
            failed_tests=[test.as_context() for test in found.failed] if found else [],
            more_failed_tests=found.more if found else 0,
            tests_unavailable=found.unavailable if found else False,
        )
        runs.append(data)
    # What is made here from plain strings is plain; tests come from elsewhere.
    plain = plain and not tests
    # Cleaned once: each run is in `runs` and in one of the lists below.
    if not plain:
        runs = clean_data(runs, MULTILINE_FIELDS)
    failed = [r for r in runs if r["status"] == "FAILED"]
    passed = [r for r in runs if r["status"] == "PASSED"]
    other = [r for r in runs if r["status"] not in ("FAILED", "PASSED")]
    seconds = _seconds_between(build.created, build.completed)
    reason_full = clean(build.reason or "", multiline=True)
    facts: dict[str, Any] = {
        "build": build.model_dump(mode="json"),
        "factory": build.factory,
        "project": build.project,
        "trigger": build.trigger_name or "",
        "build_id": build.build_id,
        "status": build.status,
        "failed": build.status == "FAILED",
        "passed": build.status == "PASSED",
        "more_failed": 0,
        "counts": {
            "runs": len(runs),
            "failed": len(failed),
            "passed": len(passed),
            "other": len(other),
        },
        "duration": seconds,
        "duration_text": duration_text(seconds),
        "created": build.created.isoformat() if build.created else None,
        "completed": build.completed.isoformat() if build.completed else None,
        "links": {
            "build": quote_url(build.web_url or build.url),
            "api": quote_url(build.url),
            "runs": quote_url(build.runs_url or build.url.rstrip("/") + "/runs/"),
        },
        "reason": shorten(reason_headline(reason_full)),
        "reason_full": reason_full,
    }
    cleaned: dict[str, Any] = facts if plain else clean_data(facts, MULTILINE_FIELDS)
    cleaned.update(runs=runs, failed_runs=failed, passed_runs=passed, other_runs=other)
    return cleaned


def context(
    build: Build,
    *,
    event_id: int,
    destination: str,
    tests: dict[str, RunTests] | None = None,
    change: Transition | None = None,
    mentions: tuple[str, ...] = (),
    facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a template can use; documented in the README.

    `tests`: the failed tests of failed runs, by run name, when looked up.
    `change`: the build's transition in its history (default: the first build seen).
    `mentions`: who the routes mention in this message.
    `facts`: `build_context(build, tests)`, when already made.
    """
    if change is None:
        change = transition(build.build_id, build.status, History())
    return {
        **(facts if facts is not None else build_context(build, tests)),
        "event_id": event_id,
        "destination": destination,
        "transition": clean_data(change.as_dict()),
        # What the transition adds to the status, when it adds anything.
        "note": change.summary
        if change.kind in ("still_failing", "fixed")
        or (change.kind == "first_failure" and change.previous_status == "PASSED")
        or change.fixed_by is not None  # a late failure: a newer build passed already
        else "",
        "mentions": list(mentions),
    }
