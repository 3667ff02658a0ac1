"""A lane's rate limit: a token bucket."""

from __future__ import annotations

import time


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

    def ready_in(self) -> float:
        """How long until a token is there, taking none."""
        if self.rate <= 0:
            return 0.0
        elapsed = time.monotonic() - self.updated
        tokens = min(self.burst, self.tokens + elapsed * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def empty(self) -> None:
        """Start again with no token: the next message waits 1/rate."""
        self.tokens = 0.0
        self.updated = time.monotonic()
