"""What JobServ sends: the build model, its factory, its identity and its signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
)

from bridge.logs import one_line

SIGNATURE_HEADER = "X-JobServ-Sig"
_SIGNATURE = re.compile(r"sha256:\s*([0-9a-fA-F]{64})\s*")


# The most of a body an error about it quotes, and the most an error says.
QUOTE_LIMIT = 80
ERROR_LIMIT = 200


class NotABuild(ValueError):
    """A signed body that is not a JobServ build; the message is one bounded line."""

    def __init__(self, message: str) -> None:
        line = one_line(message)
        super().__init__(line if len(line) <= ERROR_LIMIT else line[: ERROR_LIMIT - 1] + "…")


def _quoted(text: str) -> str:
    return repr(text[:QUOTE_LIMIT] + ("…" if len(text) > QUOTE_LIMIT else ""))


def _in_utc(moment: datetime) -> datetime:
    """Naive means UTC: every time the bridge keeps is aware, so any two compare."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first UTC datetime
        raise ValueError("timestamp is out of range in UTC") from None


def _text_or_datetime(value: Any) -> Any:
    """A timestamp is text, never a number (a JSON number is not what JobServ sends)."""
    if isinstance(value, str | datetime):
        return value
    raise ValueError("Input should be an ISO 8601 timestamp")


# ISO 8601 text (JobServ writes +00:00); a time without an offset is taken as UTC.
# Not strict: a dict of Python values with text timestamps is a build too.
UtcDatetime = Annotated[
    datetime, Strict(False), BeforeValidator(_text_or_datetime), AfterValidator(_in_utc)
]

# JobServ's types are known: no coercion (`"123"` or `true` is not a build id). Unknown
# statuses are still plain strings, unknown keys are ignored, `annotation` is anything.
_JOBSERV_MODEL = ConfigDict(extra="ignore", frozen=True, strict=True)


class Run(BaseModel):
    model_config = _JOBSERV_MODEL

    name: str
    url: str
    status: str
    log_url: str
    web_url: str | None = None
    created: UtcDatetime | None = None
    completed: UtcDatetime | None = None
    host_tag: str | None = None
    tests: str | None = None


class StatusEvent(BaseModel):
    model_config = _JOBSERV_MODEL

    time: UtcDatetime
    status: str


class Build(BaseModel):
    model_config = _JOBSERV_MODEL

    # Stored as an SQLite INTEGER: a larger number is not a build, not a server error.
    build_id: int = Field(ge=-(2**63), lt=2**63)
    url: str
    status: str
    runs: list[Run]
    web_url: str | None = None
    name: str | None = None
    trigger_name: str | None = None
    created: UtcDatetime | None = None
    completed: UtcDatetime | None = None
    status_events: list[StatusEvent] = []
    runs_url: str | None = None
    reason: str | None = None
    annotation: Any = None

    @cached_property
    def project(self) -> str:
        """`<factory>/lmp`, or `lmp` for the public LmP project."""
        return _project_of(self.url) or _project_of(self.web_url or "") or ""

    @cached_property
    def factory(self) -> str:
        return self.project.split("/", 1)[0]

    @property
    def identity(self) -> str:
        """One event: a re-run may complete the same build again with another outcome."""
        completed = self.completed.isoformat() if self.completed else ""
        key = f"{self.url}\n{self.status}\n{completed}"
        return hashlib.sha256(key.encode()).hexdigest()


def _project_of(url: str) -> str | None:
    try:
        path = urlsplit(url).path
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    parts = [p for p in path.split("/") if p]
    if "projects" not in parts:
        return None
    rest = parts[parts.index("projects") + 1 :]
    if not rest:
        return None
    # /projects/<factory>/lmp/builds/N/ or /projects/lmp/builds/N/
    if len(rest) >= 2 and rest[1] != "builds":
        return f"{rest[0]}/{rest[1]}"
    return rest[0]


def parse_build(body: bytes) -> Build:
    try:
        build = Build.model_validate_json(body)
    except ValidationError as exc:
        raise NotABuild(_one_line(exc)) from None
    if not build.factory:
        raise NotABuild(f"cannot tell the factory from url {_quoted(build.url)}")
    return build


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    place = f"{where}: " if where else ""
    return f"not a JobServ build: {place}{first['msg']}{more}"


def sign(secret: str, body: bytes) -> str:
    """The X-JobServ-Sig value JobServ sends for this body."""
    return "sha256:" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_digest(header: str) -> bytes | None:
    """The digest in a header value, or None when it is not `sha256:<64 hex>`."""
    match = _SIGNATURE.fullmatch(header)
    return bytes.fromhex(match.group(1)) if match else None


def signed_by(digest: bytes, body: bytes, secrets: list[str]) -> int | None:
    """Index of the secret that signed `body`.

    Every secret is tried so that the time taken does not tell which one matched.
    """
    found = None
    for index, secret in enumerate(secrets):
        expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        if hmac.compare_digest(expected, digest) and found is None:
            found = index
    return found


def reason_headline(reason: str) -> str:
    """The line of a build's reason a person wants first.

    JobServ's git poller writes the build's parameters as indented JSON, then the git
    log (`{\n  "GIT_URL": ...\n}\nabc123 bump kernel`): its first line is a lone `{`.
    Skip such a leading JSON object for the first line after it, or its values when
    nothing follows.
    """
    text = reason.strip()
    if text.startswith("{"):
        try:
            params, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            params, end = None, 0
        if isinstance(params, dict):
            rest = _first_line(text[end:])
            if rest:
                return rest
            return ", ".join(f"{key}={value}" for key, value in list(params.items())[:3])
    return _first_line(text)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
