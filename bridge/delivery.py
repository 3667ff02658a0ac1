"""Delivery: one lane per destination, sending stored deliveries in order.

A lane claims the oldest due deliveries of its destination, renders and sends them
one at a time through its chat, and records each outcome. A delivery that must
wait (a 5xx, a timeout, a 429) holds its lane, so messages never overtake each
other; other lanes are not affected. A failure for good goes to the dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

from bridge.chats import Chat, DestinationSettings
from bridge.config import Config, DeliveryConfig
from bridge.jobserv import NotABuild, parse_build
from bridge.outcome import Failed, Outcome, Retry, Sent, from_exception
from bridge.redact import Redactor
from bridge.render import Template, TemplateError, context
from bridge.store import Delivery, Store

log = logging.getLogger("bridge.delivery")

CLAIM_BATCH = 32
# A claim outlives any send (its timeout), so only a dead process loses one.
LEASE_MARGIN = 60.0


class TokenBucket:
    """`rate` messages a second on average, up to `burst` at once; rate 0 means no limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def delay(self) -> float:
        """Take a token; return how long to wait before using it."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter: about initial * 2^(attempt-1), never above maximum."""
    ceiling = min(maximum, initial * 2 ** min(attempt - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


@dataclass
class Lane:
    settings: DestinationSettings
    chat: Chat
    template: Template
    store: Store
    policy: DeliveryConfig
    slots: asyncio.Semaphore
    redact: Redactor
    bucket: TokenBucket = field(init=False)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.settings.rate_limit, self.settings.burst)

    @property
    def name(self) -> str:
        return self.settings.name

    async def run(self) -> None:
        while not self.stopping:
            try:
                await self._step()
            except Exception:
                log.exception("lane %s: store error, trying again shortly", self.name)
                await self._sleep(self.policy.poll_interval)

    async def _step(self) -> None:
        now = time.time()
        lease = self.settings.timeout + LEASE_MARGIN
        claim = await self.store.claim(self.name, now, CLAIM_BATCH, lease)
        if not claim.deliveries:
            wait = self.policy.poll_interval
            if claim.next_due is not None:
                wait = min(wait, max(claim.next_due - now, 0.0))
            await self._sleep(wait)
            return
        for index, delivery in enumerate(claim.deliveries):
            if self.stopping:
                await self.store.release([d.id for d in claim.deliveries[index:]])
                return
            await asyncio.sleep(self.bucket.delay())
            async with self.slots:
                outcome = await self.deliver(delivery)
            held = await self.record(delivery, outcome)
            if held:  # the head must wait: keep the rest behind it
                await self.store.release([d.id for d in claim.deliveries[index + 1 :]])
                return

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), seconds)
        self.wakeup.clear()

    async def deliver(self, delivery: Delivery) -> Outcome:
        try:
            build = parse_build(delivery.body)
            body = self.template.render(
                context(build, event_id=delivery.event_id, destination=self.name)
            )
        except (TemplateError, NotABuild) as exc:
            return Failed(f"cannot render: {exc}")
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await self.chat.send(body, delivery.id)
        except TimeoutError:
            return Retry(f"no answer within {self.settings.timeout:g}s")
        except Exception as exc:
            return from_exception(exc)

    async def record(self, delivery: Delivery, outcome: Outcome) -> bool:
        """Store the outcome; True when the lane must wait for this delivery."""
        now = time.time()
        attempt = delivery.attempts + 1
        where = f"delivery {delivery.id} (event {delivery.event_id}) to {self.name}"
        if isinstance(outcome, Sent):
            await self.store.mark_sent(delivery.id, now)
            log.info("%s sent after %d attempt(s)", where, attempt)
            return False
        reason = self.redact(outcome.reason)
        if isinstance(outcome, Retry):
            age = now - delivery.created_at
            limit = self.settings.max_attempts
            if (limit and attempt >= limit) or age >= self.settings.max_age:
                reason = f"gave up after {attempt} attempts over {age:.0f}s: {reason}"
            else:
                wait = outcome.after
                if wait is None:
                    wait = backoff(attempt, self.policy.retry_initial, self.policy.retry_max)
                await self.store.mark_retry(delivery.id, now + wait, reason, now)
                log.warning("%s: %s; retry %d in %.1fs", where, reason, attempt, wait)
                return True
        await self.store.mark_dead(delivery.id, reason, now)
        log.error("%s failed for good, kept as a dead letter: %s", where, reason)
        return False


class Dispatcher:
    """Runs one lane per configured destination until stopped."""

    def __init__(
        self, config: Config, store: Store, chats: dict[str, Chat], redact: Redactor
    ) -> None:
        self.store = store
        self.retention = config.delivery.retention
        slots = asyncio.Semaphore(config.delivery.concurrency)
        self.lanes = {
            name: Lane(
                settings,
                chats[name],
                config.templates[name],
                store,
                config.delivery,
                slots,
                redact,
            )
            for name, settings in config.destinations.items()
        }
        self.tasks: list[asyncio.Task[None]] = []
        self.pruner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        orphans = await self.store.kill_orphans(set(self.lanes), time.time())
        if orphans:
            log.warning("%d pending deliveries to removed destinations are now dead", orphans)
        self.tasks = [
            asyncio.create_task(lane.run(), name=f"lane {name}")
            for name, lane in self.lanes.items()
        ]
        self.pruner = asyncio.create_task(self._prune(), name="prune")

    def wake(self, destinations: list[str]) -> None:
        for name in destinations:
            lane = self.lanes.get(name)
            if lane is not None:
                lane.wakeup.set()

    async def _prune(self) -> None:
        while True:
            try:
                removed = await self.store.purge(time.time() - self.retention, ("sent",))
                if removed:
                    log.info("pruned %d delivered messages older than the retention", removed)
            except Exception:
                log.exception("pruning the store failed")
            await asyncio.sleep(3600)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let sends in flight finish within `grace`; leave the rest queued."""
        for lane in self.lanes.values():
            lane.stopping = True
            lane.wakeup.set()
        pending: set[asyncio.Task[None]] = set()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=grace)
        if self.pruner is not None:
            pending.add(self.pruner)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Claims of cancelled sends are released when the store is next opened to serve.
