"""The OpenAI wire protocol of ``llmapps serve``: request bodies, errors and response bodies.

Request bodies are pydantic models of our own (every field typed and bounded, unknown fields
refused); responses are built from the ``openai`` package's own types (``ChatCompletion``,
``ChatCompletionChunk``, ``Completion``, ``Model``) and dumped with only the fields we set, so
what the server answers is what the OpenAI client parses. Every error has OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


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
    # bounded in count and total length by the server's settings (max_stop, max_stop_chars)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None
    # structured output, as OpenAI, vLLM and llama-server spell it (llmapps.serving.constraints)
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    top_logprobs: Count | None = None
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
        checks += [
            ("tools", bool(req.tools)),
            ("top_logprobs", bool(req.top_logprobs)),
        ]
        for param in ("tool_choice", "parallel_tool_calls"):
            if getattr(req, param) is not None and not req.tools:
                raise APIError(
                    400,
                    f"{param} is only allowed with tools, and this server takes no tools; "
                    f"leave {param} out",
                    param=param,
                    code="invalid_request",
                )
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
                "text or structured output, one choice per prompt); leave it out",
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


# ---------------------------------------------------------------- response bodies (openai types)


def _dump(obj: Any) -> dict[str, Any]:
    return obj.model_dump(mode="json", exclude_unset=True)  # type: ignore[no-any-return]


def usage(prompt_tokens: int, completion_tokens: int) -> Any:
    """``openai.types.CompletionUsage`` of one answer."""
    from openai.types import CompletionUsage

    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def model_list(served: str, created: int) -> dict[str, Any]:
    """``GET /v1/models``: the one model served."""
    from openai.types import Model

    return {
        "object": "list",
        "data": [_dump(Model(id=served, object="model", created=created, owned_by="llmapps"))],
    }


def chat_completion(
    cid: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A whole chat answer (``openai.types.chat.ChatCompletion``), one choice."""
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    choice = Choice(
        index=0,
        message=ChatCompletionMessage(role="assistant", content=text),
        finish_reason=finish,  # type: ignore[arg-type]
        logprobs=None,
    )
    return _dump(
        ChatCompletion(
            id=cid,
            object="chat.completion",
            created=created,
            model=model,
            choices=[choice],
            usage=usage(prompt_tokens, completion_tokens),
        )
    )


def chat_chunk(
    cid: str, created: int, model: str, piece: str | None, finish: str | None, first: bool = False
) -> dict[str, Any]:
    """One streamed chat event (``openai.types.chat.ChatCompletionChunk``): the first carries the
    role, the others a piece of text, the last the finish reason."""
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

    delta = (
        ChoiceDelta(role="assistant", content="")
        if first
        else (ChoiceDelta(content=piece) if piece is not None else ChoiceDelta())
    )
    choice = Choice(index=0, delta=delta, finish_reason=finish)  # type: ignore[arg-type]
    return _dump(
        ChatCompletionChunk(
            id=cid, object="chat.completion.chunk", created=created, model=model, choices=[choice]
        )
    )


def text_completion(
    cid: str,
    created: int,
    model: str,
    texts: list[tuple[str, str]],
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A completion answer (``openai.types.Completion``), one choice per (text, finish) pair."""
    from openai.types import Completion, CompletionChoice

    choices = [
        CompletionChoice(index=i, text=t, finish_reason=f, logprobs=None)  # type: ignore[arg-type]
        for i, (t, f) in enumerate(texts)
    ]
    return _dump(
        Completion(
            id=cid,
            object="text_completion",
            created=created,
            model=model,
            choices=choices,
            usage=usage(prompt_tokens, completion_tokens),
        )
    )


def text_chunk(
    cid: str, created: int, model: str, piece: str | None, finish: str | None, first: bool = False
) -> dict[str, Any]:
    """One streamed completion event (``openai.types.Completion`` without usage). The type has
    no streaming variant: its ``finish_reason`` is required, but a stream sends null until the
    last event (as OpenAI's does, and its client reads), so the event is built unvalidated."""
    from openai.types import Completion, CompletionChoice

    choice = CompletionChoice.model_construct(
        index=0,
        text=piece or "",
        finish_reason=finish,  # type: ignore[arg-type]
        logprobs=None,
    )
    return _dump(
        Completion.model_construct(
            id=cid, object="text_completion", created=created, model=model, choices=[choice]
        )
    )


def usage_chunk(
    event: dict[str, Any], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The last streamed event when the client asked for usage: no choices, the token counts."""
    return {**event, "choices": [], "usage": _dump(usage(prompt_tokens, completion_tokens))}
