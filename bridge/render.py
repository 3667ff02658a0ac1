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
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.chats.base import Body
from bridge.jobserv import Build

REASON_LIMIT = 150


class TemplateError(ValueError):
    """A template that does not compile, or does not render to a valid message."""


def _json_value(value: Any) -> str:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here, naming the variable
    return _to_json(value)


def _to_json(value: Any) -> str:
    text: str = json.dumps(value, ensure_ascii=False, default=str)
    return text


def mrkdwn(text: Any) -> str:
    """Escape the characters Slack's mrkdwn treats as control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_link(url: Any, text: Any) -> str:
    return f"<{url}|{mrkdwn(text).replace('|', '¦')}>"


def shorten(value: Any, limit: int = REASON_LIMIT) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def first_line(text: Any) -> str:
    for line in str(text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


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
        first_line=first_line,
        duration=duration_text,
        tojson=_to_json,
    )
    env.globals.update(slack_link=slack_link)
    return env


_ENVIRONMENTS = {kind: _environment(kind) for kind in ("json", "text")}


@dataclass(frozen=True)
class Template:
    name: str
    kind: Literal["json", "text"]
    compiled: jinja2.Template

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


def compile_template(source: str, name: str, kind: Literal["json", "text"]) -> Template:
    env = _ENVIRONMENTS[kind]
    try:
        code = env.compile(source, name=name, filename=name)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{name}, line {exc.lineno}: {exc.message}") from None
    return Template(name, kind, env.template_class.from_code(env, code, env.make_globals(None)))


def load_template(path: Path, kind: Literal["json", "text"]) -> Template:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read: {exc}") from None
    return compile_template(source, str(path), kind)


@functools.cache
def default_template(file_name: str, kind: Literal["json", "text"]) -> Template:
    """A template shipped in the package, found wherever the package is installed."""
    source = resources.files("bridge").joinpath("templates", file_name)
    return compile_template(source.read_text(encoding="utf-8"), file_name, kind)


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def context(build: Build, *, event_id: int, destination: str) -> dict[str, Any]:
    """Everything a template can use; documented in the README."""
    runs = []
    for run in build.runs:
        data = run.model_dump(mode="json")
        seconds = _seconds_between(run.created, run.completed)
        data.update(
            link=run.web_url or run.log_url or run.url,
            duration=seconds,
            duration_text=duration_text(seconds),
        )
        runs.append(data)
    failed = [r for r in runs if r["status"] == "FAILED"]
    passed = [r for r in runs if r["status"] == "PASSED"]
    other = [r for r in runs if r["status"] not in ("FAILED", "PASSED")]
    seconds = _seconds_between(build.created, build.completed)
    reason_full = build.reason or ""
    return {
        "build": build.model_dump(mode="json"),
        "event_id": event_id,
        "destination": destination,
        "factory": build.factory,
        "project": build.project,
        "trigger": build.trigger_name or "",
        "build_id": build.build_id,
        "status": build.status,
        "failed": build.status == "FAILED",
        "passed": build.status == "PASSED",
        "runs": runs,
        "failed_runs": failed,
        "passed_runs": passed,
        "other_runs": other,
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
            "build": build.web_url or build.url,
            "api": build.url,
            "runs": build.runs_url or build.url.rstrip("/") + "/runs/",
        },
        "reason": shorten(first_line(reason_full)),
        "reason_full": reason_full,
    }
