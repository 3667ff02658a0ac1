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
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from bridge.chats import Body, Chat, DestinationSettings, ThreadedChat
from bridge.claims import Claims
from bridge.config import Config, DeliveryConfig, Route
from bridge.digest import Attempt, Digester
from bridge.failed_tests import FailedTestsFetcher, JobservConfig, RunTests
from bridge.giveup import Limits
from bridge.incidents import Role, wanted_roles
from bridge.jobserv import Build, NotABuild
from bridge.lane_owner import LaneOwnership
from bridge.log_throttle import FailureLog
from bridge.metrics import Metrics
from bridge.outcome import Failed, Outcome, Retry, from_exception
from bridge.parsed_events import ParsedEvents
from bridge.rate_limit import TokenBucket
from bridge.recorder import Recorder
from bridge.redact import Redactor
from bridge.render import Rendered, Template, TemplateError, build_context, render_message
from bridge.routing import notify_for
from bridge.store import Delivery, DispatchStore, LaneStore, StoreUnavailable
from bridge.text import describe_exception
from bridge.threads import Draft, Reconcile

log = logging.getLogger("bridge.delivery")


@dataclass
class Lane:
    """One destination's claim loop: claims its due deliveries in order, renders and sends
    each through its chat, and has its recorder record the outcome."""

    settings: DestinationSettings
    chat: Chat
    template: Template
    store: LaneStore
    config: DeliveryConfig  # the [delivery] section: polling and retry timing
    slots: asyncio.Semaphore
    redact: Redactor
    metrics: Metrics
    bucket: TokenBucket = field(init=False)
    owner: LaneOwnership = field(init=False)
    recorder: Recorder = field(init=False)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    woken: int = 0  # times woken: a claim made since the last wake may have seen it all
    stopping: bool = False
    events: ParsedEvents = field(default_factory=ParsedEvents)
    # With a [jobserv] section: failed runs' failed tests are looked up before rendering.
    failed_tests: FailedTestsFetcher | None = None
    jobserv: JobservConfig | None = None
    # For a chat that threads: which builds each trigger's routes want (their `notify`).
    routes: list[Route] = field(default_factory=list)
    buttons: bool = False  # Slack's buttons on incident roots (bridge.slack_interactions)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.settings.rate_limit, self.settings.burst)
        self.owner = LaneOwnership(self.name, self.store, self.bucket.empty)
        limits = Limits(
            self.settings.max_attempts,
            self.settings.max_age,
            self.config.retry_initial,
            self.config.retry_max,
        )
        self.recorder = Recorder(self.name, self.store, limits, self.redact, self.metrics)
        self.digester = Digester(self.settings, self.template, self.events.get)
        self.claims = Claims(self.settings, self.store, self.digester.most, lambda: self.woken)
        self._send_seconds = self.metrics.send_seconds.labels(self.name)
        # Checked once: a runtime Protocol check costs as much as a small render.
        self.threaded = self.chat if isinstance(self.chat, ThreadedChat) else None

    @property
    def name(self) -> str:
        return self.settings.name

    def wake(self) -> None:
        """Something new may be due: look at once."""
        self.woken += 1
        self.wakeup.set()

    async def run(self) -> None:
        store_errors = FailureLog(log, f"lane {self.name}: store error")
        try:
            while not self.stopping:
                try:
                    if await self.owner.own():
                        await self._step()
                    else:
                        await self.claims.drop()
                        await self._wait_for_lane()
                except Exception as exc:
                    store_errors.failed(exc)
                    await self.claims.drop()  # the lane may be another replica's by now
                    await self._sleep(self.config.poll_interval)
                else:
                    store_errors.succeeded()
        finally:
            await self.claims.drop()
            await self.owner.release()

    async def _wait_for_lane(self) -> None:
        """Sleep a poll interval: new events do not free another replica's lane."""
        deadline = time.monotonic() + self.config.poll_interval
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            await self._sleep(left)

    async def _step(self) -> None:
        if self.digester.most > 1 and (wait := self.bucket.ready_in()):
            # Held by the rate limit: wait before claiming, so that the claim takes what
            # arrived meanwhile, to go as one digest. Nothing else ever waits to be grouped.
            await asyncio.sleep(wait)
        now = time.time()
        claim = await self.claims.next(now)
        if not claim.deliveries:
            wait = self.config.poll_interval
            if claim.next_due is not None:
                wait = min(wait, max(claim.next_due - now, 0.0))
            await self._sleep(wait)
            return
        due, done = claim.deliveries, 0  # done: those whose outcome is recorded
        try:
            while done < len(due):
                if self.stopping or not await self.owner.own():
                    await self.claims.release(due[done:])
                    return
                self.claims.sending(due[done:])
                held, unit = False, await self._attempt(due[done:])
                now = time.time()  # one time for a digest's members: they retry together
                for delivery, outcome, attempted in unit:
                    held = await self.recorder.conclude(delivery, outcome, attempted, now) or held
                    done += 1
                if held:  # the head must wait: keep the rest (and the next batch) behind it
                    await self.claims.release(due[done:])
                    return
        except (asyncio.CancelledError, Exception):
            # Stopped past the grace (a reload, a shutdown), or the store failed: give the
            # claims back, or this lane (or the one a reload starts next) would wait for their
            # lease (a minute) to run out. Briefly: a stuck store must not hold anything up.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.claims.release(due[done:])
            raise

    async def _attempt(self, due: list[Delivery]) -> list[Attempt]:
        """Send the unit at the head of `due`: a digest of several (bridge.digest), or one."""
        digest = self.digester.take(due, self.recorder.unrecorded.__contains__)
        delivery = due[0]
        given_up = None if digest else self.recorder.given_up(delivery)
        if given_up is not None:
            return [(delivery, given_up, False)]
        if wait := self.bucket.delay():
            await asyncio.sleep(wait)
        async with self.slots:
            if digest is None:
                return [(delivery, await self.deliver(delivery), True)]
            outcome = await self._send(self.chat.send(digest.rendered.body, digest.key))
        return digest.outcomes(outcome, self.config.retry_initial, self.config.retry_max)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # no task of its own, as wait_for makes
                await self.wakeup.wait()
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
            return Failed(f"unexpected error: {describe_exception(exc)}", code="unexpected")

    async def _render_and_send(self, delivery: Delivery) -> Outcome:
        if self.threaded is not None and delivery.transition is not None:
            # No route sends this trigger here any more (a replay): a plain message.
            notify = notify_for(self.routes, self.name, delivery.factory, delivery.trigger)
            if notify:
                return await self._threaded(self.threaded, delivery, wanted_roles(notify))
        try:
            rendered = await self._render_delivery(delivery)
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
            return Failed(f"cannot render: {describe_exception(exc)}", code="template")
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
        return await self._send(self.chat.send(body, delivery.key))

    async def _render_delivery(self, delivery: Delivery) -> Rendered:
        """The one place a lane renders a (plain, not threaded) delivery."""
        event = self.events.event(delivery)
        tests = await self._failed_tests(event.build)
        return event.message(delivery, self.template, self.settings, tests)

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

        reconcile = Reconcile(
            chat, self.store, self.name, wanted, self._render, paced, self.buttons
        )
        try:
            return await reconcile(delivery)
        except (TemplateError, NotABuild) as exc:
            return Failed(f"cannot render: {exc}", code="template")
        except StoreUnavailable as exc:
            return Retry(f"store: {exc}", code="store")

    async def _render(self, draft: Draft) -> Body:
        facts = build_context(draft.build, await self._failed_tests(draft.build))
        return render_message(self.template, self.settings, draft.context(self.name, facts)).body

    async def _failed_tests(self, build: Build) -> dict[str, RunTests] | None:
        if self.failed_tests is None or self.jobserv is None:
            return None
        return await self.failed_tests.for_build(build, self.jobserv, self.settings.max_failed_runs)


