"""A lane's outcomes, recorded: the give-up decision (bridge.giveup) applied, then the store
written, the metrics counted and the outcome logged."""

from __future__ import annotations

import logging
import time
from typing import Any

from bridge.giveup import Dead, Limits, RetryAt, decide, given_up_unrecorded
from bridge.metrics import Metrics
from bridge.outcome import Failed, Outcome, Retry, Sent, short_reason
from bridge.redact import Redactor
from bridge.store import Delivery, LaneStore

log = logging.getLogger("bridge.delivery")


class Recorder:
    """Records one destination's outcomes, and counts the attempts whose outcome the store
    did not take (by delivery id): they count all the same."""

    def __init__(
        self, name: str, store: LaneStore, limits: Limits, redact: Redactor, metrics: Metrics
    ) -> None:
        self.name = name
        self.store = store
        self.limits = limits
        self.redact = redact
        self.metrics = metrics
        self.unrecorded: dict[int, int] = {}
        # The metrics every delivery touches, looked up once.
        self._sent = metrics.deliveries.labels(name, "sent", "")
        self._accept_to_sent = metrics.accept_to_sent_seconds.labels(name)

    def given_up(self, delivery: Delivery) -> Failed | None:
        """A delivery whose last outcomes could not be stored, now past its limits."""
        unrecorded = self.unrecorded.get(delivery.id, 0)
        attempts = delivery.attempts + unrecorded
        age = time.time() - delivery.created_at
        return given_up_unrecorded(self.limits, attempts, unrecorded, age)

    async def conclude(
        self, delivery: Delivery, outcome: Outcome, attempted: bool, now: float | None = None
    ) -> bool:
        """Record the outcome; True when the lane must wait for this delivery. When the store
        refuses it, record a plainer one (the attempt must count); when that fails too, the
        attempt is counted here and the error raised."""
        try:
            held = await self.record(delivery, outcome, now)
        except Exception as exc:
            log.exception("%s: delivery %d: cannot store its outcome", self.name, delivery.id)
            if attempted:
                self.unrecorded[delivery.id] = self.unrecorded.get(delivery.id, 0) + 1
            if isinstance(outcome, Sent):
                raise
            plain = f"{outcome.code}: the outcome could not be stored ({type(exc).__name__})"
            fallback: Outcome = (
                Retry(plain, outcome.after, code=outcome.code)
                if isinstance(outcome, Retry)
                else Failed(plain, code=outcome.code)
            )
            held = await self.record(delivery, fallback, now)
        self.unrecorded.pop(delivery.id, None)
        return held

    async def record(self, delivery: Delivery, outcome: Outcome, now: float | None = None) -> bool:
        """Store the outcome (of a send that ended at `now`: one time for a digest's
        members); True when the lane must wait for this delivery."""
        now = time.time() if now is None else now
        attempt = delivery.attempts + 1 + self.unrecorded.get(delivery.id, 0)
        if not isinstance(outcome, Sent):
            # Redacted before the cut, so that no cut leaves part of a secret behind.
            reason = short_reason(self.redact(outcome.reason))
            outcome = (
                Retry(reason, outcome.after, code=outcome.code)
                if isinstance(outcome, Retry)
                else Failed(reason, code=outcome.code)
            )
        decision = decide(outcome, attempt, now - delivery.created_at, now, self.limits)
        where = (
            f"delivery {delivery.id} of event {delivery.event_id}"
            f" ({delivery.factory} #{delivery.build_id}) to {self.name}"
        )
        fields: dict[str, Any] = {
            "event_id": delivery.event_id,
            "delivery_id": delivery.id,
            "factory": delivery.factory,
            "build": delivery.build_id,
            "destination": self.name,
            "attempt": attempt,
        }
        if isinstance(decision, RetryAt):
            await self.store.mark_retry(delivery.id, decision.at, decision.reason, now)
            self.metrics.deliveries.labels(self.name, "retry", decision.code).inc()
            self.metrics.retries.labels(self.name).inc()
            log.warning(
                "%s: %s; attempt %d, next in %.1fs",
                where,
                decision.reason,
                attempt,
                decision.wait,
                extra={**fields, "outcome": "retry", "reason": decision.reason},
            )
            return True
        if isinstance(decision, Dead):
            await self.store.mark_dead(delivery.id, decision.reason, now)
            self.metrics.deliveries.labels(self.name, "dead", decision.code).inc()
            log.error(
                "%s: failed for good, kept as a dead letter: %s",
                where,
                decision.reason,
                extra={**fields, "outcome": "dead", "reason": decision.reason},
            )
            return False
        # Not awaited: the lane goes on while the outcome waits for its batch (and the
        # delivery stays claimed until it is written).
        self.store.note_sent(delivery.id, now)
        self._sent.inc()
        self._accept_to_sent.observe(now - delivery.created_at)
        log.info("%s: sent (attempt %d)", where, attempt, extra={**fields, "outcome": "sent"})
        return False
