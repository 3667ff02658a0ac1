"""A chat's answer, classified once for every chat: sent, retry later, or failed for good."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

# A chat that asks for a longer pause than this is retried after this long anyway.
MAX_RETRY_AFTER = 3600.0
# When a 429 carries no Retry-After, wait this long.
DEFAULT_RETRY_AFTER = 30.0


@dataclass(frozen=True)
class Sent:
    pass


@dataclass(frozen=True)
class Retry:
    reason: str
    after: float | None = None  # seconds the chat asked us to wait; None: use backoff


@dataclass(frozen=True)
class Failed:
    reason: str


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
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def from_http(status: int, headers: Mapping[str, str], body: str) -> Outcome:
    """Classify a plain HTTP answer (chat webhooks)."""
    if 200 <= status < 300:
        return Sent()
    detail = f"HTTP {status}" + (f": {_short(body)}" if body.strip() else "")
    if status == 429:
        after = parse_retry_after(headers.get("Retry-After"))
        return Retry(detail, DEFAULT_RETRY_AFTER if after is None else after)
    if status >= 500 or status == 408:
        return Retry(detail, parse_retry_after(headers.get("Retry-After")))
    return Failed(detail)


def from_slack_api(status: int, headers: Mapping[str, str], data: Any) -> Outcome:
    """Classify a Slack Web API answer: HTTP 200 with `ok: false` is an error too."""
    error = data.get("error") if isinstance(data, dict) else None
    if status == 200 and isinstance(data, dict) and data.get("ok"):
        return Sent()
    if status == 429 or error == "ratelimited":
        after = parse_retry_after(headers.get("Retry-After"))
        reason = f"slack: {error or 'ratelimited'}"
        return Retry(reason, DEFAULT_RETRY_AFTER if after is None else after)
    if status >= 500 or error in {"internal_error", "fatal_error", "service_unavailable"}:
        return Retry(f"slack: HTTP {status}" + (f" {error}" if error else ""))
    return Failed(f"slack: {error}" if error else f"slack: HTTP {status}")


def from_exception(exc: BaseException) -> Outcome:
    """Classify an exception raised while sending: the network is worth another try."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Retry("timed out")
    if isinstance(exc, aiohttp.ClientResponseError):
        return from_http(exc.status, exc.headers or {}, exc.message)
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return Retry(f"connection error: {type(exc).__name__}")
    return Failed(f"unexpected error: {type(exc).__name__}")
