"""The PostgreSQL outbox's connections: the pool every call runs on, the connection that
holds this replica's lanes (advisory locks), and what a failure of either becomes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bridge.store.postgres_schema import migrate
from bridge.store.postgres_wakeups import Wakeups
from bridge.store.records import StoreUnavailable, unavailable
from bridge.transitions import (
    Transition,
)

T = TypeVar("T")
log = logging.getLogger("bridge.store")
LOWEST, HIGHEST = -(2**63), 2**63 - 1

# Advisory locks: the first key of each use (see postgres_schema.LOCK_CLASS for "JB").
LANE_LOCK_CLASS = 0x4A43  # the second key is hashtext(destination)
HISTORY_LOCK_CLASS = 0x4A44  # the second key is hashtext(factory, newline, trigger)

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
# How often the connection that holds the lanes is checked, and how long it may take to answer.
LANE_CHECK_INTERVAL = 5.0
LANE_CHECK_TIMEOUT = 3.0
# The server's keepalive probes on that connection: a replica that vanished without
# closing it (a cut network) lets go of its lanes within about idle + interval * count.
LANE_KEEPALIVE = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}


# What the driver raises when the server or the connection fails. Not all: asyncpg
# also has InternalClientError ("cannot switch to state ...; another operation is in
# progress") on a connection cut in the middle of a query, and the odd plain error
# of a connection in a state it did not expect. A store call turns any exception
# into StoreUnavailable (`unavailable`), so that a store failure is always a 503.
_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    EOFError,  # asyncio.IncompleteReadError: the server went away mid-message
    TimeoutError,
)


def pg_unavailable(what: str, exc: Exception) -> StoreUnavailable:
    return unavailable(what, exc, _ERRORS)


def row_count(status: str) -> int:
    """The row count of a command status such as "UPDATE 3"."""
    return int(status.rsplit(" ", 1)[-1])


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable PostgreSQL URL)"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


async def _keep_session(connection: Any) -> None:
    """Nothing to reset: the pool's connections never change their session state.

    (asyncpg still rolls back a transaction left open; this only saves the default
    RESET ALL and friends, a round trip on every release.)
    """


class PostgresPool:
    """Opens the pool (its schema migrated) and the lanes' connection; runs store calls."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.where = safe_url(url)
        self.pool_size = pool_size
        self._pool: Any = None
        self._wakeups = Wakeups(self._notify)
        self._lanes = _LaneLocks(url, self.where, self._wakeups.listen)
        # Sent outcomes noted by the lanes and the task writing them (postgres_lanes).
        self._sent: list[tuple[int, float]] = []
        # Deliveries noted sent whose outcome is not written yet: a claim passes over them.
        self._unwritten: set[int] = set()
        self._sent_writer: asyncio.Task[None] | None = None

    async def open(self, *, serving: bool) -> None:
        size = self.pool_size if serving else 1
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                reset=_keep_session,
                server_settings={"application_name": "jobserv-bridge"},
            )
            async with self._pool.acquire() as connection:
                await migrate(connection)
        except StoreUnavailable:
            await self.close()
            raise
        except (*_ERRORS, ValueError) as exc:
            await self.close()
            raise StoreUnavailable(
                f"cannot open the PostgreSQL store {self.where}: {exc}"
            ) from None
        except Exception as exc:
            await self.close()
            raise pg_unavailable(f"cannot open the PostgreSQL store {self.where}", exc) from None

    async def _before_close(self) -> None:
        """What must be written before the pool closes (the lanes' outcomes)."""

    async def close(self) -> None:
        if self._pool is not None:
            await self._before_close()
        await self._wakeups.close()
        await self._lanes.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except Exception:
                pool.terminate()  # gone or stuck: close the sockets without a goodbye
            except asyncio.CancelledError:
                pool.terminate()
                raise

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        try:
            async with self._pool.acquire() as connection:
                yield connection
        except Exception as exc:
            # The pool closes a connection that fails its release, so the next call
            # gets a sound one: the store recovers once the server is back.
            raise pg_unavailable("store error", exc) from None

    async def _run(self, work: Callable[[Any], Awaitable[T]], *, transaction: bool = False) -> T:
        async with self._connection() as connection:
            if not transaction:
                return await work(connection)
            async with connection.transaction():
                return await work(connection)

    async def _execute(self, query: str, *args: object) -> int:
        async def work(c: Any) -> int:
            return row_count(await c.execute(query, *args))

        return await self._run(work)

    async def _notify(self, channel: str, payload: str) -> None:
        await self._execute("SELECT pg_notify($1, $2)", channel, payload)

    # -- the store interface --------------------------------------------------

    def on_queued(self, wake: Callable[[list[str]], None]) -> None:
        self._wakeups.wake = wake

    def announce_queued(self, destinations: list[str]) -> None:
        self._wakeups.announce(destinations)


