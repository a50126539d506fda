"""HTTP for ingestion: httpx with timeouts, retries with back-off, a concurrency limit, a user agent
and a cap on response size. Failures become ``FetchError`` with a reason a person can act on.

Feeds decide what gets fetched (article links, redirects), so every request is guarded against
server-side request forgery: only http(s), and no loopback, private, link-local (cloud metadata),
multicast or otherwise non-public address, checked on the address the connection actually uses
after DNS resolution (so a name that resolves to ``127.0.0.1``, or is re-pointed there between a
check and the connect, is refused too). ``FetchOptions.allow_private`` (``--allow-private-addresses``)
lifts the address rule for local test servers and intranet feeds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from llmapps.errors import BackendError
from llmapps.ingest.models import safe_http_url

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class FetchError(BackendError):
    """One URL could not be fetched; ``reason`` is the short form used in source reports."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


class FetchOptions(BaseModel):
    """How ingestion talks HTTP. Defaults come from ``settings.ingest`` (see ``from_settings``)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(10.0, gt=0, description="connect/read/write timeout of one request")
    total_timeout_s: float | None = Field(
        None, gt=0, description="whole request incl. body; default 3x timeout_s"
    )
    retries: int = Field(
        2, ge=0, le=10, description="extra attempts after 5xx, 429, timeouts, network errors"
    )
    backoff_s: float = Field(0.5, ge=0, description="first back-off; doubles per attempt")
    max_backoff_s: float = Field(
        30.0, ge=0, description="cap on back-off, also on a server's Retry-After"
    )
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight at once")
    user_agent: str = Field("llmapps-news/0.1", min_length=1)
    max_response_bytes: int = Field(5_000_000, ge=1, description="larger bodies are rejected")
    max_redirects: int = Field(5, ge=0, le=20)
    allow_private: bool = Field(
        False,
        description="also fetch loopback, private, link-local and other non-public addresses "
        "(local test servers, intranet feeds); off, they are refused after DNS resolution",
    )

    @classmethod
    def from_settings(cls, **overrides: Any) -> FetchOptions:
        """Options from ``settings.ingest`` with ``overrides`` (None values ignored) on top."""
        from llmapps.settings import get_settings

        s = get_settings().ingest
        base: dict[str, Any] = {
            "timeout_s": s.timeout_s,
            "retries": s.retries,
            "concurrency": s.concurrency,
            "user_agent": s.user_agent,
            "max_response_bytes": s.max_response_bytes,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(base)


@dataclass
class Fetched:
    """A successful response: the final URL (after redirects), status, headers and body."""

    url: str
    status: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


_BLOCKED = "llmapps-blocked: "


def blocked_address(address: str) -> str | None:
    """Why ``address`` (an IP literal) may not be fetched, or None when it is a public address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    for kind, bad in (
        ("loopback", ip.is_loopback),
        ("link-local (where cloud metadata services live)", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not public", not ip.is_global),
    ):
        if bad:
            return f"the address {ip} is {kind}"
    return None


def _host_refusal(host: str) -> str | None:
    """A reason to refuse ``host`` before resolving it (IP literals and localhost names)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host} is loopback"
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None
    return blocked_address(name)


class _GuardedBackend:
    """httpcore network backend: resolve, refuse non-public addresses, connect to the checked one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, **kw: Any
    ) -> Any:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            import httpcore

            raise httpcore.ConnectError(f"cannot resolve {host}: {err}") from err
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            reason = blocked_address(address)
            if reason is not None:
                import httpcore

                raise httpcore.ConnectError(
                    f"{_BLOCKED}{host} resolves to {address}: {reason.split(' is ', 1)[1]}"
                )
        return await self.inner.connect_tcp(addresses[0], port, timeout=timeout, **kw)

    def __getattr__(self, name: str) -> Any:  # sleep, connect_unix_socket
        return getattr(self.inner, name)


def _refuse(reason: str) -> str:
    return f"refused: {reason} (server-side request forgery guard; pass --allow-private-addresses to fetch it)"


