"""Rate limits (requests and tokens per minute) and retries with exponential backoff and jitter."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from langchain_core.rate_limiters import BaseRateLimiter

from llmapps.errors import ConfigError


class RateLimiter(BaseRateLimiter):
    """Sliding one-minute windows over requests and tokens, shared by every thread of a batch.

    It is a LangChain ``BaseRateLimiter``: pass it as a chat model's ``rate_limiter=`` and
    LangChain calls ``acquire()`` once per request that misses the cache, which spaces requests
    to ``rpm``. That hook carries no token count, so the token limit is ``take_tokens(n)``, which
    ``ServiceChatModel`` calls with each request's estimate. A request larger than the whole token
    limit is refused at once rather than waiting forever.

    ``clock`` (default ``time.monotonic``) and ``sleep`` are injectable: given a ``sleep``, the
    limiter waits by calling it (outside its lock) instead of on its condition, so a test can
    drive a fake clock and assert exact waits without sleeping.

    Example:
        >>> limiter = RateLimiter(rpm=60)
        >>> ServiceChatModel(model="gpt-4o-mini", rate_limiter=limiter)  # doctest: +SKIP
    """

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._requests: deque[float] = deque()
        self._token_events: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self._cond = threading.Condition()
        self.waited_s = 0.0

    def _expire(self, now: float) -> None:
        while self._requests and now - self._requests[0] >= self.window_s:
            self._requests.popleft()
        while self._token_events and now - self._token_events[0][0] >= self.window_s:
            _, n = self._token_events.popleft()
            self._tokens -= n

    def _request_wait(self, now: float) -> float:
        if not self.rpm or len(self._requests) < self.rpm:
            return 0.0
        return self._requests[len(self._requests) - self.rpm] + self.window_s - now

    def _token_wait(self, now: float, tokens: int) -> float:
        if not self.tpm or self._tokens + tokens <= self.tpm:
            return 0.0
        over, freed = self._tokens + tokens - self.tpm, 0
        for ts, n in self._token_events:
            freed += n
            if freed >= over:
                return ts + self.window_s - now
        return 0.0

    def _wait_for(
        self, wait: Callable[[float], float], take: Callable[[float], None], blocking: bool
    ) -> float | None:
        """Block until ``wait(now)`` is 0, then ``take(now)``; the seconds waited (None: busy)."""
        started = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                self._expire(now)
                left = wait(now)
                if left <= 0:
                    take(now)
                    break
                if not blocking:
                    return None
                if self._sleep is None:
                    self._cond.wait(timeout=min(left, self.window_s))
                else:
                    self._cond.release()
                    try:
                        self._sleep(min(left, self.window_s))
                    finally:
                        self._cond.acquire()
        waited = self._clock() - started
        self.waited_s += waited
        return waited

    def acquire(self, *, blocking: bool = True) -> bool:
        """One more request within ``rpm`` (LangChain's hook); False if busy and not blocking."""
        if not self.rpm:
            return True
        return self._wait_for(self._request_wait, self._requests.append, blocking) is not None

    async def aacquire(self, *, blocking: bool = True) -> bool:
        """``acquire`` for async callers: waits in a worker thread, not on the event loop."""
        if not self.rpm:
            return True
        if not blocking:
            return self.acquire(blocking=False)
        return await asyncio.to_thread(self.acquire)

    def take_tokens(self, tokens: int) -> float:
        """Wait until ``tokens`` more fit ``tpm`` in the window; return the seconds waited."""
        if not self.tpm:
            return 0.0
        if tokens > self.tpm:
            raise ConfigError(
                f"one request needs ~{tokens} tokens, more than the whole limit of tpm={self.tpm}; "
                "raise tpm or lower max_new_tokens"
            )

        def take(now: float) -> None:
            self._token_events.append((now, tokens))
            self._tokens += tokens

        waited = self._wait_for(lambda now: self._token_wait(now, tokens), take, True)
        return waited or 0.0


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