def stored_transition(stored: str | None) -> Transition | None:
    return None if stored is None else Transition.from_dict(json.loads(stored))


class _LaneLocks:
    """The lanes this process owns: advisory locks held on one connection of its own.

    Not a pool connection: a pool resets released connections, and that unlocks all.
    """

    def __init__(self, url: str, where: str, on_connect: Callable[[Any], Awaitable[None]]) -> None:
        self.url = url
        self.where = where
        self.on_connect = on_connect  # each new connection: listen to the other replicas
        self.held: set[str] = set()
        self.fresh: set[str] = set()  # taken, their old claims not yet released
        self._connection: Any = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    async def hold(self, name: str) -> bool:
        """Whether this process holds lane `name`; takes it when it is free."""
        async with self._lock:
            try:
                connection = await self._connect()
                if name in self.held:
                    if time.monotonic() - self._checked > LANE_CHECK_INTERVAL:
                        await asyncio.wait_for(connection.fetchval("SELECT 1"), LANE_CHECK_TIMEOUT)
                        self._checked = time.monotonic()
                    return True
                taken = await asyncio.wait_for(
                    connection.fetchval(
                        "SELECT pg_try_advisory_lock($1, hashtext($2))", LANE_LOCK_CLASS, name
                    ),
                    LANE_CHECK_TIMEOUT,
                )
            except Exception as exc:
                self._lose()
                raise pg_unavailable(f"lost the lanes' connection to {self.where}", exc) from None
            if taken:
                self.held.add(name)
                self.fresh.add(name)
            return bool(taken)

    async def drop(self, name: str) -> None:
        async with self._lock:
            if name not in self.held:
                return
            self.held.discard(name)
            self.fresh.discard(name)
            connection = self._connection
            if connection is None or connection.is_closed():
                return
            try:
                await asyncio.wait_for(
                    connection.fetchval(
                        "SELECT pg_advisory_unlock($1, hashtext($2))", LANE_LOCK_CLASS, name
                    ),
                    LANE_CHECK_TIMEOUT,
                )
            except Exception:
                self._lose()  # closing the connection lets go of every lane it held

    async def close(self) -> None:
        async with self._lock:
            connection, self._connection = self._connection, None
            self.held.clear()
            self.fresh.clear()
            if connection is not None and not connection.is_closed():
                try:
                    await asyncio.wait_for(connection.close(), LANE_CHECK_TIMEOUT)
                except Exception:
                    connection.terminate()
                except asyncio.CancelledError:
                    connection.terminate()
                    raise

    async def _connect(self) -> Any:
        connection = self._connection
        if connection is not None and connection.is_closed():
            self._lose()
            connection = None
        if connection is None:
            # Says which replica holds which lane, in pg_stat_activity (63 characters at most).
            name = f"jobserv-bridge lanes {os.getpid()}@{socket.gethostname()}"
            connection = await asyncpg.connect(
                self.url,
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": name[:63], **LANE_KEEPALIVE},
            )
            try:
                await self.on_connect(connection)
            except BaseException:
                connection.terminate()
                raise
            self._connection = connection
            self._checked = time.monotonic()
        return connection

    def _lose(self) -> None:
        """The connection is gone or not to be trusted: so are the lanes it held."""
        connection, self._connection = self._connection, None
        self.held.clear()
        self.fresh.clear()
        if connection is not None:
            connection.terminate()
