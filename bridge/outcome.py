"""A chat's answer, classified once for every chat: sent, retry later, or failed for good."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bridge.logs import one_line

# A chat that asks for a longer pause than this is retried after this long anyway.
MAX_RETRY_AFTER = 3600.0
# When a 429 carries no Retry-After, wait this long.
DEFAULT_RETRY_AFTER = 30.0


@dataclass(frozen=True)
class Sent:
    # The chat's reference to the posted message (Slack: "channel/ts"), for threads.
    ref: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Retry:
    reason: str
    after: float | None = None  # seconds the chat asked us to wait; None: use backoff
    # A short, bounded label for metrics (http_503, timeout, ...); not part of equality.
    code: str = field(default="retry", compare=False)


@dataclass(frozen=True)
class Failed:
    reason: str
    code: str = field(default="failed", compare=False)


Outcome = Sent | Retry | Failed


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: seconds, fractional seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return bounded_seconds(seconds)


def bounded_seconds(seconds: float | None) -> float | None:
    """A pause a chat asked for, kept within 0 and MAX_RETRY_AFTER; None for none or NaN."""
    if seconds is None or seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# A reason is kept (outbox, logs, status page) cut to this many characters: after it is
# redacted, so that no cut leaves part of a secret behind (recorder.Recorder.record).
REASON_LIMIT = 200
# What is read of a chat's error answer at most, on one line, before redaction; a secret
# cut here is still redacted by its first characters (see bridge.redact).
MAX_ANSWER_TEXT = 64 * 1024


def short_reason(text: str, limit: int = REASON_LIMIT) -> str:
    """A reason as kept: one line, its control characters escaped (PostgreSQL cannot store
    NUL in text), at most `limit` characters. Cut only text already redacted."""
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(text: str) -> str:
    """A chat's answer on one line without control characters, bounded; its cut to
    REASON_LIMIT comes after redaction."""
    line = one_line(" ".join(text[:MAX_ANSWER_TEXT].split()))
    return line + "…" if len(text) > MAX_ANSWER_TEXT else line


def from_http(
    status: int,
    headers: Mapping[str, str],
    body: str,
    *,
    retry_after: float | None = None,
    error: str | None = None,
) -> Outcome:
    """Classify a plain HTTP answer (chat webhooks).

    A chat passes its own signals here rather than deciding itself: `retry_after`,
    the seconds its answer asks for in its own way (Discord's `retry_after` body
    field, Matrix's `retry_after_ms`), preferred to a Retry-After header; `error`,
    an error reported in a 2xx answer (Rocket.Chat's `"success": false`).
    """
    if 200 <= status < 300:
        if error is None:
            return Sent()
        return Failed(f"HTTP {status}: {_short(error)}", code="chat_error")
    detail = f"HTTP {status}" + (f": {_short(body)}" if body.strip() else "")
    asked = bounded_seconds(retry_after)
    if asked is None:
        asked = parse_retry_after(headers.get("Retry-After"))
    if status == 429:
        return Retry(detail, DEFAULT_RETRY_AFTER if asked is None else asked, code="http_429")
    if status >= 500 or status == 408:
        return Retry(detail, asked, code=f"http_{status}")
    return Failed(detail, code=f"http_{status}")


# The Slack errors a metric names (a label takes few values); any other is `slack_other`,
# and the reason still names it.
SLACK_ERRORS = frozenset(
    (
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "no_permission",
        "ratelimited",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_blocks",
        "invalid_attachments",
        "message_not_found",
        "thread_not_found",
        "restricted_action",
        "invalid_arguments",
    )
)


def slack_code(error: str) -> str:
    """A metric's label for a Slack error: one of a known few, never a chat-chosen string."""
    return f"slack_{error}" if error in SLACK_ERRORS else "slack_other"


def from_slack_api(status: int, headers: Mapping[str, str], data: Any) -> Outcome:
    """Classify a Slack Web API answer: HTTP 200 with `ok: false` is an error too.

    A 2xx without the API's JSON (`data` None or without `ok`) came from something on
    the way, such as a proxy's HTML error page: the API itself may well answer next time.
    """
    error = data.get("error") if isinstance(data, dict) else None
    if status == 200 and isinstance(data, dict) and data.get("ok"):
        return Sent()
    if 200 <= status < 300 and not (isinstance(data, dict) and "ok" in data):
        after = parse_retry_after(headers.get("Retry-After"))
        return Retry(f"slack: HTTP {status} without the Web API's JSON", after, code="not_api")
    if status == 429 or error == "ratelimited":
        after = parse_retry_after(headers.get("Retry-After"))
        reason = f"slack: {error or 'ratelimited'}"
        return Retry(reason, DEFAULT_RETRY_AFTER if after is None else after, code="ratelimited")
    if status >= 500 or error in {"internal_error", "fatal_error", "service_unavailable"}:
        reason = f"slack: HTTP {status}" + (f" {error}" if error else "")
        return Retry(reason, parse_retry_after(headers.get("Retry-After")), code=f"http_{status}")
    if error:
        return Failed(f"slack: {error}", code=slack_code(str(error)))
    return Failed(f"slack: HTTP {status}", code=f"http_{status}")


def from_exception(exc: BaseException) -> Outcome:
    """Classify an exception raised while sending: the network is worth another try."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Retry("timed out", code="timeout")
    if isinstance(exc, aiohttp.ClientResponseError):
        return from_http(exc.status, exc.headers or {}, exc.message)
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return Retry(f"connection error: {type(exc).__name__}", code="connection")
    return Failed(f"unexpected error: {type(exc).__name__}", code="unexpected")
