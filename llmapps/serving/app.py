"""The OpenAI-compatible FastAPI app over one ``LocalModel``.

Routes: ``GET /health`` (open), ``GET /v1/models``, ``POST /v1/chat/completions`` (SSE streaming
or not), ``POST /v1/completions``; the OpenAPI schema at ``/openapi.json`` and docs at ``/docs``.
Generation requests go through the ``DynamicBatcher``; streams use ``stream_local``. Guard rails:
bearer-token auth when a key is set (constant-time compare, 401 otherwise), a body size limit
(413), a ``max_tokens`` ceiling (400) and a cap on requests in flight (429 with ``Retry-After``).
Every error has OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmapps.errors import InputError
from llmapps.serving.batcher import DynamicBatcher

if TYPE_CHECKING:
    from llmapps.models.local import GenerationParams, LocalModel
    from llmapps.settings import ServerSettings

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------- request bodies


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class _Sampling(BaseModel):
    """Fields shared by both generation endpoints (OpenAI names; unsupported values are refused)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


# ---------------------------------------------------------------- helpers


def _refuse_unsupported(req: _Sampling) -> None:
    """Refuse what this server cannot do instead of silently ignoring it."""
    checks: list[tuple[str, bool]] = [
        ("n", (req.n or 1) != 1),
        ("presence_penalty", bool(req.presence_penalty)),
        ("frequency_penalty", bool(req.frequency_penalty)),
        ("logit_bias", bool(req.logit_bias)),
        ("logprobs", bool(req.logprobs)),
    ]
    if isinstance(req, ChatRequest):
        fmt = (req.response_format or {}).get("type", "text")
        checks += [
            ("response_format", fmt != "text"),
            ("tools", bool(req.tools)),
            ("top_logprobs", bool(req.top_logprobs)),
        ]
    if isinstance(req, CompletionRequest):
        checks += [
            ("echo", bool(req.echo)),
            ("suffix", bool(req.suffix)),
            ("best_of", (req.best_of or 1) != 1),
        ]
    for param, bad in checks:
        if bad:
            raise APIError(
                400,
                f"this server does not support {param!r} (llmapps serve generates "
                "plain text, one choice per prompt); leave it out",
                param=param,
                code="unsupported_parameter",
            )


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise APIError(
                400,
                f"content parts of type {part.get('type')!r} are not supported; send text",
                param="messages",
                code="unsupported_content",
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


class _Slots:
    """Requests in flight, capped; the cap answers 429 rather than queueing without bound."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.used >= self.limit:
                raise APIError(
                    429,
                    f"the server is at its limit of {self.limit} requests in flight; "
                    "retry after the delay in Retry-After",
                    type="rate_limit_error",
                    code="too_many_requests",
                    headers={"Retry-After": "1"},
                )
            self.used += 1

    def release(self) -> None:
        with self._lock:
            self.used -= 1


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 before any route reads them."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
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


# ---------------------------------------------------------------- the app


def create_app(
    lm: LocalModel, settings: ServerSettings, *, model_name: str | None = None
) -> FastAPI:
    """The FastAPI app serving ``lm`` under ``model_name`` with the limits of ``settings``."""
    from llmapps.models.local import GenerationParams, stream_local

    served = model_name or lm.name
    key = settings.api_key.get_secret_value() if settings.api_key else None
    slots = _Slots(settings.max_concurrent)
    batcher = DynamicBatcher(lm, max_batch=settings.max_batch, wait_ms=settings.batch_wait_ms)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        batcher.close()

    app = FastAPI(
        title="llmapps OpenAI-compatible server",
        version="1",
        lifespan=lifespan,
        description=f"Serves {served!r} with dynamic batching.",
    )
    app.state.batcher, app.state.slots, app.state.model = batcher, slots, lm
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in err.errors()
        )
        first = err.errors()[0]["loc"] if err.errors() else ()
        return APIError(
            400,
            f"invalid request: {problems}",
            param=".".join(str(x) for x in first[1:]) or None,
            code="invalid_request",
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return APIError(
            err.status_code, str(err.detail), code="not_found" if err.status_code == 404 else None
        ).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return APIError(
            500,
            f"internal server error ({type(err).__name__}); see the server log",
            type="server_error",
            code="internal_error",
        ).response()

    def auth(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.encode()
        ):
            raise APIError(
                401,
                "missing or invalid API key: send the header 'Authorization: Bearer <key>' "
                "with the key the server was started with",
                code="invalid_api_key",
            )

    def check_model(name: str) -> None:
        if name != served:
            raise APIError(
                404,
                f"the model {name!r} is not served here; this server serves {served!r}",
                param="model",
                code="model_not_found",
            )

    def params_of(req: _Sampling, max_tokens: int | None) -> GenerationParams:
        wanted = max_tokens or min(256, settings.max_tokens)
        if wanted > settings.max_tokens:
            raise APIError(
                400,
                f"max_tokens={wanted} is above this server's limit of {settings.max_tokens}; "
                "ask for fewer",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
        return GenerationParams(
            max_new_tokens=wanted,
            temperature=temperature,
            top_p=req.top_p or 1.0,
            stop=stop,
            seed=req.seed,
        )

    def fit_chat(messages: list[dict[str, str]], params: GenerationParams) -> str:
        """The chat prompt, its longest message shortened if the whole would not fit the context."""
        from llmapps.prompting import truncate_to_fit

        limit = lm.context_length - params.max_new_tokens
        longest = max(range(len(messages)), key=lambda i: len(messages[i]["content"]))

        def render(inputs: dict[str, Any]) -> str:
            msgs = [dict(m) for m in messages]
            msgs[longest]["content"] = inputs["content"]
            return lm.apply_chat_template(msgs)

        try:
            fitted = truncate_to_fit(
                {"content": messages[longest]["content"]},
                "content",
                render,
                lm.count_tokens,
                limit,
                what="conversation",
            )
        except InputError as err:
            raise APIError(400, str(err), param="messages", code="context_length_exceeded") from err
        return render(fitted)

    async def generate(prompts: list[str], params: GenerationParams) -> list[Any]:
        futures = [asyncio.wrap_future(batcher.submit(p, params)) for p in prompts]
        try:
            return list(await asyncio.gather(*futures))
        except InputError as err:
            raise APIError(400, str(err), code="invalid_request") from err

    def streaming(events: Iterator[dict[str, Any]]) -> StreamingResponse:
        from starlette.background import BackgroundTask

        released = threading.Event()

        def release() -> None:  # once, from whichever of the two runs first
            if not released.is_set():
                released.set()
                slots.release()

        def sse() -> Iterator[str]:
            try:
                for ev in events:
                    yield f"data: {json.dumps(ev, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                release()

        return StreamingResponse(
            sse(), media_type="text/event-stream", background=BackgroundTask(release)
        )

    def stream_events(
        prompt: str, params: GenerationParams, make: Any, include_usage: bool
    ) -> Iterator[dict[str, Any]]:
        yield make(None, None, first=True)
        pieces = []
        for piece in stream_local(lm, prompt, params):
            pieces.append(piece)
            yield make(piece, None)
        n_out = len(lm.tokenizer("".join(pieces), add_special_tokens=False)["input_ids"])
        yield make(None, "length" if n_out >= params.max_new_tokens else "stop")
        if include_usage:
            n_in = lm.count_tokens(prompt)
            yield {
                **make(None, None),
                "choices": [],
                "usage": {
                    "prompt_tokens": n_in,
                    "completion_tokens": n_out,
                    "total_tokens": n_in + n_out,
                },
            }

    @app.get("/health", tags=["meta"])
    async def health() -> dict[str, Any]:
        """Liveness and load: the model, requests in flight and queued, batching so far."""
        return {
            "status": "ok",
            "model": served,
            "in_flight": slots.used,
            "queued": batcher.pending,
            "batching": batcher.stats.as_dict(),
        }

    @app.get("/v1/models", dependencies=[Depends(auth)], tags=["openai"])
    async def models() -> dict[str, Any]:
        """The one model served."""
        return {
            "object": "list",
            "data": [{"id": served, "object": "model", "created": started, "owned_by": "llmapps"}],
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)], tags=["openai"])
    async def chat_completions(req: ChatRequest) -> Any:
        """Chat completion, one choice; ``stream: true`` answers with server-sent events."""
        check_model(req.model)
        _refuse_unsupported(req)
        if not lm.has_chat_template:
            raise APIError(
                400,
                f"the model {served!r} has no chat template: use /v1/completions "
                "or serve an instruction-tuned model",
                code="no_chat_template",
            )
        params = params_of(req, req.max_completion_tokens or req.max_tokens)
        msgs = [
            {"role": "system" if m.role == "developer" else m.role, "content": _text_of(m.content)}
            for m in req.messages
        ]
        prompt = fit_chat(msgs, params)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        slots.acquire()
        if req.stream:

            def chunk(piece: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
                delta: dict[str, Any] = (
                    {"role": "assistant", "content": ""}
                    if first
                    else ({"content": piece} if piece is not None else {})
                )
                return {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": served,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }

            usage = bool((req.stream_options or {}).get("include_usage"))
            return streaming(stream_events(prompt, params, chunk, usage))
        try:
            (out,) = await generate([prompt], params)
        finally:
            slots.release()
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": served,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": out.text},
                    "finish_reason": out.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.completion_tokens,
                "total_tokens": out.prompt_tokens + out.completion_tokens,
            },
        }

    @app.post("/v1/completions", dependencies=[Depends(auth)], tags=["openai"])
    async def completions(req: CompletionRequest) -> Any:
        """Text completion of one prompt or a list (one choice each); ``stream`` for one prompt."""
        check_model(req.model)
        _refuse_unsupported(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(
                400, "prompt is empty: send a string or a list of strings", param="prompt"
            )
        params = params_of(req, req.max_tokens)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        slots.acquire()
        if req.stream:
            if len(prompts) != 1:
                slots.release()
                raise APIError(400, "streaming takes one prompt; send a string", param="prompt")

            def chunk(piece: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
                return {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": served,
                    "choices": [
                        {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
                    ],
                }

            usage = bool((req.stream_options or {}).get("include_usage"))
            return streaming(stream_events(prompts[0], params, chunk, usage))
        try:
            outs = await generate(prompts, params)
        finally:
            slots.release()
        n_in, n_out = sum(o.prompt_tokens for o in outs), sum(o.completion_tokens for o in outs)
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": served,
            "choices": [
                {"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}
                for i, o in enumerate(outs)
            ],
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        }

    return app
