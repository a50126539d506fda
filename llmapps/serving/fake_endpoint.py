"""A scripted OpenAI-compatible chat endpoint: fixed latency and faults on demand.

Not a model: it answers ``/v1/chat/completions`` with a canned reply after ``latency_s``, so
clients can be measured (concurrency, rate limits) and their fault handling checked against a
real HTTP server on loopback. Faults are chosen by markers in the last user message, so a
concurrent batch stays deterministic:

- ``[fail:429:N]``, ``[fail:500:N]``, ``[fail:garbage:N]``, ``[fail:slow:N]``: the first ``N``
  requests with that message fail that way (429 carries ``Retry-After``; ``slow`` sleeps past the
  client's timeout; ``garbage`` is a 200 whose body is not JSON), later ones succeed.
- ``[fail:500:always]`` and the like: every request fails.

With ``supports_json_schema`` (``supports_json_object``) off, a request whose ``response_format``
is of that type gets the refusal an endpoint without it answers: HTTP ``refusal_status`` (400; 500
as llama-cpp-python's server does), its body naming ``response_format``; an accepted one gets a
JSON object as its reply.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

_MARK = re.compile(r"\[fail:(429|500|garbage|slow):(\d+|always)\]")


@dataclass
class FakeEndpointState:
    """What the endpoint saw; tests read it, and may flip ``supports_json_schema``."""

    latency_s: float = 0.0
    slow_s: float = 2.0
    retry_after: str = "0.05"
    supports_json_schema: bool = False
    supports_json_object: bool = False
    refusal_status: int = 400
    formats: Counter[str] = field(default_factory=Counter)
    reply: str = "Summary: A thing happened.\nRiddle: What happened, and where?\nAnswer: a thing"
    requests: Counter[str] = field(default_factory=Counter)
    completed: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.completed.clear()
            self.max_in_flight = self.in_flight  # a slow request of before may still be running
            self.supports_json_schema = False
            self.supports_json_object = False
            self.refusal_status = 400
            self.formats.clear()
            self.latency_s = 0.0


def create_fake_app(state: FakeEndpointState | None = None) -> FastAPI:
    """The FastAPI app; its ``state.fake`` is the ``FakeEndpointState``."""
    # the bodies of llmapps serve itself, built from the openai types
    from llmapps.serving.protocol import chat_completion, model_list

    st = state or FakeEndpointState()
    app = FastAPI(title="fake OpenAI-compatible endpoint")
    app.state.fake = st

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "fake", "param": None, "code": None}},
            status_code=status,
            headers=headers,
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return model_list("fake-model", 0)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        last = str(body["messages"][-1].get("content", ""))
        with st._lock:
            st.requests[last] += 1
            seen = st.requests[last]
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        counted = True
        try:
            if st.latency_s:
                await asyncio.sleep(st.latency_s)
            m = _MARK.search(last)
            if m and (m.group(2) == "always" or seen <= int(m.group(2))):
                kind = m.group(1)
                if kind == "429":
                    return error(429, "rate limited (fake)", **{"Retry-After": st.retry_after})
                if kind == "500":
                    return error(500, "internal error (fake)")
                if kind == "garbage":
                    return PlainTextResponse("{not json at all", media_type="application/json")
                with st._lock:  # its client gives up: stop counting it as in flight
                    st.in_flight -= 1
                    counted = False
                await asyncio.sleep(st.slow_s)
                # Its client gave up long ago (and a test may have reset the state since):
                # record nothing, or a later test counts this request as its own.
                return error(504, "too slow (fake)")
            ftype = str((body.get("response_format") or {}).get("type", "text"))
            with st._lock:
                st.formats[ftype] += 1
            supported = {
                "json_schema": st.supports_json_schema,
                "json_object": st.supports_json_object,
            }
            if not supported.get(ftype, True):
                return error(
                    st.refusal_status,
                    f"response_format of type {ftype!r} is not supported by this endpoint",
                )
            content = st.reply
            if ftype != "text":
                import json

                fields = dict(line.split(": ", 1) for line in st.reply.splitlines())
                content = json.dumps({k.lower(): v for k, v in fields.items()})
            with st._lock:
                st.completed[last] += 1
            n_in = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            n_out = len(content.split())
            return chat_completion(
                f"fake-{time.time_ns()}",
                int(time.time()),
                body.get("model", "fake-model"),
                content,
                "stop",
                n_in,
                n_out,
            )
        finally:
            if counted:
                with st._lock:
                    st.in_flight -= 1

    return app


def main(argv: list[str] | None = None) -> int:
    """``python -m llmapps.serving.fake_endpoint --latency 0.2``: serve on loopback, print URL."""
    import argparse
    import sys

    from llmapps.serving.server import bind_socket, uvicorn_server

    ap = argparse.ArgumentParser(
        description="a scripted OpenAI-compatible endpoint (loopback only)"
    )
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = ap.parse_args(argv)
    sock = bind_socket("127.0.0.1", args.port)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True, file=sys.stdout)
    uvicorn_server(create_fake_app(FakeEndpointState(latency_s=args.latency))).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
