"""``POST /v1/completions``: text completion of one prompt or a list (one choice each), batched
with every other request; ``stream`` for one prompt."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

from fastapi import FastAPI, Request

from llmapps.serving.constraints import constraint_of
from llmapps.serving.engine import Serving
from llmapps.serving.protocol import (
    _ERRORS,
    APIError,
    CompletionRequest,
    _refuse_unsupported,
    text_chunk,
    text_completion,
)


def add_completion_routes(app: FastAPI, ctx: Serving, bearer: list[Any]) -> None:
    """Add the completions endpoint."""
    served = ctx.served

    @app.post("/v1/completions", dependencies=bearer, tags=["openai"], responses=_ERRORS)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        """Text completion of one prompt or a list (one choice each); ``stream`` for one prompt."""
        ctx.check_model(req.model)
        _refuse_unsupported(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(
                400, "prompt is empty: send a string or a list of strings", param="prompt"
            )
        if len(prompts) > ctx.max_prompts:
            raise APIError(
                400,
                f"{len(prompts)} prompts in one request; this server takes at most {ctx.max_prompts} "
                "(max_prompts): split the list over several requests",
                param="prompt",
                code="too_many_prompts",
            )
        if req.stream and len(prompts) != 1:
            raise APIError(400, "streaming takes one prompt; send a string", param="prompt")
        constraint, where = constraint_of(req)
        params = ctx.params_of(req, req.max_tokens, constraint)
        await ctx.check_constraint(constraint, where)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            make = partial(text_chunk, cid, created, served)
            return await ctx.stream(prompts[0], params, make, usage, where)
        ctx.slots.acquire(len(prompts))
        try:
            outs = await ctx.generate(request, prompts, params, where)
        finally:
            ctx.slots.release(len(prompts))
        return text_completion(
            cid,
            created,
            served,
            [(o.text, o.finish_reason) for o in outs],
            sum(o.prompt_tokens for o in outs),
            sum(o.completion_tokens for o in outs),
        )
