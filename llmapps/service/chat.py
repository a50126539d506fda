"""``ServiceChatModel``: ``ChatOpenAI`` with counted retries, a token limit, cost and
capability-aware structured output; caching and request limits through LangChain's own hooks.

Each call goes: LangChain's ``cache=`` (``cache_path`` opens our SQLite ``ResponseCache``; any
``BaseCache`` works, and this model counts its hits) -> LangChain's ``rate_limiter=`` (``rpm``
makes our ``RateLimiter``; any ``BaseRateLimiter`` works) -> a slot of ``max_inflight`` -> the
tokens-per-minute limit (the LangChain hook carries no token count) -> the endpoint, retried with
exponential backoff and jitter on 429, 5xx, connect timeouts, dropped connections and unreadable
bodies (``Retry-After`` honoured). A request that was sent and timed out is not retried (unless
``retry_timeouts``): a self-hosted server may still be computing it, and the retry would queue the
same work behind it. The openai client's own retries are off so every retry is counted here.
Token usage and cost (from a per-model price table) land in the message's ``response_metadata``
and in ``ServiceStats``.

Structured output, capability-aware: given a ``response_format`` (a JSON schema), the first call
to an endpoint+model tries, in turn, ``json_schema``, ``json_object`` (with the schema, which
llama.cpp's servers use to constrain the output) and plain text; a level counts as refused when the
endpoint answers 4xx (other than 401/403/404/408/409/429), or a 5xx whose body names
``response_format``/``json_schema`` (llama-cpp-python's server answers 500). The level that worked
is remembered for that endpoint+model in this process (``structured_support``), so later calls
and other instances send it straight away; the first call holds a per-endpoint lock while it
decides, so a concurrent batch probes once. Real transient faults (429, other 5xx, timeouts) are
retried as usual and never taken for a refusal. Each fallback is counted in ``ServiceStats``
and the level used is in each message's ``response_metadata["structured_output"]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import openai
from langchain_core.caches import BaseCache
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import Field, PrivateAttr, SecretStr, model_validator

from llmapps.errors import BackendError, ConfigError
from llmapps.service.cache import CountedCache, open_cache
from llmapps.service.limits import RateLimiter, RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# 4xx answers that say nothing about response_format (auth, unknown model, retry later, too big)
_NOT_A_FORMAT_REFUSAL = frozenset({401, 403, 404, 408, 409, 413, 429})
_FORMAT_WORDS = ("response_format", "json_schema", "json_object")
STRUCTURED_LEVELS = ("json_schema", "json_object", "text")


class _Capabilities:
    """Which structured-output level each endpoint+model accepts, decided once per process."""

    def __init__(self) -> None:
        self._levels: dict[tuple[str, str], str] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            return self._levels.get(key)

    def set(self, key: tuple[str, str], level: str) -> None:
        with self._lock:
            self._levels[key] = level

    def deciding(self, key: tuple[str, str]) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self) -> None:
        with self._lock:
            self._levels.clear()


_CAPABILITIES = _Capabilities()


def structured_support(endpoint: str, model: str) -> str | None:
    """The structured-output level remembered for ``endpoint`` + ``model`` (None: not tried)."""
    return _CAPABILITIES.get((endpoint, model))


def forget_structured_support() -> None:
    """Forget every endpoint's structured-output decision (the next call probes again)."""
    _CAPABILITIES.forget()


