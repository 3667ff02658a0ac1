"""The bridge's long-lived resources: opened in order, closed in reverse, reloaded on SIGHUP.

The store, the chats' HTTP session, the failed-tests fetcher, the delivery lanes and the admin
listener each enter an `AsyncExitStack` as soon as they are open, so a failure part-way closes
what was opened, in reverse: the admin listener first, then the lanes (with the shutdown grace),
the fetcher, the session and the store last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from contextlib import AsyncExitStack

import aiohttp

from bridge.admin import AdminListener
from bridge.chats import create_chats
from bridge.config import Config, ConfigError, load_config
from bridge.delivery import Dispatcher
from bridge.failed_tests import FailedTestsFetcher
from bridge.metrics import Metrics
from bridge.redact import Redactor
from bridge.store import Store, open_store
from bridge.text import plural

log = logging.getLogger("bridge.intake")

# The sections a reload cannot change: they take effect at the next restart.
_RESTART_SECTIONS = ("server", "store", "admin")
# The chats' HTTP session has no deadline of its own: every chat call runs within its lane's
# `timeout` (bridge.delivery), and aiohttp's default 5 minutes only added a timer to each.
CHAT_SESSION_TIMEOUT = aiohttp.ClientTimeout()


class NotStarted(RuntimeError):
    """A resource was asked for before `Runtime.start` opened it."""


class Runtime:
    """The config in force and the resources serving it, from `start` to `stop`."""

    def __init__(self, config: Config, redact: Redactor | None = None) -> None:
        self.config = config
        self.redact = redact or Redactor(config.secrets())
        self.metrics = Metrics()
        self.metrics.last_reload.set(time.time())
        self._stack = AsyncExitStack()
        self._reloading = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()
        self._store: Store | None = None
        self._session: aiohttp.ClientSession | None = None
        self._dispatcher: Dispatcher | None = None
        self.admin: AdminListener | None = None  # while [admin] is enabled

    @property
    def store(self) -> Store:
        if self._store is None:
            raise NotStarted("the store is not open")
        return self._store

    @property
    def session(self) -> aiohttp.ClientSession:
        """The chats' HTTP session."""
        if self._session is None:
            raise NotStarted("the HTTP session is not open")
        return self._session

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise NotStarted("the delivery lanes are not running")
        return self._dispatcher

    async def start(self) -> None:
        """Open the resources in order; when one fails, close those opened, in reverse."""
        try:
            await self._open(self._stack)
        except BaseException:
            await self.stop()
            raise

    async def _open(self, stack: AsyncExitStack) -> None:
        config = self.config
        store = open_store(config.store, lanes=len(config.destinations))
        await store.open(serving=True)
        stack.push_async_callback(store.close)
        self._store = store
        session = aiohttp.ClientSession(timeout=CHAT_SESSION_TIMEOUT)
        stack.push_async_callback(session.close)
        self._session = session
        tests = FailedTestsFetcher(session)  # used while the config has a [jobserv] section
        stack.push_async_callback(tests.close)
        chats = create_chats(config.destinations, session)
        dispatcher = Dispatcher(config, store, chats, self.redact, self.metrics, tests)
        await dispatcher.start()
        stack.push_async_callback(dispatcher.stop, config.server.shutdown_timeout)
        self._dispatcher = dispatcher
        if config.admin.enabled:
            admin = AdminListener(config, store, dispatcher)
            await admin.start()
            stack.push_async_callback(admin.stop)
            self.admin = admin
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        stack.push_async_callback(self._stop_reloading)

    async def stop(self) -> None:
        """Close what is open, in reverse order of opening."""
        await self._stack.aclose()

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _stop_reloading(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await asyncio.gather(*self._reloads, return_exceptions=True)

    async def reload(self) -> bool:
        """Re-read the config file; keep the running config when the new one is refused."""
        async with self._reloading:
            path = self.config.path
            try:
                config = await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload of %s refused, the running config stays: %s", path, problem)
                self.metrics.reloads.labels("failure").inc()
                return False
            await self._apply(config)
            self.metrics.reloads.labels("success").inc()
            self.metrics.last_reload.set(time.time())
            log.info(
                "reloaded %s: %s, %s, %s",
                path,
                plural(len(config.sources), "source"),
                plural(len(config.destinations), "destination"),
                plural(len(config.routes), "route"),
            )
            return True

    async def _apply(self, config: Config) -> None:
        running = self.config
        for section in _RESTART_SECTIONS:
            if getattr(config, section) != getattr(running, section):
                log.warning("reload: changes to [%s] take effect at the next restart", section)
        config = dataclasses.replace(
            config, server=running.server, store=running.store, admin=running.admin
        )
        self.redact.add(config.secrets())
        chats = create_chats(config.destinations, self.session)
        grace = running.server.shutdown_timeout
        # Route with the new config before the lanes change: an event routed with the old
        # one after the removed destinations' deliveries were killed would wait forever.
        self.config = config
        await self.dispatcher.reconfigure(config, chats, grace)
