"""Which replica owns a lane: only the owner of a destination's lane claims its deliveries,
so its order and rate limit hold across replicas sharing a store."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from bridge.store import LaneStore

log = logging.getLogger("bridge.delivery")


class LaneOwnership:
    def __init__(self, name: str, store: LaneStore, on_takeover: Callable[[], None]) -> None:
        self.name = name
        self.store = store
        # Called when the lane is taken over from another replica (the rate limit restarts).
        self.on_takeover = on_takeover
        self.owned = False
        self.waited = False  # another replica owned the lane since this one started

    async def own(self) -> bool:
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
            self.on_takeover()
            log.info("lane %s: taken over from another replica", self.name)
        elif self.owned and not owned:
            log.warning("lane %s: now owned by another replica", self.name)
        self.waited = self.waited or not owned
        self.owned = owned
        return owned

    async def release(self) -> None:
        """Give the lane up, if held, so that another replica can take it."""
        if self.owned:
            self.owned = False
            with contextlib.suppress(Exception):
                await self.store.release_lane(self.name)