class Fetcher:
    """An async HTTP client shared by every request of one ingestion run.

    Use as ``async with Fetcher(options) as f: await f.get(url)``. At most
    ``options.concurrency`` requests run at once, across all sources.
    """

    def __init__(
        self,
        options: FetchOptions | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = options or FetchOptions()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._sem = asyncio.Semaphore(self.options.concurrency)
        self.requests = 0

    async def _check_request(self, request: httpx.Request) -> None:
        """Every request, redirects included: http(s) only, and no non-public host literal."""
        url = str(request.url)
        if request.url.scheme not in ("http", "https"):
            raise FetchError(url, f"refused: {request.url.scheme!r} is not http(s)")
        if not self.options.allow_private:
            reason = _host_refusal(request.url.host)
            if reason is not None:
                raise FetchError(url, _refuse(reason))

    async def __aenter__(self) -> Fetcher:
        o = self.options
        transport = self._transport
        if transport is None:
            transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=o.concurrency))
            pool = getattr(transport, "_pool", None)
            if not o.allow_private and pool is not None and hasattr(pool, "_network_backend"):
                pool._network_backend = _GuardedBackend(pool._network_backend)
            elif not o.allow_private:  # pragma: no cover - an httpcore without the hook point
                raise RuntimeError("this httpcore cannot be guarded; upgrade httpx/httpcore")
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(o.timeout_s),
            follow_redirects=True,
            max_redirects=o.max_redirects,
            headers={"User-Agent": o.user_agent, "Accept-Encoding": "gzip, deflate"},
            limits=httpx.Limits(max_connections=o.concurrency),
            transport=transport,
            trust_env=False,  # no proxies or .netrc picked up behind the user's back
            event_hooks={"request": [self._check_request]},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def get(
        self,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        accept: str | None = None,
    ) -> Fetched:
        """GET ``url`` with retries; raise ``FetchError`` with the reason when it cannot be had."""
        if safe_http_url(url) is None:
            raise FetchError(url, "not an http(s) URL")
        if self._client is None:
            raise RuntimeError("use Fetcher as 'async with Fetcher(...) as f'")
        o = self.options
        hdrs = dict(headers or {})
        if accept:
            hdrs["Accept"] = accept
        last = "no attempt made"
        for attempt in range(o.retries + 1):
            retry_after: float | None = None
            try:
                async with self._sem:
                    self.requests += 1
                    return await asyncio.wait_for(
                        self._once(url, params, hdrs), o.total_timeout_s or 3 * o.timeout_s
                    )
            except _Retryable as err:
                last, retry_after = err.reason, err.retry_after
            except (httpx.TimeoutException, asyncio.TimeoutError):
                last = f"timed out after {o.timeout_s:g} s"
            except httpx.TooManyRedirects:
                raise FetchError(url, f"too many redirects (more than {o.max_redirects})") from None
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as err:
                raise FetchError(
                    url, f"invalid or unsupported address after redirects ({err})"
                ) from None
            except httpx.TransportError as err:
                if str(err).startswith(_BLOCKED):
                    raise FetchError(url, _refuse(str(err)[len(_BLOCKED) :])) from None
                last = f"network error: {type(err).__name__}: {err}".rstrip(": ")
            except httpx.HTTPError as err:  # anything else httpx reports is not worth retrying
                raise FetchError(url, f"{type(err).__name__}: {err}") from None
            if attempt < o.retries:
                delay = min(
                    o.max_backoff_s,
                    retry_after if retry_after is not None else o.backoff_s * 2**attempt,
                )
                log.info("retrying %s in %.2f s after: %s", url, delay, last)
                await asyncio.sleep(delay)
        tries = o.retries + 1
        raise FetchError(url, f"{last} ({tries} attempt{'s' if tries > 1 else ''})")

    async def _once(
        self, url: str, params: dict[str, Any] | None, headers: dict[str, str]
    ) -> Fetched:
        assert self._client is not None
        limit = self.options.max_response_bytes
        async with self._client.stream("GET", url, params=params, headers=headers) as resp:
            if resp.status_code in RETRY_STATUS:
                raise _Retryable(
                    f"HTTP {resp.status_code} {resp.reason_phrase}".strip(),
                    _retry_after(resp.headers.get("retry-after")),
                )
            if resp.status_code >= 400:
                raise FetchError(url, f"HTTP {resp.status_code} {resp.reason_phrase}".strip())
            final = str(resp.url)
            if safe_http_url(final) is None:
                raise FetchError(url, f"redirected to a non-http(s) address {final!r}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise FetchError(
                    url, f"response of {int(declared)} bytes is over the {limit}-byte limit"
                )
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise FetchError(url, f"response is over the {limit}-byte limit")
                chunks.append(chunk)
            return Fetched(
                final,
                resp.status_code,
                b"".join(chunks),
                {k.lower(): v for k, v in resp.headers.items()},
            )


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: fall back to our own back-off
        return None
