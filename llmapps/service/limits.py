"""Rate limits (requests and tokens per minute) and retries with exponential backoff and jitter."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llmapps.errors import ConfigError


class RateLimiter:
    """Sliding one-minute window over requests and tokens, shared by every thread of a batch.

    ``acquire(tokens)`` blocks until one more request of ``tokens`` fits both limits. A request
    larger than the whole token limit is refused at once rather than waiting forever.

    ``clock`` (default ``time.monotonic``) and ``sleep`` are injectable: given a ``sleep``, the
    limiter waits by calling it (outside its lock) instead of on its condition, so a test can
    drive a fake clock and assert exact waits without sleeping.
    """

    def __init__(
        self, rpm: int | None = None, tpm: int | None = None, *, window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self._cond = threading.Condition()
        self.waited_s = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.rpm or self.tpm)

    def _expire(self, now: float) -> None:
        while self._events and now - self._events[0][0] >= self.window_s:
            _, n = self._events.popleft()
            self._tokens -= n

    def _wait_time(self, now: float, tokens: int) -> float:
        waits = [0.0]
        if self.rpm and len(self._events) >= self.rpm:
            waits.append(self._events[len(self._events) - self.rpm][0] + self.window_s - now)
        if self.tpm and self._tokens + tokens > self.tpm:
            over, freed = self._tokens + tokens - self.tpm, 0
            for ts, n in self._events:
                freed += n
                if freed >= over:
                    waits.append(ts + self.window_s - now)
                    break
        return max(waits)

    def acquire(self, tokens: int = 0) -> float:
        """Wait until a request of ``tokens`` fits; return the seconds waited."""
        if not self.enabled:
            return 0.0
        if self.tpm and tokens > self.tpm:
            raise ConfigError(
                f"one request needs ~{tokens} tokens, more than the whole limit of tpm={self.tpm}; "
                "raise tpm or lower max_new_tokens"
            )
        started = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                self._expire(now)
                wait = self._wait_time(now, tokens)
                if wait <= 0:
                    self._events.append((now, tokens))
                    self._tokens += tokens
                    break
                if self._sleep is None:
                    self._cond.wait(timeout=min(wait, self.window_s))
                else:
                    self._cond.release()
                    try:
                        self._sleep(min(wait, self.window_s))
                    finally:
                        self._cond.acquire()
        waited = self._clock() - started
        self.waited_s += waited
        return waited


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, and ``Retry-After`` honoured when given.

    Attributes:
        max_retries: retries after the first attempt (0: no retries).
        base_delay: the first backoff in seconds; doubles each retry.
        max_delay: the cap of one backoff (and of a server's ``Retry-After``).
    """

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        # full jitter: spread retries of a batch so they do not hit the endpoint in lockstep
        return (rng or random).uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
