"""A lane's claims: the batch it sends, and the next batch claimed ahead.

A lane claims its due deliveries in batches. Without more, each batch boundary waits for a
claim (a writer-thread job on SQLite, round trips on PostgreSQL) after the batch's last send.
So the next claim starts while the last unit of a batch is being sent: it passes over that
unit (the lane's own, in flight) and takes only deliveries behind it, which wait, claimed,
until the batch is done. When the batch cannot finish (a retry holds its head, the lane stops,
loses its ownership or is cancelled), what was claimed ahead is given back at once: never
sent before the held head, never left claimed until its lease runs out.

A claim that drained the lane (it took all that was due) and was not followed by a wake (new
deliveries queued) is not followed by another: the lane would find nothing. So a quiet lane
makes one claim per batch, not two, and sleeps after it as it would after an empty claim.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from bridge.chats import DestinationSettings
from bridge.store import Claim, Delivery, LaneStore

log = logging.getLogger("bridge.delivery")

CLAIM_BATCH = 32
# A claim outlives any send (its timeout), so only a dead process loses one.
LEASE_MARGIN = 60.0
# How long a lane that gives its claims back waits for a claim ahead still running: it is not
# cancelled (a claim cut short may still have taken what it took: SQLite's runs on the writer
# thread whatever happens here), so what it took is given back when it ends, later if need be.
CLAIM_WAIT = 1.0


class Claims:
    """One destination's claims; `unit_most`: the most deliveries one send takes (a digest's
    most, else 1); `woken`: how many times the lane was woken so far."""

    def __init__(
        self,
        settings: DestinationSettings,
        store: LaneStore,
        unit_most: int,
        woken: Callable[[], int],
    ) -> None:
        self.name = settings.name
        self.woken = woken
        self.store = store
        self.lease = settings.timeout + LEASE_MARGIN
        self.unit_most = max(1, unit_most)
        # Claiming ahead takes what is due before the batch's last send ends. A lane that
        # digests under a rate limit waits before it claims, so that the claim gathers what
        # came meanwhile into one digest (`Lane._step`): claiming ahead would cut that short,
        # so it never claims ahead. Elsewhere nothing waits to be grouped, and a claim made a
        # send earlier changes no grouping but what timing already decides.
        self.may_claim_ahead = unit_most <= 1 or settings.rate_limit <= 0
        self._ahead: asyncio.Task[Claim] | None = None
        self._ahead_woken = 0  # `woken` when the claim ahead began
        # After a claim that drained the lane: `woken` when it began, and its next_due.
        self._drained: tuple[int, float | None] | None = None
        self._giving_back: set[asyncio.Task[None]] = set()

    async def next(self, now: float) -> Claim:
        """The next batch: the one claimed ahead (even if it found nothing: whatever came
        since has woken the lane), else one claimed now."""
        ahead = self._ahead
        if ahead is None:
            drained, self._drained = self._drained, None
            if drained is not None and drained[0] == self.woken():
                return Claim([], drained[1])  # nothing came since: once, without asking
            woken = self.woken()
            claim = await self.store.claim(self.name, now, CLAIM_BATCH, self.lease)
            return self._noted(claim, woken)
        # Not `await ahead`: cancelling the lane must not cancel the claim (see CLAIM_WAIT);
        # while it is still `_ahead`, `drop` gives back what it takes.
        await asyncio.wait({ahead})
        self._ahead = None
        return self._noted(ahead.result(), self._ahead_woken)

    def _noted(self, claim: Claim, woken: int) -> Claim:
        self._drained = (woken, claim.next_due) if claim.drained else None
        return claim

    def _quiet(self) -> bool:
        """Whether the last claim drained the lane, and the lane was not woken since it
        began."""
        return self._drained is not None and self._drained[0] == self.woken()

    def sending(self, rest: Sequence[Delivery]) -> None:
        """The lane is about to send the head of `rest`, the rest of its batch: when that
        send may be the batch's last, claim the next batch now, behind `rest`."""
        if (
            self.may_claim_ahead
            and self._ahead is None
            and len(rest) <= self.unit_most
            and not self._quiet()
        ):
            self._ahead_woken = self.woken()
            passing = [delivery.id for delivery in rest]
            claim = self.store.claim(self.name, time.time(), CLAIM_BATCH, self.lease, passing)
            self._ahead = asyncio.ensure_future(claim)

    async def release(self, rest: Sequence[Delivery]) -> None:
        """Give back the rest of the batch, unsent, and whatever was claimed behind it."""
        self._drained = None  # the lane is not as its last claim left it
        if rest:
            await self.store.release([delivery.id for delivery in rest])
        await self.drop()

    async def drop(self) -> None:
        """Give back what was claimed ahead, once its claim has ended (waiting at most
        CLAIM_WAIT here; after that it is given back when it ends)."""
        self._drained = None
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        giving_back = asyncio.ensure_future(self._give_back(ahead))
        self._giving_back.add(giving_back)
        giving_back.add_done_callback(self._giving_back.discard)
        await asyncio.wait({giving_back}, timeout=CLAIM_WAIT)

    async def _give_back(self, ahead: asyncio.Task[Claim]) -> None:
        await asyncio.wait({ahead})
        if ahead.cancelled() or ahead.exception() is not None:
            return  # a claim that failed holds nothing
        taken = [delivery.id for delivery in ahead.result().deliveries]
        if taken:
            try:
                await self.store.release(taken)
            except Exception as exc:  # their lease runs out; then they are claimed again
                log.warning(
                    "lane %s: could not give back %d claims: %s", self.name, len(taken), exc
                )
