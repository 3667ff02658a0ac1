"""The give-up rules, as a table: a chat's answer, the attempt and the age -> the decision."""

from __future__ import annotations

import pytest

from bridge.giveup import Dead, Decision, Limits, RetryAt, decide, given_up_unrecorded
from bridge.outcome import Failed, Outcome, Retry, Sent

NOW = 1_700_000_000.0
LIMITS = Limits(max_attempts=5, max_age=3600.0, retry_initial=2.0, retry_max=60.0)
NO_ATTEMPT_LIMIT = Limits(max_attempts=0, max_age=3600.0, retry_initial=2.0, retry_max=60.0)


def fixed_pause(attempt: int, initial: float, maximum: float) -> float:
    """The backoff's ceiling, without its jitter."""
    return min(maximum, initial * 2 ** (attempt - 1))


CASES: list[tuple[str, Outcome, int, float, Limits, Decision]] = [
    ("sent", Sent(), 1, 0.0, LIMITS, Sent()),
    ("sent, past every limit", Sent(), 9, 9999.0, LIMITS, Sent()),
    ("failed", Failed("HTTP 404", code="http_404"), 1, 0.0, LIMITS, Dead("HTTP 404", "http_404")),
    ("retry: backoff", Retry("HTTP 503", code="http_503"), 1, 5.0, LIMITS,
     RetryAt(NOW + 2.0, 2.0, "HTTP 503", "http_503")),
    ("retry: backoff grows", Retry("HTTP 503"), 3, 5.0, LIMITS,
     RetryAt(NOW + 8.0, 8.0, "HTTP 503", "retry")),
    ("retry: backoff capped", Retry("x"), 4, 5.0, Limits(5, 3600.0, 2.0, 10.0),
     RetryAt(NOW + 10.0, 10.0, "x", "retry")),
    ("retry: the chat's pause wins", Retry("HTTP 429", 30.0, code="http_429"), 1, 5.0, LIMITS,
     RetryAt(NOW + 30.0, 30.0, "HTTP 429", "http_429")),
    ("retry at the attempt limit", Retry("HTTP 503"), 5, 5.0, LIMITS,
     Dead("gave up after 5 attempts over 5s: HTTP 503", "gave_up")),
    ("retry past max_age", Retry("timed out"), 1, 3600.0, LIMITS,
     Dead("gave up after 1 attempt over 3600s: timed out", "gave_up")),
    ("no attempt limit", Retry("HTTP 503"), 50, 5.0, NO_ATTEMPT_LIMIT,
     RetryAt(NOW + 60.0, 60.0, "HTTP 503", "retry")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("outcome", "attempt", "age", "limits", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    outcome: Outcome, attempt: int, age: float, limits: Limits, expected: Decision
) -> None:
    assert decide(outcome, attempt, age, NOW, limits, fixed_pause) == expected


def test_the_default_backoff_stays_within_half_its_ceiling_and_the_ceiling() -> None:
    for attempt in range(1, 12):
        decision = decide(Retry("x"), attempt, 0.0, NOW, NO_ATTEMPT_LIMIT)
        assert isinstance(decision, RetryAt)
        ceiling = fixed_pause(attempt, 2.0, 60.0)
        assert ceiling / 2 <= decision.wait <= ceiling
        assert decision.at == NOW + decision.wait


@pytest.mark.parametrize(
    ("attempts", "unrecorded", "age", "gives_up"),
    [
        (3, 0, 9999.0, False),  # every outcome stored: the store's own count decides
        (3, 1, 5.0, False),  # within the limits: try again
        (5, 2, 5.0, True),  # at the attempt limit
        (1, 1, 3600.0, True),  # past max_age
    ],
)
def test_a_delivery_whose_outcomes_were_not_stored(
    attempts: int, unrecorded: int, age: float, gives_up: bool
) -> None:
    found = given_up_unrecorded(LIMITS, attempts, unrecorded, age)
    assert (found is not None) == gives_up
    if found is not None:
        assert found.code == "gave_up"
        assert f"{unrecorded} of their outcomes could not be stored" in found.reason