def structured_payload(level: str, fmt: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` to send at ``level`` for a ``json_schema`` format (None: text)."""
    if level == "json_schema":
        return fmt
    if level == "json_object":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return {"type": "json_object", **({"schema": schema} if schema else {})}
    return None


@dataclass
class ServiceStats:
    """Counters of one model's calls (thread-safe), for reports and tests."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    structured_fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    rate_limited_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
        d["cost_usd"] = round(d["cost_usd"], 8)
        return d


def call_cost(model: str, input_tokens: int, output_tokens: int, prices: dict[str, Any]) -> float:
    """Dollars for one call from a ``{model: {input_per_1m, output_per_1m}}`` table (0 if unlisted).

    A dated model id (``gpt-4o-mini-2024-07-18``) is priced as its longest listed prefix.
    """
    price = prices.get(model)
    if price is None:
        keys = [k for k in prices if model.startswith(k)]
        price = prices[max(keys, key=len)] if keys else None
    if price is None:
        return 0.0
    p = price if isinstance(price, dict) else price.model_dump()
    return (
        input_tokens * p.get("input_per_1m", 0.0) + output_tokens * p.get("output_per_1m", 0.0)
    ) / 1e6


class _Retryable(Exception):
    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.retry_after = retry_after


class _FormatRefused(Exception):
    """The endpoint refused the response_format sent (not a transient fault)."""


def _refuses_format(err: Exception) -> bool:
    if not isinstance(err, openai.APIStatusError):
        return False
    status = err.status_code
    if 400 <= status < 500:
        return status not in _NOT_A_FORMAT_REFUSAL
    if status >= 500:
        body = f"{err.message} {err.body} {getattr(err.response, 'text', '')}".lower()
        return any(w in body for w in _FORMAT_WORDS)
    return False


# Timeouts before the request left this process: retrying cannot double the server's work.
_NOT_SENT = (httpx.ConnectTimeout, httpx.PoolTimeout)


class ServiceChatModel(ChatOpenAI):  # type: ignore[override]
    """An OpenAI-compatible chat endpoint with caching, rate limits, counted retries and cost.

    Example:
        >>> llm = ServiceChatModel(model="gpt-4o-mini", base_url="http://127.0.0.1:8000/v1",
        ...     api_key="sk-...", cache_path=None, retries=3, rpm=60)  # doctest: +SKIP
        >>> llm.batch(["Hi", "Hello"], config={"max_concurrency": 8})  # doctest: +SKIP
    """

    retries: int = Field(4, ge=0, description="retries after the first attempt")
    retry_timeouts: bool = Field(
        False,
        description="retry a request that was sent and timed out: only for an endpoint that "
        "cancels the work of a client that hung up (a connect timeout is always retried)",
    )
    backoff_base: float = Field(0.5, gt=0.0, description="first backoff in seconds (doubles)")
    backoff_max: float = Field(20.0, gt=0.0)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_inflight: int | None = Field(None, ge=1, description="requests in flight across threads")
    cache_path: str | None = Field(
        None, description="SQLite response cache file (sets cache=); None: cache= as given"
    )
    prices: dict[str, Any] = Field(default_factory=dict)
    structured_format: dict[str, Any] | None = Field(
        None, description="response_format sent when the endpoint supports it"
    )
    structured_required: bool = Field(
        False, description="an endpoint that takes neither json_schema nor json_object is an error"
    )

    _stats: ServiceStats = PrivateAttr(default_factory=ServiceStats)
    _limiter: RateLimiter | None = PrivateAttr(default=None)
    _sem: threading.BoundedSemaphore | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _no_client_retries(cls, values: Any) -> Any:
        # The openai client retries silently; ours are counted and honour Retry-After themselves.
        if isinstance(values, dict):
            values = {**values, "max_retries": 0}
        return values

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if self.rpm and self.rate_limiter is not None:
            raise ConfigError("give ServiceChatModel rpm= or rate_limiter=, not both")
        if self.cache_path and isinstance(self.cache, BaseCache):
            raise ConfigError("give ServiceChatModel cache_path= or cache=, not both")
        self._limiter = RateLimiter(self.rpm, self.tpm)
        if self.rpm:
            self.rate_limiter = self._limiter  # LangChain calls it once per uncached request
        self._sem = threading.BoundedSemaphore(self.max_inflight) if self.max_inflight else None
        inner = open_cache(Path(self.cache_path)) if self.cache_path else self.cache
        if isinstance(inner, BaseCache) and not isinstance(inner, CountedCache):
            self.cache = CountedCache(inner, lambda: self._stats.add(cache_hits=1))

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """No: ``ChatOpenAI``'s namespace would make ``dumpd`` claim a class ``load`` cannot
        rebuild (it is in no LangChain mapping), and its cache file and limits are this process's."""
        return False

    @property
    def _llm_type(self) -> str:
        return "llmapps-service"

    @property
    def stats(self) -> ServiceStats:
        # request waits happen in LangChain's hook; a limiter shared by models reports its total
        ours = {id(x): x for x in (self._limiter, self.rate_limiter) if isinstance(x, RateLimiter)}
        self._stats.rate_limited_s = sum(x.waited_s for x in ours.values())
        return self._stats

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # part of LangChain's cache key: the same model name on two endpoints is two models
        return {
            **super()._identifying_params,
            "endpoint": self.endpoint,
            "structured_format": self.structured_format,
        }

    @property
    def endpoint(self) -> str:
        return str(self.openai_api_base or "https://api.openai.com/v1")

    # ------------------------------------------------------------------ helpers

    def _scrub(self, text: str) -> str:
        secret = self.openai_api_key
        key = secret.get_secret_value() if isinstance(secret, SecretStr) else ""
        return text.replace(key, "***") if key and len(key) >= 4 else text

    def _structured_kwargs(self, kwargs: dict[str, Any], level: str) -> dict[str, Any]:
        fmt = structured_payload(level, self.structured_format) if self.structured_format else None
        if fmt is None:
            return kwargs
        # sent through extra_body so ChatOpenAI keeps its plain create() path and its text output
        extra = {**(kwargs.get("extra_body") or {}), "response_format": fmt}
        return {**kwargs, "extra_body": extra}

    @property
    def _capability_key(self) -> tuple[str, str]:
        return (self.endpoint, self.model_name)

    def _take_tokens(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> None:
        """Wait until this request's estimated tokens fit ``tpm`` (the payload is built only
        when a ``tpm`` is set: ChatOpenAI builds it again to send it)."""
        if not self.tpm or self._limiter is None:
            return
        payload = self._get_request_payload(messages, stop=stop, **kwargs)
        chars = sum(len(str(m.get("content", ""))) for m in payload.get("messages", []))
        budget = payload.get("max_completion_tokens") or payload.get("max_tokens") or 256
        self._limiter.take_tokens(chars // 4 + int(budget))

    def _classify(self, err: Exception) -> Exception:
        """A ``_Retryable`` for transient faults, else a ``BackendError`` saying what to do."""
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            if status in RETRY_STATUS:
                return _Retryable(
                    f"HTTP {status}", parse_retry_after(err.response.headers.get("retry-after"))
                )
            if status in (401, 403):
                return BackendError(
                    f"{self.endpoint} refused the API key (HTTP {status}): set "
                    "LLMAPPS_SERVICE__API_KEY or OPENAI_API_KEY to a valid key"
                )
            return BackendError(
                f"{self.endpoint} rejected the request (HTTP {status}): {self._scrub(err.message)}"
            )
        if isinstance(err, openai.APITimeoutError):
            if self.retry_timeouts or isinstance(err.__cause__, _NOT_SENT):
                return _Retryable(f"timed out after {self.request_timeout}s")
            # Sent and not answered in time: a self-hosted server may still be computing it, and
            # a retry would queue the same work behind it (issue 22: 4 of 4 articles lost so).
            return BackendError(
                f"{self.endpoint} did not answer within {self.request_timeout}s; not retried, as "
                "the server may still be computing it. Raise the timeout (LLMAPPS_SERVICE__TIMEOUT "
                "or --set timeout=SECONDS) or lower max_concurrency"
            )
        if isinstance(err, openai.APIConnectionError):
            return _Retryable(f"connection failed: {type(err.__cause__ or err).__name__}")
        if isinstance(err, (json.JSONDecodeError, openai.APIResponseValidationError)) or (
            isinstance(err, ValueError) and "Unexpected response type" in str(err)
        ):
            return _Retryable("unreadable response body")
        return err

    def _call(self, fn: Any, *, structured: bool = False) -> Any:
        policy = RetryPolicy(self.retries, self.backoff_base, self.backoff_max)
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as err:
                if structured and _refuses_format(err):
                    status = getattr(err, "status_code", "?")
                    raise _FormatRefused(f"HTTP {status}: {self._scrub(str(err))[:200]}") from None
                kind = self._classify(err)
                if not isinstance(kind, _Retryable):
                    self._stats.add(failures=1)
                    if kind is err:
                        raise
                    raise kind from None  # the cause may quote request headers
                attempt += 1
                if attempt > policy.max_retries:
                    self._stats.add(failures=1)
                    raise BackendError(
                        f"{self.endpoint} failed {attempt} times ({kind}); the last error is "
                        f"final. Retry later, lower max_concurrency or rpm, or raise the retries"
                    ) from None
                delay = policy.delay(attempt, kind.retry_after)
                self._stats.add(retries=1)
                log.info(
                    "%s: %s; retry %d/%d in %.2fs",
                    self.endpoint,
                    kind,
                    attempt,
                    policy.max_retries,
                    delay,
                )
                time.sleep(delay)

    # ------------------------------------------------------------------ LangChain hooks

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.structured_format is None:
            return self._generate_at("text", messages, stop, run_manager, kwargs)
        key = self._capability_key
        level = _CAPABILITIES.get(key)
        if level is not None:
            self._check_level(level)
            return self._generate_at(level, messages, stop, run_manager, kwargs)
        with _CAPABILITIES.deciding(key):  # one probe per endpoint+model, even in a batch
            level = _CAPABILITIES.get(key)
            if level is not None:
                self._check_level(level)
                return self._generate_at(level, messages, stop, run_manager, kwargs)
            for n, level in enumerate(STRUCTURED_LEVELS):
                if level == "text" and self.structured_required:
                    _CAPABILITIES.set(key, level)
                    self._check_level(level)
                if n and self.rate_limiter is not None:  # each probe is one more request
                    self.rate_limiter.acquire(blocking=True)
                try:
                    result = self._generate_at(level, messages, stop, run_manager, kwargs)
                except _FormatRefused as why:
                    self._stats.add(structured_fallbacks=1)
                    log.info(
                        "%s (%s) refused response_format %s (%s); trying the next level",
                        self.endpoint,
                        self.model_name,
                        level,
                        why,
                    )
                    continue
                _CAPABILITIES.set(key, level)
                if level != STRUCTURED_LEVELS[0]:
                    log.info(
                        "%s (%s): structured output falls back to %s",
                        self.endpoint,
                        self.model_name,
                        level,
                    )
                return result
        raise AssertionError("the text level sends no response_format and cannot be refused")

    def _check_level(self, level: str) -> None:
        if level == "text" and self.structured_required:
            raise BackendError(
                f"{self.endpoint} ({self.model_name}) takes neither response_format json_schema "
                "nor json_object, and structured output is required (structured=on); use "
                "structured=auto to fall back to text, or an endpoint that constrains replies"
            )

    def _generate_at(
        self,
        level: str,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> ChatResult:
        call_kwargs = self._structured_kwargs(kwargs, level)
        sem = self._sem
        if sem is not None:
            sem.acquire()
        try:
            self._take_tokens(messages, stop, call_kwargs)

            def once() -> ChatResult:
                return super(ServiceChatModel, self)._generate(
                    messages, stop, run_manager, **call_kwargs
                )

            result = self._call(once, structured=call_kwargs is not kwargs)
        finally:
            if sem is not None:
                sem.release()
        if self.structured_format is not None:
            msg = result.generations[0].message
            msg.response_metadata = {**msg.response_metadata, "structured_output": level}
        return self._account(result)

    def _account(self, result: ChatResult) -> ChatResult:
        gen = result.generations[0]
        msg = gen.message
        usage = getattr(msg, "usage_metadata", None) or {}
        n_in, n_out = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
        cost = call_cost(self.model_name, n_in, n_out, self.prices)
        msg.response_metadata = {**msg.response_metadata, "cost_usd": cost, "cached": False}
        self._stats.add(calls=1, input_tokens=n_in, output_tokens=n_out, cost_usd=cost)
        return result

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        # one code path (token limit, counted retries) for sync and async callers; LangChain's
        # async path has already looked up the cache and awaited the rate limiter
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # Streams are limited (LangChain's stream() has awaited rate_limiter) and counted, but not
        # retried once text has flowed.
        self._take_tokens(messages, stop, kwargs)
        try:
            yield from super()._stream(messages, stop, run_manager, **kwargs)
        except Exception as err:
            kind = self._classify(err)
            self._stats.add(failures=1)
            if isinstance(kind, _Retryable):
                raise BackendError(f"{self.endpoint} stream failed: {kind}") from None
            raise kind from None
        self._stats.add(calls=1)


def check_endpoint_url(url: str | None) -> str | None:
    """Validate a ``base_url`` early, with a message saying what a good one looks like."""
    if url is None:
        return None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"base_url {url!r} is not an http(s) URL; give the API root, e.g. http://127.0.0.1:8000/v1"
        )
    return url.rstrip("/")
