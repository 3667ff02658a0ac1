"""The one place that classifies a chat's answer: sent, retry (maybe after a pause), or failed."""

from __future__ import annotations

import email.utils
import time

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from bridge.outcome import (
    DEFAULT_RETRY_AFTER,
    MAX_ANSWER_TEXT,
    MAX_RETRY_AFTER,
    Failed,
    Retry,
    Sent,
    from_exception,
    from_http,
    from_slack_api,
    parse_retry_after,
    short_reason,
)


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


# --- plain HTTP answers (webhooks) ---------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_any_2xx_is_sent(status: int) -> None:
    assert from_http(status, {}, "") == Sent()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried_with_backoff(status: int) -> None:
    outcome = from_http(status, {}, "upstream trouble")
    assert isinstance(outcome, Retry)
    assert outcome.after is None  # no Retry-After: the lane's backoff decides
    assert f"HTTP {status}" in outcome.reason
    assert "upstream trouble" in outcome.reason


def test_5xx_with_retry_after_waits_as_asked() -> None:
    outcome = from_http(503, {"Retry-After": "7"}, "")
    assert isinstance(outcome, Retry)
    assert outcome.after == 7.0


def test_request_timeout_408_is_retried() -> None:
    assert isinstance(from_http(408, {}, ""), Retry)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, "invalid_payload"),
        (403, "invalid_token"),
        (404, "no_service"),
        (410, "channel_is_archived"),
        (413, "too large"),
    ],
)
def test_other_4xx_fail_for_good_with_the_answer_in_the_reason(status: int, body: str) -> None:
    outcome = from_http(status, {}, body)
    assert isinstance(outcome, Failed)
    assert f"HTTP {status}" in outcome.reason
    assert body in outcome.reason


def test_a_long_error_body_is_put_on_one_line_and_bounded() -> None:
    """Bounded, not yet cut to REASON_LIMIT: the lane cuts it after redacting it."""
    body = "<html>\n<body>\n" + "x" * 5000 + "\n</body></html>"
    outcome = from_http(404, {}, body)
    assert isinstance(outcome, Failed)
    assert "\n" not in outcome.reason
    assert outcome.reason.endswith("</body></html>")
    huge = from_http(500, {}, "y" * (10 * MAX_ANSWER_TEXT))
    assert isinstance(huge, Retry)
    assert len(huge.reason) < MAX_ANSWER_TEXT + 100
    assert huge.reason.endswith("…")


def test_an_error_body_keeps_no_control_characters() -> None:
    """A chat's answer reaches logs and dead letters: no terminal escapes, no NUL."""
    outcome = from_http(404, {}, "no\x00such\x1b[31mhook\x7f\x9b\u2028end")
    assert isinstance(outcome, Failed)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in outcome.reason)
    assert "\u2028" not in outcome.reason
    assert outcome.reason.startswith("HTTP 404: no") and outcome.reason.endswith("end")


@pytest.mark.parametrize("reason", ["nul\x00here", "ctl\x01\x1f\x7f", "two\nlines\tand tab"])
def test_a_kept_reason_is_one_line_without_control_characters(reason: str) -> None:
    """What the lane stores (PostgreSQL refuses NUL in text) from any reason, a chat's or not."""
    kept = short_reason(reason)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in kept)
    assert kept[:3] == reason[:3]


# --- 429 and Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [("2", 2.0), ("0.5", 0.5), ("1.25", 1.25), (" 30 ", 30.0), ("0", 0.0)],
)
def test_429_waits_for_retry_after_in_seconds(header: str, expected: float) -> None:
    outcome = from_http(429, {"Retry-After": header}, "rate limited")
    assert isinstance(outcome, Retry)
    assert outcome.after == pytest.approx(expected)


def test_429_retry_after_as_http_date() -> None:
    outcome = from_http(429, {"Retry-After": http_date(time.time() + 60)}, "")
    assert isinstance(outcome, Retry)
    assert outcome.after is not None
    assert 57.0 <= outcome.after <= 61.0


def test_retry_after_header_name_is_case_insensitive() -> None:
    outcome = from_http(429, CIMultiDict({"retry-after": "4"}), "")
    assert isinstance(outcome, Retry)
    assert outcome.after == 4.0


def test_429_without_retry_after_waits_the_default() -> None:
    outcome = from_http(429, {}, "")
    assert isinstance(outcome, Retry)
    assert outcome.after == DEFAULT_RETRY_AFTER


@pytest.mark.parametrize("header", ["soon", "", "nan", "Tue, 99 Foo 2024"])
def test_429_with_unreadable_retry_after_waits_the_default(header: str) -> None:
    outcome = from_http(429, {"Retry-After": header}, "")
    assert isinstance(outcome, Retry)
    assert outcome.after == DEFAULT_RETRY_AFTER


@pytest.mark.parametrize("header", [str(int(MAX_RETRY_AFTER) * 10), "inf", "1e12"])
def test_retry_after_is_capped(header: str) -> None:
    outcome = from_http(429, {"Retry-After": header}, "")
    assert isinstance(outcome, Retry)
    assert outcome.after == MAX_RETRY_AFTER


def test_retry_after_as_a_far_http_date_is_capped() -> None:
    far = http_date(time.time() + 30 * 86400)
    assert parse_retry_after(far) == MAX_RETRY_AFTER


def test_parse_retry_after_http_date_relative_to_now() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(http_date(now + 120), now=now) == pytest.approx(120.0)
    # A date already past means: try again now.
    assert parse_retry_after(http_date(now - 120), now=now) == 0.0


