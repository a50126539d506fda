"""The OpenAI-compatible FastAPI app over one ``LocalModel``.

Routes: ``GET /health`` (open), ``GET /v1/models``, ``POST /v1/chat/completions`` (SSE streaming
or not), ``POST /v1/completions``; the OpenAPI schema at ``/openapi.json`` and docs at ``/docs``.
Generation requests go through the ``DynamicBatcher``; streams use ``stream_local``.

Guard rails, in the order a request meets them (``Guard``, an ASGI middleware, does the first
three before any route reads the body):

1. the Host header must be one this server answers to (400): against DNS rebinding, a loopback
   server answers only ``127.0.0.1``, ``localhost`` and ``[::1]`` unless ``allowed_hosts`` says
   more. No CORS headers are sent, on purpose: a browser page of another origin cannot read
   answers, and a JSON POST from it is pre-flighted and refused. The stance is loopback + key:
   serve off loopback only with an API key (the CLI refuses otherwise);
2. bearer-token auth on ``/v1/*`` when a key is set (constant-time compare, 401), before the body
   is even parsed, so an unauthenticated client learns nothing about the API;
3. a body size limit (413);
4. the body: every field typed and bounded (integers fit what the model accepts, no NaN or
   infinity, no lone surrogates anywhere in it), unsupported options refused (400);
5. ``max_tokens`` ceiling (400), prompts per request capped (``max_prompts``, 400), and prompts
   in flight over all requests capped (``max_concurrent``, 429 with ``Retry-After``): a request
   holds one slot per prompt, so one big request cannot bypass the cap.

A client that goes away gets its queued prompts cancelled (the batch in progress finishes), and a
stream that fails midway ends with an error event and ``[DONE]``. Every error has OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``, and the schema documents each status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
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


# torch.manual_seed takes [-2**63, 2**64 - 1]; token counts fit 32 bits
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


def _lone_surrogate(value: Any, path: str = "", depth: int = 0) -> str | None:
    """The path of the first string in ``value`` holding a lone surrogate (not encodable text)."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(item, dict):
            for k, v in item.items():
                key = str(k)
                if isinstance(k, str) and _lone_surrogate(k) is not None:
                    return (where + "." if where else "") + key.encode("utf-8", "replace").decode()
                stack.append((v, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(item))
    return None


class _Body(BaseModel):
    """Request bodies: unknown fields refused, floats finite, every string valid Unicode."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        where = _lone_surrogate(data)
        if where is not None:
            raise PydanticCustomError(
                "lone_surrogate",
                "{param} holds a lone surrogate (\\ud800-\\udfff escape), which is not text; "
                "send valid UTF-8",
                {"param": where},
            )
        return data


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class _Sampling(_Body):
    """Fields shared by both generation endpoints (OpenAI names; unsupported values are refused)."""

    model: str
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=2**31 - 1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Seed | None = None
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    top_logprobs: Count | None = None
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
    best_of: int | None = Field(None, ge=1, le=2**31 - 1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer: OpenAI's shape."""

    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid or unsupported request"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "model not served here"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    429: {"model": ErrorResponse, "description": "too many prompts in flight; see Retry-After"},
}


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
        if part.get("type") != "text" or not isinstance(part.get("text", ""), str):
            raise APIError(
                400,
                f"messages: content part {str(part.get('type'))[:40]!r} with "
                f"{type(part.get('text')).__name__} text is not supported; send parts "
                "{'type': 'text', 'text': STRING}",
                param="messages",
                code="unsupported_content",
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


class _Slots:
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


def _host_of(header: str) -> str:
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
        self.allowed = None if allowed_hosts is None else {_host_of(h) for h in allowed_hosts}

    def _refusal(self, scope: Any) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        if self.allowed is not None and host is not None:
            name = _host_of(host.decode("latin-1"))
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


class _Cancelled:
    """A ``StoppingCriteria``: true once ``event`` is set (the stream's client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class _CancellableModel:
    """The model seen by ``stream_local`` with a stopping criterion added to ``generate``."""

    def __init__(self, model: Any, event: threading.Event) -> None:
        self._model, self._event = model, event

    def generate(self, **kwargs: Any) -> Any:
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [*(kwargs.get("stopping_criteria") or []), _Cancelled(self._event)]
        )
        return self._model.generate(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class _CancellableLM:
    """A ``LocalModel`` view whose streamed generation stops when ``event`` is set."""

    def __init__(self, lm: Any, event: threading.Event) -> None:
        self._lm = lm
        self.model = _CancellableModel(lm.model, event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)


# ---------------------------------------------------------------- the app


def create_app(
    lm: LocalModel,
    settings: ServerSettings,
    *,
    model_name: str | None = None,
    chat: Any = None,
) -> FastAPI:
    """The FastAPI app serving ``lm`` under ``model_name`` with the limits of ``settings``.

    ``chat(messages) -> str``, when given, answers ``/v1/chat/completions`` instead of the bare
    model: an app's chain (``llmapps serve --app NAME``); completions still go to ``lm``.
    """
    from llmapps.models.local import GenerationParams, stream_local
    from llmapps.serving.server import is_loopback

    served = model_name or lm.name
    key = settings.api_key.get_secret_value() if settings.api_key else None
    slots = _Slots(settings.max_concurrent)
    max_prompts = min(settings.max_prompts, settings.max_concurrent)
    batcher = DynamicBatcher(lm, max_batch=settings.max_batch, wait_ms=settings.batch_wait_ms)
    started = int(time.time())
    allowed_hosts: list[str] | None = list(settings.allowed_hosts) or (
        list(LOOPBACK_HOSTS) if is_loopback(settings.host) else None
    )

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
    app.add_middleware(
        Guard, max_bytes=settings.max_body_bytes, key=key, allowed_hosts=allowed_hosts
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()

        def where(e: Any) -> str:
            named = (e.get("ctx") or {}).get("param")
            return str(named) if named else ".".join(str(x) for x in e["loc"][1:])

        problems = "; ".join(f"{where(e) or 'body'}: {e['msg']}" for e in errors[:10])
        return APIError(
            400,
            f"invalid request: {problems}"[:2000],
            param=(where(errors[0]) or None) if errors else None,
            code="invalid_request",
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return APIError(
            err.status_code,
            str(err.detail),
            code="not_found" if err.status_code == 404 else None,
            headers=dict(err.headers or {}),  # 405 carries Allow
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

    # Auth is enforced by Guard before the body is read; this only documents it in the schema.
    bearer = [Depends(HTTPBearer(auto_error=False))] if key else []

    def check_model(name: str) -> None:
        if name != served:
            raise APIError(
                404,
                f"the model {name[:200]!r} is not served here; this server serves {served!r}",
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
        if wanted >= lm.context_length:
            raise APIError(
                400,
                f"max_tokens={wanted} leaves no room for a prompt in the {lm.context_length}-token "
                "context of this model; ask for fewer",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
        return GenerationParams(
            max_new_tokens=wanted,
            temperature=temperature,
            top_p=req.top_p or 1.0,
            stop=[s for s in stop if s],  # an empty stop string would end every completion at once
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
            return render(fitted)
        except InputError as err:
            raise APIError(400, str(err), param="messages", code="context_length_exceeded") from err
        except Exception as err:  # the model's chat template refused the conversation (jinja2)
            if type(err).__module__.startswith("jinja2"):
                raise APIError(
                    400,
                    f"the chat template of {served!r} refused these messages: {err}",
                    param="messages",
                    code="invalid_messages",
                ) from err
            raise

    async def generate(
        request: Request, prompts: list[str], params: GenerationParams
    ) -> list[Any]:
        """Generate through the batcher; a client that goes away cancels its queued prompts."""
        futures = [asyncio.wrap_future(batcher.submit(p, params)) for p in prompts]
        gathered = asyncio.gather(*futures)
        try:
            while True:
                done, _ = await asyncio.wait({gathered}, timeout=0.25)
                if done:
                    return list(gathered.result())
                if await request.is_disconnected():
                    log.info("client went away: cancelling %d prompts", len(prompts))
                    gathered.cancel()  # cancels every wrapped future, so the batcher skips them
                    raise APIError(499, "client closed the request", code="client_closed")
        except InputError as err:
            raise APIError(400, str(err), code="invalid_request") from err
        finally:
            if not gathered.done():
                gathered.cancel()

    def streaming(
        events: Iterator[dict[str, Any]], n_slots: int, cancel: threading.Event
    ) -> StreamingResponse:
        from starlette.concurrency import run_in_threadpool

        end = object()

        async def sse() -> Any:
            try:
                while True:
                    ev = await run_in_threadpool(next, events, end)
                    if ev is end:
                        break
                    yield f"data: {json.dumps(ev, ensure_ascii=False)}\n\n"
            except Exception as err:  # headers are sent: say so in the stream, then end it
                log.exception("stream failed")
                body = APIError(
                    500, f"generation failed ({type(err).__name__}); see the server log",
                    type="server_error", code="internal_error",
                )
                yield "data: " + json.dumps({"error": {"message": body.message, "type": body.type,
                                                        "param": None, "code": body.code}}) + "\n\n"
            finally:
                cancel.set()  # a client that left stops the generation at its next token
                slots.release(n_slots)
                close = getattr(events, "close", None)
                if close is not None:  # stops the generator (and its stream) when a client left
                    with contextlib.suppress(BaseException):
                        await run_in_threadpool(close)
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    def stream_events(
        prompt: str, params: GenerationParams, make: Any, include_usage: bool,
        cancel: threading.Event,
    ) -> Iterator[dict[str, Any]]:
        yield make(None, None, first=True)
        pieces = []
        for piece in stream_local(cast(Any, _CancellableLM(lm, cancel)), prompt, params):
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
        """Liveness and load: the model, prompts in flight and queued, batching so far."""
        return {
            "status": "ok",
            "model": served,
            "in_flight": slots.used,
            "queued": batcher.pending,
            "batching": batcher.stats.as_dict(),
        }

    @app.get("/v1/models", dependencies=bearer, tags=["openai"], responses=_ERRORS)
    async def models() -> dict[str, Any]:
        """The one model served."""
        return {
            "object": "list",
            "data": [{"id": served, "object": "model", "created": started, "owned_by": "llmapps"}],
        }

    @app.post("/v1/chat/completions", dependencies=bearer, tags=["openai"], responses=_ERRORS)
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        """Chat completion, one choice; ``stream: true`` answers with server-sent events."""
        check_model(req.model)
        _refuse_unsupported(req)
        if chat is not None:
            return await app_reply(req)
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
        slots.acquire(1)
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
            cancel = threading.Event()
            return streaming(stream_events(prompt, params, chunk, usage, cancel), 1, cancel)
        try:
            (out,) = await generate(request, [prompt], params)
        finally:
            slots.release(1)
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

    async def app_reply(req: ChatRequest) -> Any:
        """The app's answer to the conversation (one choice, no streaming, no token counts)."""
        from starlette.concurrency import run_in_threadpool

        if req.stream:
            raise APIError(400, "an app chat answers whole replies: send stream: false", param="stream")
        msgs = [{"role": m.role, "content": _text_of(m.content)} for m in req.messages]
        slots.acquire(1)
        try:
            text = await run_in_threadpool(chat, msgs)
        except InputError as err:
            raise APIError(400, str(err), param="messages", code="invalid_message") from err
        finally:
            slots.release(1)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    @app.post("/v1/completions", dependencies=bearer, tags=["openai"], responses=_ERRORS)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        """Text completion of one prompt or a list (one choice each); ``stream`` for one prompt."""
        check_model(req.model)
        _refuse_unsupported(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(
                400, "prompt is empty: send a string or a list of strings", param="prompt"
            )
        if len(prompts) > max_prompts:
            raise APIError(
                400,
                f"{len(prompts)} prompts in one request; this server takes at most {max_prompts} "
                "(max_prompts): split the list over several requests",
                param="prompt",
                code="too_many_prompts",
            )
        if req.stream and len(prompts) != 1:
            raise APIError(400, "streaming takes one prompt; send a string", param="prompt")
        params = params_of(req, req.max_tokens)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        slots.acquire(len(prompts))
        if req.stream:

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
            cancel = threading.Event()
            return streaming(stream_events(prompts[0], params, chunk, usage, cancel), 1, cancel)
        try:
            outs = await generate(request, prompts, params)
        finally:
            slots.release(len(prompts))
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

    _document_errors(app)
    return app


def _document_errors(app: FastAPI) -> None:
    """OpenAPI says what the server does: validation errors are 400 (not FastAPI's 422)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for item in schema.get("paths", {}).values():
                for op in item.values():
                    if isinstance(op, dict):
                        op.get("responses", {}).pop("422", None)
            comps = schema.get("components", {}).get("schemas", {})
            comps.pop("HTTPValidationError", None)
            comps.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
