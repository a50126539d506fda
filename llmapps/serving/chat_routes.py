"""``POST /v1/chat/completions``: one chat answer from the model's chat template, streamed or
whole, or from an app's chain (``llmapps serve --app NAME``)."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

from fastapi import FastAPI, Request

from llmapps.errors import InputError
from llmapps.serving.constraints import constraint_of
from llmapps.serving.engine import Serving
from llmapps.serving.protocol import (
    _ERRORS,
    APIError,
    ChatRequest,
    _refuse_unsupported,
    _text_of,
    chat_chunk,
    chat_completion,
)


def add_chat_routes(app: FastAPI, ctx: Serving, bearer: list[Any], chat: Any = None) -> None:
    """Add the chat endpoint; ``chat(messages) -> str``, when given, answers instead of the model."""
    lm, served = ctx.lm, ctx.served

    @app.post("/v1/chat/completions", dependencies=bearer, tags=["openai"], responses=_ERRORS)
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        """Chat completion, one choice; ``stream: true`` answers with server-sent events."""
        ctx.check_model(req.model)
        _refuse_unsupported(req)
        if chat is not None:
            return await app_reply(req)
        constraint, where = constraint_of(req)
        if not lm.has_chat_template:
            raise APIError(
                400,
                f"the model {served!r} has no chat template: use /v1/completions "
                "or serve an instruction-tuned model",
                code="no_chat_template",
            )
        params = ctx.params_of(req, req.max_completion_tokens or req.max_tokens, constraint)
        await ctx.check_constraint(constraint, where)
        msgs = [
            {"role": "system" if m.role == "developer" else m.role, "content": _text_of(m.content)}
            for m in req.messages
        ]
        prompt = ctx.fit_chat(msgs, params)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            make = partial(chat_chunk, cid, created, served)
            return await ctx.stream(prompt, params, make, usage, where)
        ctx.slots.acquire(1)
        try:
            (out,) = await ctx.generate(request, [prompt], params, where)
        finally:
            ctx.slots.release(1)
        return chat_completion(
            cid,
            created,
            served,
            out.text,
            out.finish_reason,
            out.prompt_tokens,
            out.completion_tokens,
        )

    async def app_reply(req: ChatRequest) -> Any:
        """The app's answer to the conversation (one choice, no streaming, no token counts).

        The app's chain chooses its own budget, sampling and output shape, so a request that
        sets them is refused rather than silently answered without them; ``stop`` is honoured
        by cutting the reply at the first stop string."""
        from starlette.concurrency import run_in_threadpool

        from llmapps.models.streaming import cut_at_stop

        if req.stream:
            raise APIError(
                400, "an app chat answers whole replies: send stream: false", param="stream"
            )
        _, constrained = constraint_of(req)  # response_format text is no constraint
        for param in (*_APP_CHOOSES, *([constrained] if constrained else [])):
            if getattr(req, param.split(".")[0]) is not None:
                raise APIError(
                    400,
                    f"{param}: an app chat sets its own budget, sampling and reply shape "
                    f"(serve --app); leave {param} out, or serve the model without --app",
                    param=param,
                    code="unsupported_parameter",
                )
        stop = ctx.stops_of(req)
        msgs = [{"role": m.role, "content": _text_of(m.content)} for m in req.messages]
        ctx.slots.acquire(1)
        try:
            text = await run_in_threadpool(chat, msgs)
        except InputError as err:
            raise APIError(400, str(err), param="messages", code="invalid_message") from err
        finally:
            ctx.slots.release(1)
        text, _ = cut_at_stop(text, stop)
        return chat_completion(
            f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), served, text, "stop", 0, 0
        )


# what an app's chain decides for itself (serve --app refuses them in a request)
_APP_CHOOSES = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed")
