"""What a request meets before any route reads it: the Host check, bearer auth and the body
size limit (``Guard``, an ASGI middleware), and the cap on prompts in flight (``Slots``)."""

from __future__ import annotations

import hmac
import threading
from typing import Any

from llmapps.serving.protocol import APIError


class Slots:
    """Prompts in flight over all requests, capped; the cap answers 429 rather than queueing.

    A request takes one slot per prompt, so a list of 256 prompts counts as 256, not 1.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def acquire(self, n: int = 1) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise APIError(
                    429,
                    f"the server is at its limit of {self.limit} prompts in flight "
                    f"({self.used} in flight, this request has {n}); retry after the delay in "
                    "Retry-After",
                    type="rate_limit_error",
                    code="too_many_requests",
                    headers={"Retry-After": "1"},
                )
            self.used += n

    def release(self, n: int = 1) -> None:
        with self._lock:
            self.used -= n


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_of(header: str) -> str:
    """The host of a Host header, without its port or IPv6 brackets, lower case."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class Guard:
    """ASGI middleware run before any route reads a body: Host check, auth, body size limit.

    Args:
        app: the ASGI app.
        max_bytes: bodies over this get 413.
        key: the API key ``/v1/*`` requires (None: open).
        allowed_hosts: Host header values answered (None: any).
    """

    def __init__(
        self, app: Any, max_bytes: int, key: str | None = None, allowed_hosts: Any = None
    ) -> None:
        self.app, self.max_bytes, self.key = app, max_bytes, key
        self.allowed = None if allowed_hosts is None else {host_of(h) for h in allowed_hosts}

    def _refusal(self, scope: Any) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        if self.allowed is not None and host is not None:
            name = host_of(host.decode("latin-1"))
            if name not in self.allowed:
                return APIError(
                    400,
                    f"this server does not answer to the host {name[:80]!r}; call it as "
                    f"{sorted(self.allowed)[0]} or start it with --allowed-hosts",
                    code="host_not_allowed",
                )
        if self.key is not None and scope.get("path", "").startswith("/v1/"):
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("latin-1"), self.key.encode()
            ):
                return APIError(
                    401,
                    "missing or invalid API key: send the header 'Authorization: Bearer <key>' "
                    "with the key the server was started with",
                    code="invalid_api_key",
                )
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = APIError(
            413,
            f"request body larger than {self.max_bytes} bytes; send less text",
            code="request_too_large",
        )
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_big.response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:  # buffer (bounded) so a chunked body cannot slip past the limit
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await too_big.response()(scope, receive, send)
                return
        body, sent = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
