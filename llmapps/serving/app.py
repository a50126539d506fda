"""The OpenAI-compatible FastAPI app over one ``LocalModel``.

Routes: ``GET /health`` (open), ``GET /v1/models``, ``POST /v1/chat/completions`` (SSE streaming
or not), ``POST /v1/completions``; the OpenAPI schema at ``/openapi.json`` and docs at ``/docs``.
Generation requests go through the ``DynamicBatcher``; streams use ``stream_local``. The pieces:
``protocol`` (request bodies, errors, responses built from the ``openai`` types), ``constraints``
(the structured-output fields mapped to one ``OutputConstraint``), ``guard`` (the
middleware and the in-flight cap), ``engine`` (what the generation endpoints share),
``chat_routes`` and ``completion_routes`` (one module per endpoint); this module wires them.

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
   infinity, no lone surrogates anywhere in it, stop strings bounded in count and total length),
   unsupported options refused (400); structured output as OpenAI (``response_format``), vLLM
   (``structured_outputs``) and llama-server (``json_schema``, ``grammar``) spell it becomes one
   constraint (``constraints``), and one that does not compile is a 400 naming its field;
5. ``max_tokens`` ceiling (400), prompts per request capped (``max_prompts``, 400), and prompts
   in flight over all requests capped (``max_concurrent``, 429 with ``Retry-After``): a request
   holds one slot per prompt, so one big request cannot bypass the cap.

A client that goes away gets its queued prompts cancelled (the batch in progress finishes), and a
stream that fails midway ends with an error event and ``[DONE]``. Every error has OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``, and the schema documents each status.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmapps.serving.guard import LOOPBACK_HOSTS, Guard
from llmapps.serving.protocol import _ERRORS, APIError, model_list

if TYPE_CHECKING:
    from llmapps.models.local import LocalModel
    from llmapps.serving.settings import ServerSettings

log = logging.getLogger(__name__)


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
    from llmapps.serving.chat_routes import add_chat_routes
    from llmapps.serving.completion_routes import add_completion_routes
    from llmapps.serving.engine import Serving
    from llmapps.serving.server import is_loopback

    ctx = Serving(lm, settings, model_name or lm.name)
    served, slots, batcher = ctx.served, ctx.slots, ctx.batcher
    key = settings.api_key.get_secret_value() if settings.api_key else None
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
        return model_list(served, ctx.started)

    add_chat_routes(app, ctx, bearer, chat)
    add_completion_routes(app, ctx, bearer)
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
