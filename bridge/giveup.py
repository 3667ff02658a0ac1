"""A chat's answer to one attempt -> sent / retry at T / dead: the give-up rules, pure.

`outcome.py` classifies what a chat answered; this decides what becomes of the delivery,
given how often and how long it has been tried. No store, no clock, no log here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bridge.outcome import Failed, Outcome, Sent
from bridge.text import plural


@dataclass(frozen=True)
class Limits:
    """When a destination gives a delivery up, and how long it waits between tries."""

    max_attempts: int  # 0: no limit but max_age
    max_age: float  # seconds since the delivery was created
    retry_initial: float
    retry_max: float


@dataclass(frozen=True)
class RetryAt:
    at: float  # when to try again (epoch seconds)
    wait: float  # seconds from now
    reason: str
    code: str


@dataclass(frozen=True)
class Dead:
    reason: str
    code: str


Decision = Sent | RetryAt | Dead
# The pause before attempt n+1 after n attempts: (attempt, initial, maximum) -> seconds.
Backoff = Callable[[int, float, float], float]


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter: about initial * 2^(attempt-1), never above maximum."""
    ceiling = min(maximum, initial * 2 ** min(attempt - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


def exhausted(limits: Limits, attempts: int, age: float) -> bool:
    """Whether a delivery tried `attempts` times over `age` seconds may not be tried again."""
    return bool(limits.max_attempts and attempts >= limits.max_attempts) or age >= limits.max_age


def decide(
    outcome: Outcome,
    attempt: int,
    age: float,
    now: float,
    limits: Limits,
    pause: Backoff = backoff,
) -> Decision:
    """What becomes of a delivery whose attempt number `attempt` (from 1) had `outcome`.

    `outcome`'s reason is taken as it is (already redacted and cut by the caller)."""
    if isinstance(outcome, Sent):
        return outcome
    if isinstance(outcome, Failed):
        return Dead(outcome.reason, outcome.code)
    if exhausted(limits, attempt, age):
        reason = f"gave up after {plural(attempt, 'attempt')} over {age:.0f}s: {outcome.reason}"
        return Dead(reason, "gave_up")
    wait = outcome.after
    if wait is None:
        wait = pause(attempt, limits.retry_initial, limits.retry_max)
    return RetryAt(now + wait, wait, outcome.reason, outcome.code)


def given_up_unrecorded(
    limits: Limits, attempts: int, unrecorded: int, age: float
) -> Failed | None:
    """A delivery some of whose `attempts` had outcomes the store did not take (`unrecorded`
    of them), past its limits: it is not sent again, however often a failing store hands
    it back. None: try it."""
    if not unrecorded or not exhausted(limits, attempts, age):
        return None
    return Failed(
        f"gave up after {attempts} attempts over {age:.0f}s;"
        f" {unrecorded} of their outcomes could not be stored",
        code="gave_up",
    )
