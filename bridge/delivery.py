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
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from bridge.chats import Body, Chat, DestinationSettings, ThreadedChat
from bridge.config import Config, DeliveryConfig, Route
from bridge.failed_tests import FailedTestsFetcher, JobservConfig, RunTests
from bridge.incidents import Role, wanted_roles
from bridge.jobserv import Build, NotABuild, parse_build
from bridge.metrics import Metrics
from bridge.outcome import Failed, Outcome, Retry, Sent, from_exception, short_reason
from bridge.redact import Redactor
from bridge.render import Template, TemplateError, build_context, context, render_message
from bridge.routing import notify_for
from bridge.store import Delivery, Store, StoreUnavailable
from bridge.text import plural
from bridge.threads import Draft, Reconcile

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

    def empty(self) -> None:
        """Start again with no token: the next message waits 1/rate."""
        self.tokens = 0.0
        self.updated = time.monotonic()


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter: about initial * 2^(attempt-1), never above maximum."""
    ceiling = min(maximum, initial * 2 ** min(attempt - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


# An error in a dead letter is one line; an exception's text can be a whole build.
ERROR_TEXT_LIMIT = 300


def _describe(exc: BaseException) -> str:
    """An unexpected exception as one short line of printable text."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(exc)).split())
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[: ERROR_TEXT_LIMIT - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ParsedEvents:
    """Stored events parsed, with their template facts: one event often goes to several
    destinations, so the lanes share this (a few hundred events, the most recent)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        # Keyed by the body itself: the same bytes always parse the same.
        self.entries: OrderedDict[bytes, tuple[Build, dict[str, Any]]] = OrderedDict()

    def get(self, delivery: Delivery) -> tuple[Build, dict[str, Any]]:
        found = self.entries.get(delivery.body)
        if found is not None:
            self.entries.move_to_end(delivery.body)
            return found
        build = parse_build(delivery.body)
        found = self.entries[delivery.body] = (build, build_context(build))
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return found


@dataclass
class Lane:
    settings: DestinationSettings
    chat: Chat
    template: Template
    store: Store
    policy: DeliveryConfig
    slots: asyncio.Semaphore
    redact: Redactor
    metrics: Metrics
    bucket: TokenBucket = field(init=False)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    # Replicas sharing a store: only the one that owns a lane claims its deliveries.
    owned: bool = False
    waited: bool = False  # another replica owned the lane since this one started
    events: ParsedEvents = field(default_factory=ParsedEvents)
    # With a [jobserv] section: failed runs' failed tests are looked up before rendering.
    tests: FailedTestsFetcher | None = None
    jobserv: JobservConfig | None = None
    # Attempts whose outcome the store did not take, by delivery id: they count all the same.
    unrecorded: dict[int, int] = field(default_factory=dict)
    # For a chat that threads: which builds each trigger's routes want (their `notify`).
    routes: list[Route] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.settings.rate_limit, self.settings.burst)
        # The metrics every delivery touches, looked up once.
        self._sent = self.metrics.deliveries.labels(self.name, "sent", "")
        self._accept_to_sent = self.metrics.accept_to_sent_seconds.labels(self.name)
        self._send_seconds = self.metrics.send_seconds.labels(self.name)

    @property
    def name(self) -> str:
        return self.settings.name

    async def run(self) -> None:
        try:
            while not self.stopping:
                try:
                    if await self._own():
                        await self._step()
                    else:
                        await self._wait_for_lane()
                except Exception:
                    log.exception("lane %s: store error, trying again shortly", self.name)
                    await self._sleep(self.policy.poll_interval)
        finally:
            if self.owned:
                self.owned = False
                with contextlib.suppress(Exception):
                    await self.store.release_lane(self.name)

    async def _own(self) -> bool:
        """Whether this process owns the lane now (always, unless replicas share the store)."""
        try:
            owned = await self.store.own_lane(self.name)
        except Exception:
            # Not a sign of another replica (the store may be restarting): `waited` is
            # only for a lane that another replica was seen to hold.
            self.owned = False
            raise
        if owned and not self.owned and self.waited:
            # Another replica sent on this lane, lately perhaps: start with an empty
            # bucket so that the rate limit holds across the handover.
            self.bucket.empty()
            log.info("lane %s: taken over from another replica", self.name)
        elif self.owned and not owned:
            log.warning("lane %s: now owned by another replica", self.name)
        self.waited = self.waited or not owned
        self.owned = owned
        return owned

    async def _wait_for_lane(self) -> None:
        """Sleep a poll interval: new events do not free another replica's lane."""
        deadline = time.monotonic() + self.policy.poll_interval
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            await self._sleep(left)

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
        index = 0
        try:
            for index, delivery in enumerate(claim.deliveries):
                if self.stopping or not await self._own():
                    await self.store.release([d.id for d in claim.deliveries[index:]])
                    return
                outcome: Outcome | None = self._given_up(delivery)
                attempted = outcome is None
                if outcome is None:
                    if wait := self.bucket.delay():
                        await asyncio.sleep(wait)
                    async with self.slots:
                        outcome = await self.deliver(delivery)
                held = await self._conclude(delivery, outcome, attempted)
                if held:  # the head must wait: keep the rest behind it
                    await self.store.release([d.id for d in claim.deliveries[index + 1 :]])
                    return
        except (asyncio.CancelledError, Exception):
            # Stopped past the grace (a reload, a shutdown), or the store failed: give the
            # claims back, or this lane (or the one a reload starts next) would wait for their
            # lease (a minute) to run out. Briefly: a stuck store must not hold anything up.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.store.release([d.id for d in claim.deliveries[index:]])
            raise

    def _given_up(self, delivery: Delivery) -> Failed | None:
        """A delivery whose last outcomes could not be stored, now past its limits: it is not
        sent again, however often a failing store hands it back."""
        unrecorded = self.unrecorded.get(delivery.id, 0)
        if not unrecorded:
            return None
        attempts = delivery.attempts + unrecorded
        age = time.time() - delivery.created_at
        limit = self.settings.max_attempts
        if (limit and attempts >= limit) or age >= self.settings.max_age:
            return Failed(
                f"gave up after {attempts} attempts over {age:.0f}s;"
                f" {unrecorded} of their outcomes could not be stored",
                code="gave_up",
            )
        return None

    async def _conclude(self, delivery: Delivery, outcome: Outcome, attempted: bool) -> bool:
        """Record the outcome. When the store refuses it, record a plainer one (the attempt
        must count); when that fails too, the attempt is counted here and the error raised."""
        try:
            held = await self.record(delivery, outcome)
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
            held = await self.record(delivery, fallback)
        self.unrecorded.pop(delivery.id, None)
        return held

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), seconds)
        self.wakeup.clear()

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Render and send one delivery. Whatever goes wrong is its outcome: this never raises
        (but for a cancellation), so one delivery cannot stop its lane."""
        try:
            return await self._render_and_send(delivery)
        except Exception as exc:
            log.warning(
                "delivery %d to %s: unexpected %s",
                delivery.id,
                self.name,
                type(exc).__name__,
                exc_info=True,
                extra={"delivery_id": delivery.id, "destination": self.name},
            )
            return Failed(f"unexpected error: {_describe(exc)}", code="unexpected")

    async def _render_and_send(self, delivery: Delivery) -> Outcome:
        if isinstance(self.chat, ThreadedChat) and delivery.transition is not None:
            # No route sends this trigger here any more (a replay): a plain message.
            notify = notify_for(self.routes, self.name, delivery.factory, delivery.trigger)
            if notify:
                return await self._threaded(self.chat, delivery, wanted_roles(notify))
        try:
            build, facts = self.events.get(delivery)
            tests = await self._failed_tests(build)
            rendered = render_message(
                self.template,
                self.settings,
                context(
                    build,
                    event_id=delivery.event_id,
                    destination=self.name,
                    tests=tests,
                    change=delivery.transition,
                    mentions=delivery.mentions,
                    facts=None if tests else facts,
                ),
            )
        except (TemplateError, NotABuild) as exc:
            return Failed(f"cannot render: {exc}", code="template")
        except Exception as exc:  # a bug met by this build alone: its outcome, not the lane's
            log.warning(
                "delivery %d to %s: cannot render",
                delivery.id,
                self.name,
                exc_info=True,
                extra={"delivery_id": delivery.id, "destination": self.name},
            )
            return Failed(f"cannot render: {_describe(exc)}", code="template")
        body = rendered.body
        if rendered.cut:
            self.metrics.truncations.labels(self.name).inc()
            log.info(
                "delivery %d to %s: %d failed runs left out to fit the chat's limits",
                delivery.id,
                self.name,
                rendered.hidden,
                extra={"delivery_id": delivery.id, "destination": self.name},
            )
        return await self._send(self.chat.send(body, delivery.id))

    async def _send(self, sending: Awaitable[Outcome]) -> Outcome:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await sending
        except TimeoutError:
            return Retry(f"no answer within {self.settings.timeout:g}s", code="timeout")
        except Exception as exc:
            return from_exception(exc)
        finally:
            self._send_seconds.observe(time.monotonic() - started)

    async def _threaded(
        self, chat: ThreadedChat, delivery: Delivery, wanted: frozenset[Role]
    ) -> Outcome:
        """A chat that threads shows the trigger's incidents: see bridge.threads."""
        calls = 0

        async def paced(sending: Awaitable[Outcome]) -> Outcome:
            # The delivery took a token for its first call; each further call takes its own.
            nonlocal calls
            if calls and (wait := self.bucket.delay()):
                await asyncio.sleep(wait)
            calls += 1
            return await self._send(sending)

        reconcile = Reconcile(chat, self.store, self.name, wanted, self._render, paced)
        try:
            return await reconcile(delivery)
        except (TemplateError, NotABuild) as exc:
            return Failed(f"cannot render: {exc}", code="template")
        except StoreUnavailable as exc:
            return Retry(f"store: {exc}", code="store")

    async def _render(self, draft: Draft) -> Body:
        facts = build_context(draft.build, await self._failed_tests(draft.build))
        return render_message(self.template, self.settings, draft.context(self.name, facts)).body

    async def _set_thread(self, key: tuple[str, str, str], ref: str | None) -> None:
        """The message is out whatever happens here: a lost thread is not worth a resend."""
        try:
            await self.store.set_thread(*key, ref)
        except Exception:
            log.exception("%s: could not store the thread of %s/%s", self.name, key[1], key[2])

    async def _failed_tests(self, build: Build) -> dict[str, RunTests] | None:
        if self.tests is None or self.jobserv is None:
            return None
        return await self.tests.for_build(build, self.jobserv, self.settings.max_failed_runs)

    async def record(self, delivery: Delivery, outcome: Outcome) -> bool:
        """Store the outcome; True when the lane must wait for this delivery."""
        now = time.time()
        attempt = delivery.attempts + 1 + self.unrecorded.get(delivery.id, 0)
        where = (
            f"delivery {delivery.id} of event {delivery.event_id}"
            f" ({delivery.factory} #{delivery.build_id}) to {self.name}"
        )
        fields = {
            "event_id": delivery.event_id,
            "delivery_id": delivery.id,
            "factory": delivery.factory,
            "build": delivery.build_id,
            "destination": self.name,
            "attempt": attempt,
        }
        if isinstance(outcome, Sent):
            await self.store.mark_sent(delivery.id, now)
            self._sent.inc()
            self._accept_to_sent.observe(now - delivery.created_at)
            log.info("%s: sent (attempt %d)", where, attempt, extra={**fields, "outcome": "sent"})
            return False
        reason = short_reason(self.redact(outcome.reason))
        code = outcome.code
        if isinstance(outcome, Retry):
            age = now - delivery.created_at
            limit = self.settings.max_attempts
            if (limit and attempt >= limit) or age >= self.settings.max_age:
                reason = f"gave up after {plural(attempt, 'attempt')} over {age:.0f}s: {reason}"
                code = "gave_up"
            else:
                wait = outcome.after
                if wait is None:
                    wait = backoff(attempt, self.policy.retry_initial, self.policy.retry_max)
                await self.store.mark_retry(delivery.id, now + wait, reason, now)
                self.metrics.deliveries.labels(self.name, "retry", code).inc()
                self.metrics.retries.labels(self.name).inc()
                log.warning(
                    "%s: %s; attempt %d, next in %.1fs",
                    where,
                    reason,
                    attempt,
                    wait,
                    extra={**fields, "outcome": "retry", "reason": reason},
                )
                return True
        await self.store.mark_dead(delivery.id, reason, now)
        self.metrics.deliveries.labels(self.name, "dead", code).inc()
        log.error(
            "%s: failed for good, kept as a dead letter: %s",
            where,
            reason,
            extra={**fields, "outcome": "dead", "reason": reason},
        )
        return False


