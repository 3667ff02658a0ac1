"""The filters and functions templates call to write text for a chat: escaping, links,
times, and text cut to fit."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from bridge.markup import html, safe_url, unmention

REASON_LIMIT = 150


def mrkdwn(text: Any) -> str:
    """Escape the characters Slack's mrkdwn treats as control characters, and keep an
    `@here` from being read as a mention."""
    return unmention(html(text))


def slack_link(url: Any, text: Any) -> str:
    """A Slack link; `<`, `>` and `|` would end it early, so they are escaped in both parts."""
    href = safe_url(url).replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{href}|{mrkdwn(text).replace('|', '¦')}>"


def shorten(value: Any, limit: int = REASON_LIMIT) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def first_line(text: Any) -> str:
    for line in str(text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def fit_lines(lines: Any, limit: int, more: int = 0, what: str = "", separator: str = "\n") -> str:
    """The first lines that fit in `limit` characters, then "…and N more <what>" for the rest.

    `more` counts items not in `lines` at all; the tail is kept within the limit too.
    """
    lines = [str(line) for line in lines]
    ends = list(itertools.accumulate((len(line) + len(separator) for line in lines), initial=0))
    for count in range(len(lines), -1, -1):
        left = len(lines) - count + more
        tail = f"…and {left} more{' ' + what if what else ''}" if left else ""
        size = ends[count] + len(tail) - (len(separator) if count and not tail else 0)
        if size <= limit:
            return separator.join(lines[:count] + ([tail] if tail else []))
    return ""


def _moment(value: Any) -> datetime | None:
    """A time from the context (ISO 8601 text or a datetime), in UTC; None if it is none."""
    moment: datetime
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def human_time(value: Any) -> str:
    """To the minute ("2026-11-28 23:23 UTC"), never raw ISO with microseconds."""
    moment = _moment(value)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else ""


def slack_date(value: Any) -> str:
    """Slack shows it in the reader's time zone ("Yesterday at 9:02 AM"); the fallback
    is `human_time`."""
    moment = _moment(value)
    if moment is None:
        return ""
    shown = "{date_short_pretty} at {time}"
    return f"<!date^{int(moment.timestamp())}^{shown}|{human_time(moment)}>"
