"""A failure that repeats at each poll, logged as news: one warning when it starts, then at
most one a `interval`, and a word when it is over (not a traceback at every poll)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bridge.logs import one_line

REPEAT_INTERVAL = 60.0


class FailureLog:
    def __init__(
        self,
        log: logging.Logger,
        what: str,
        interval: float = REPEAT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what = what  # e.g. "lane chat: store error"
        self.interval = interval
        self.clock = clock
        self.failures = 0  # in a row
        self._unsaid = 0  # failures since the last warning
        self._said_at = 0.0

    def failed(self, exc: BaseException) -> None:
        """Count a failure; warn at the first and at most once an interval after it."""
        self.failures += 1
        now = self.clock()
        error = one_line(f"{type(exc).__name__}: {exc}")
        if self.failures == 1:
            self.log.warning("%s, trying again shortly: %s", self.what, error)
        elif now - self._said_at >= self.interval:
            repeats = f"{self._unsaid + 1} times in {now - self._said_at:.0f}s"
            self.log.warning("%s, still failing (%s): %s", self.what, repeats, error)
        else:
            self._unsaid += 1
            self.log.debug("%s: %s", self.what, error, exc_info=exc)
            return
        self._said_at = now
        self._unsaid = 0
        self.log.debug("%s: the traceback", self.what, exc_info=exc)

    def succeeded(self) -> None:
        """Say once that the failing is over."""
        if self.failures:
            self.log.info("%s: recovered after %d failures in a row", self.what, self.failures)
        self.failures = 0
        self._unsaid = 0
