"""Waking another replica's lanes: when a replica queues deliveries for a lane that it does
not own, it says so on a PostgreSQL channel (NOTIFY), and the replica that owns the lane,
listening on its lanes' connection, wakes it at once instead of at its next poll.

A notification is a hint: one lost (a connection cut at that moment) leaves the deliveries
to the owner's next poll (`poll_interval`), as before any was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from bridge.log_throttle import FailureLog

log = logging.getLogger("bridge.store")

CHANNEL = "jobserv_bridge_queued"
# PostgreSQL refuses a payload of 8000 bytes or more: longer lists go in several.
PAYLOAD_LIMIT = 7000
CLOSE_WAIT = 2.0  # seconds a closing store gives its last announcements

Wake = Callable[[list[str]], None]
Send = Callable[[str, str], Awaitable[None]]


class Wakeups:
    """This replica's side of the channel: what it says, and what it hears from the others."""

    def __init__(self, send: Send) -> None:
        self.send = send  # runs `SELECT pg_notify(channel, payload)` on the pool
        # Said first in every payload: a replica does not wake itself with what it said.
        self.token = secrets.token_hex(8)
        self.wake: Wake | None = None
        self._queued: set[str] = set()
        self._sending: asyncio.Task[None] | None = None
        self._failures = FailureLog(log, "cannot wake the other replicas' lanes")

    async def listen(self, connection: Any) -> None:
        """Hear the other replicas on `connection` (each new lanes' connection)."""
        await connection.add_listener(CHANNEL, self._heard)

    def _heard(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        try:
            token, *names = json.loads(payload)
        except (ValueError, TypeError):
            return  # not ours: someone else on the channel
        if token != self.token and self.wake is not None:
            self.wake([name for name in names if isinstance(name, str)])

    def announce(self, destinations: Iterable[str]) -> None:
        """Say, soon and once for all those said meanwhile, that these lanes have work."""
        self._queued.update(destinations)
        if self._queued and self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send_queued())

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                names, self._queued = sorted(self._queued), set()
                for payload in payloads(self.token, names):
                    try:
                        await self.send(CHANNEL, payload.decode())
                    except Exception as exc:  # the owners poll: nothing is lost
                        self._failures.failed(exc)
                    else:
                        self._failures.succeeded()
        finally:
            self._sending = None

    async def close(self) -> None:
        """Send what was announced (a command announces, then closes the store), briefly."""
        sending, self._sending = self._sending, None
        if sending is not None:
            await asyncio.wait({sending}, timeout=CLOSE_WAIT)
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)


def payloads(token: str, names: list[str]) -> list[bytes]:
    """JSON arrays of `token` and names, each under PAYLOAD_LIMIT bytes. A name too long
    for one alone is left to its owner's poll."""
    empty = len(_payload(token, []))
    found: list[bytes] = []
    batch: list[str] = []
    size = empty
    for name in names:
        grows = len(json.dumps(name)) + 2  # ", " and the name, quoted
        if empty + grows > PAYLOAD_LIMIT:
            continue
        if size + grows > PAYLOAD_LIMIT:
            found.append(_payload(token, batch))
            batch, size = [], empty
        batch.append(name)
        size += grows
    if batch:
        found.append(_payload(token, batch))
    return found


def _payload(token: str, names: list[str]) -> bytes:
    return json.dumps([token, *names]).encode()