def test_parse_retry_after_absent_or_negative() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("   ") is None
    assert parse_retry_after("-5") == 0.0


# --- Slack Web API answers -----------------------------------------------------------------


def test_slack_api_ok_is_sent() -> None:
    assert from_slack_api(200, {}, {"ok": True, "channel": "C1", "ts": "1.2"}) == Sent()


@pytest.mark.parametrize(
    "error",
    [
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_blocks",
        "no_service",
    ],
)
def test_slack_api_ok_false_fails_for_good_naming_the_error(error: str) -> None:
    # Slack answers HTTP 200 with `ok: false`: the status alone would say "sent".
    outcome = from_slack_api(200, {}, {"ok": False, "error": error})
    assert outcome == Failed(f"slack: {error}")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("channel_not_found", "slack_channel_not_found"),
        ("token_revoked", "slack_token_revoked"),
        ("msg_too_long", "slack_msg_too_long"),
        ("no_service", "slack_other"),
        ("x" * 5000, "slack_other"),
        ('evil\nlabel{a="1"}', "slack_other"),
    ],
)
def test_slack_api_error_codes_for_metrics_are_a_fixed_few(error: str, code: str) -> None:
    """A metric's label takes no string a chat chose: an unknown error is `slack_other`."""
    outcome = from_slack_api(200, {}, {"ok": False, "error": error})
    assert isinstance(outcome, Failed)
    assert outcome.code == code


def test_slack_api_ratelimited_error_waits_for_retry_after() -> None:
    outcome = from_slack_api(200, {"Retry-After": "3"}, {"ok": False, "error": "ratelimited"})
    assert isinstance(outcome, Retry)
    assert outcome.after == 3.0
    assert "ratelimited" in outcome.reason


@pytest.mark.parametrize("header", ["12", "0.75"])
def test_slack_api_http_429_waits_for_retry_after(header: str) -> None:
    outcome = from_slack_api(429, {"Retry-After": header}, {"ok": False, "error": "ratelimited"})
    assert isinstance(outcome, Retry)
    assert outcome.after == float(header)


def test_slack_api_429_retry_after_as_http_date() -> None:
    outcome = from_slack_api(429, {"Retry-After": http_date(time.time() + 30)}, "")
    assert isinstance(outcome, Retry)
    assert outcome.after is not None
    assert 27.0 <= outcome.after <= 31.0


def test_slack_api_429_without_retry_after_waits_the_default() -> None:
    outcome = from_slack_api(429, {}, {"ok": False, "error": "ratelimited"})
    assert isinstance(outcome, Retry)
    assert outcome.after == DEFAULT_RETRY_AFTER


def test_slack_api_retry_after_is_capped() -> None:
    outcome = from_slack_api(429, {"Retry-After": "86400000"}, {"ok": False})
    assert isinstance(outcome, Retry)
    assert outcome.after == MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("status", "data"),
    [
        (500, {"ok": False, "error": "internal_error"}),
        (502, "<html>bad gateway</html>"),
        (503, {}),
        (200, {"ok": False, "error": "internal_error"}),
        (200, {"ok": False, "error": "fatal_error"}),
        (200, {"ok": False, "error": "service_unavailable"}),
    ],
)
def test_slack_api_server_trouble_is_retried(status: int, data: object) -> None:
    assert isinstance(from_slack_api(status, {}, data), Retry)


def test_slack_api_5xx_with_retry_after_waits_as_asked() -> None:
    outcome = from_slack_api(503, {"Retry-After": "9"}, {"ok": False})
    assert isinstance(outcome, Retry)
    assert outcome.after == 9.0


@pytest.mark.parametrize("status", [400, 403, 404])
def test_slack_api_other_4xx_fail_for_good(status: int) -> None:
    outcome = from_slack_api(status, {}, "not json")
    assert outcome == Failed(f"slack: HTTP {status}")


# --- exceptions while sending ----------------------------------------------------------------


def _response_error(
    status: int, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponseError:
    url = URL("http://127.0.0.1/hook")
    info = aiohttp.RequestInfo(url, "POST", CIMultiDict(), url)
    return aiohttp.ClientResponseError(
        info, (), status=status, message="answer", headers=CIMultiDict(headers or {})
    )


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        aiohttp.ServerTimeoutError("read timed out"),
    ],
)
def test_timeouts_are_retried(exc: BaseException) -> None:
    assert from_exception(exc) == Retry("timed out")


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientPayloadError("truncated"),
        ConnectionResetError(104, "Connection reset by peer"),
        ConnectionRefusedError(111, "Connection refused"),
        OSError(101, "Network is unreachable"),
    ],
)
def test_connection_errors_and_resets_are_retried(exc: BaseException) -> None:
    outcome = from_exception(exc)
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith("connection error")
    assert type(exc).__name__ in outcome.reason


def test_response_errors_are_classified_like_the_answer() -> None:
    assert isinstance(from_exception(_response_error(503)), Retry)
    limited = from_exception(_response_error(429, {"Retry-After": "5"}))
    assert isinstance(limited, Retry)
    assert limited.after == 5.0
    assert isinstance(from_exception(_response_error(404)), Failed)


def test_an_unexpected_error_fails_instead_of_retrying_forever() -> None:
    outcome = from_exception(ValueError("a bug"))
    assert isinstance(outcome, Failed)
    assert "ValueError" in outcome.reason
