"""``POST /v1/chat/completions``: one chat answer from the model's chat template, streamed or
whole, or from an app's chain (``llmapps serve --app NAME``)."""

from __future__ import annotations

import threading
import time
import uuid
from functools import partial
from typing import Any

from fastapi import FastAPI, Request

from llmapps.errors import InputError
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
        if not lm.has_chat_template:
            raise APIError(
                400,
                f"the model {served!r} has no chat template: use /v1/completions "
                "or serve an instruction-tuned model",
                code="no_chat_template",
            )
        params = ctx.params_of(req, req.max_completion_tokens or req.max_tokens)
        msgs = [
            {"role": "system" if m.role == "developer" else m.role, "content": _text_of(m.content)}
            for m in req.messages
        ]
        prompt = ctx.fit_chat(msgs, params)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        ctx.slots.acquire(1)
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            cancel = threading.Event()
            make = partial(chat_chunk, cid, created, served)
            return ctx.streaming(ctx.stream_events(prompt, params, make, usage, cancel), 1, cancel)
        try:
            (out,) = await ctx.generate(request, [prompt], params)
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
        """The app's answer to the conversation (one choice, no streaming, no token counts)."""
        from starlette.concurrency import run_in_threadpool

        if req.stream:
            raise APIError(
                400, "an app chat answers whole replies: send stream: false", param="stream"
            )
        msgs = [{"role": m.role, "content": _text_of(m.content)} for m in req.messages]
        ctx.slots.acquire(1)
        try:
            text = await run_in_threadpool(chat, msgs)
        except InputError as err:
            raise APIError(400, str(err), param="messages", code="invalid_message") from err
        finally:
            ctx.slots.release(1)
        return chat_completion(
            f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), served, text, "stop", 0, 0
        )