class Dispatcher:
    """Runs one lane per configured destination until stopped; a reload replaces the lanes."""

    def __init__(
        self,
        config: Config,
        store: DispatchStore,
        chats: dict[str, Chat],
        redact: Redactor,
        metrics: Metrics,
        failed_tests: FailedTestsFetcher | None = None,
    ) -> None:
        self.store = store
        self.redact = redact
        self.metrics = metrics
        self.failed_tests = failed_tests
        self.events = ParsedEvents()
        self.retention = config.delivery.retention
        self.lanes = self._lanes(config, chats)
        store.on_queued(lambda names: self.wake(names, told=True))
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
                failed_tests=self.failed_tests,
                jobserv=config.jobserv,
                routes=config.routes,
                buttons=config.slack is not None and settings.type == "slack-api",
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

    def destination_types(self) -> dict[str, str]:
        """The destinations with a running lane, by name, with their chat types."""
        return {name: lane.settings.type for name, lane in self.lanes.items()}

    def wake_all(self) -> None:
        """Wake every lane: after deliveries were queued again, say."""
        self.wake(list(self.lanes))

    def arrived(self, body: bytes, build: Build, destinations: list[str]) -> None:
        """A new event for these lanes: they would parse its body again, so keep its build."""
        if destinations:
            self.events.add(body, build)
            self.wake(destinations)

    def wake(self, destinations: list[str], told: bool = False) -> None:
        """Wake these lanes here, and tell the replica that owns each one this one does not
        (`told`: another replica queued for them, and told the owner; only owned ones wake)."""
        for lane in filter(None, map(self.lanes.get, destinations)):
            if lane.owner.owned or not told:
                lane.wake()
        far = [n for n in destinations if n not in self.lanes or not self.lanes[n].owner.owned]
        if far and not told:
            self.store.announce_queued(far)

    async def _prune(self) -> None:
        while True:
            try:
                before = time.time() - self.retention
                removed = await self.store.purge(before, ("sent", "silenced"))
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