class Dispatcher:
    """Runs one lane per configured destination until stopped; a reload replaces the lanes."""

    def __init__(
        self,
        config: Config,
        store: Store,
        chats: dict[str, Chat],
        redact: Redactor,
        metrics: Metrics,
        tests: FailedTestsFetcher | None = None,
    ) -> None:
        self.store = store
        self.redact = redact
        self.metrics = metrics
        self.tests = tests
        self.events = ParsedEvents()
        self.retention = config.delivery.retention
        self.lanes = self._lanes(config, chats)
        self.tasks: list[asyncio.Task[None]] = []
        self.pruner: asyncio.Task[None] | None = None

    def _lanes(self, config: Config, chats: dict[str, Chat]) -> dict[str, Lane]:
        slots = asyncio.Semaphore(config.delivery.concurrency)
        return {
            name: Lane(
                settings,
                chats[name],
                config.templates[name],
                self.store,
                config.delivery,
                slots,
                self.redact,
                self.metrics,
                events=self.events,
                tests=self.tests,
                jobserv=config.jobserv,
                routes=config.routes,
            )
            for name, settings in config.destinations.items()
        }

    async def start(self) -> None:
        await self._start_lanes()
        self.pruner = asyncio.create_task(self._prune(), name="prune")

    async def _start_lanes(self) -> None:
        try:
            orphans = await self.store.kill_orphans(set(self.lanes), time.time())
        except Exception:  # they wait, pending, for the next start; the lanes must run now
            log.exception("could not dead-letter deliveries to removed destinations")
            orphans = 0
        if orphans:
            log.warning("%d pending deliveries to removed destinations are now dead", orphans)
        self.tasks = [
            asyncio.create_task(lane.run(), name=f"lane {name}")
            for name, lane in self.lanes.items()
        ]

    async def reconfigure(self, config: Config, chats: dict[str, Chat], grace: float) -> None:
        """Swap in the lanes of a new config; what is pending to a removed destination dies."""
        await self._stop_lanes(grace)
        self.retention = config.delivery.retention
        self.lanes = self._lanes(config, chats)
        await self._start_lanes()

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

    async def _stop_lanes(self, grace: float) -> None:
        for lane in self.lanes.values():
            lane.stopping = True
            lane.wakeup.set()
        pending: set[asyncio.Task[None]] = set()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # A cancelled send keeps its claim until the lease runs out; then it is
        # claimed again (at once when SQLite is next opened to serve).

    async def stop(self, grace: float) -> None:
        """Stop claiming; let sends in flight finish within `grace`; leave the rest queued."""
        if self.pruner is not None:
            self.pruner.cancel()
            await asyncio.gather(self.pruner, return_exceptions=True)
        await self._stop_lanes(grace)
