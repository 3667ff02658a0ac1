"""The PostgreSQL intake's group commit: the accepts that arrive while a batch's
transaction is in flight wait for it, and go together in the next one (one commit, one
WAL sync, for all of them). A lone accept on an idle store goes at once.

The transaction itself is the intake's (postgres_intake); this module only gathers the
accepts, hands each caller its own answer, and falls back to one transaction per event
when a batch fails as a whole, so that one bad event fails only its own caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from bridge.store.records import Accepted, NewEvent, Plan, StoreUnavailable

log = logging.getLogger("bridge.store")

# Enough to share one sync among a burst, small enough to keep each transaction (and the
# history locks it holds) short.
MAX_BATCH = 64

Waiting = tuple[NewEvent, Plan, "asyncio.Future[Accepted]"]
# Accepts one event in a transaction of its own.
AcceptOne = Callable[[NewEvent, Plan], Awaitable[Accepted]]
# Accepts events in one transaction: an answer per event (in their order), or None when
# the transaction failed as a whole and was rolled back (a deadlock, a constraint, ...);
# raises StoreUnavailable when the store is out of reach.
AcceptMany = Callable[
    [Sequence[tuple[NewEvent, Plan]]], Awaitable[list[Accepted | StoreUnavailable] | None]
]


class GroupCommit:
    """Gathers the accepts into batches, one batch in flight at a time."""

    def __init__(self, one: AcceptOne, many: AcceptMany) -> None:
        self._one = one
        self._many = many
        self._waiting: list[Waiting] = []
        self._flusher: asyncio.Task[None] | None = None

    async def accept(self, event: NewEvent, plan: Plan) -> Accepted:
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, plan, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="postgres-intake-batches")
        # A caller that goes away (its request cancelled) leaves the batch to the others:
        # its event is stored or not, as any accept cut short.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        batch: list[Waiting] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                await self._commit(batch)
        except BaseException as exc:  # cancelled (the loop is ending) or a bug here
            failure = StoreUnavailable(f"the intake's batches stopped: {exc!r}")
            for _, _, future in (*batch, *self._waiting):
                _settle(future, failure)
            self._waiting = []
            raise
        finally:
            self._flusher = None

    async def _commit(self, batch: list[Waiting]) -> None:
        if len(batch) == 1:
            await self._alone(*batch[0])
            return
        try:
            answers = await self._many([(event, plan) for event, plan, _ in batch])
        except Exception as exc:
            failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
            for _, _, future in batch:
                _settle(future, StoreUnavailable(str(failure)))
            return
        if answers is None:
            # Rolled back as a whole: each event on its own, in order, as without batches.
            log.info("a batch of %d accepts failed; accepting them one by one", len(batch))
            for waiting in batch:
                await self._alone(*waiting)
            return
        for (_, _, future), answer in zip(batch, answers, strict=True):
            _settle(future, answer)

    async def _alone(self, event: NewEvent, plan: Plan, future: asyncio.Future[Accepted]) -> None:
        try:
            answer: Accepted | StoreUnavailable = await self._one(event, plan)
        except StoreUnavailable as exc:
            answer = exc
        except Exception as exc:  # the store turns its failures into StoreUnavailable
            answer = StoreUnavailable(str(exc))
        _settle(future, answer)


def _settle(future: asyncio.Future[Accepted], answer: Accepted | BaseException) -> None:
    if future.done():
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
