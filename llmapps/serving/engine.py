"""What the generation endpoints share: the served model, its batcher and limits, and the steps
every request goes through (model check, sampling parameters, prompt fitting, batched or
streamed generation with cancellation when the client goes away)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from fastapi import Request
from fastapi.responses import StreamingResponse

from llmapps.errors import BackendError, InputError
from llmapps.serving.batcher import DynamicBatcher
from llmapps.serving.guard import Slots
from llmapps.serving.protocol import APIError, _Sampling, usage_chunk

if TYPE_CHECKING:
    from llmapps.models.local import GenerationParams, LocalModel
    from llmapps.models.structured import OutputConstraint
    from llmapps.serving.settings import ServerSettings

log = logging.getLogger(__name__)


class _Cancelled:
    """A ``StoppingCriteria``: true once ``event`` is set (the stream's client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


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


def _pumped(pieces: Callable[[], Iterator[str]], cancel: threading.Event) -> Iterator[str]:
    """``pieces()`` produced in a thread of its own that stops once ``cancel`` is set.

    A client that leaves mid-stream abandons this generator while a piece may be in the making,
    so closing it cannot reach the producer (``generator already executing``); llama.cpp's stream
    holds the model's lock, so the producer checks ``cancel`` after each piece and closes its
    stream itself, and the next request finds the model free.
    """
    import queue

    out: queue.Queue[Any] = queue.Queue()
    end = object()

    def produce() -> None:
        try:
            stream = pieces()
            try:
                for piece in stream:
                    if cancel.is_set():
                        break
                    out.put(piece)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        except Exception as err:  # handed to the consumer, which raises it in the request
            out.put(err)
        finally:
            out.put(end)

    threading.Thread(target=produce, name="llmapps-stream", daemon=True).start()
    while (item := out.get()) is not end:
        if isinstance(item, Exception):
            raise item
        yield item


class Serving:
    """The served model and the request steps the endpoints share (one per app)."""

    def __init__(self, lm: LocalModel, settings: ServerSettings, served: str) -> None:
        self.lm, self.settings, self.served = lm, settings, served
        self.slots = Slots(settings.max_concurrent)
        self.max_prompts = min(settings.max_prompts, settings.max_concurrent)
        self.batcher = DynamicBatcher(
            lm, max_batch=settings.max_batch, wait_ms=settings.batch_wait_ms
        )
        self.started = int(time.time())

    def check_model(self, name: str) -> None:
        if name != self.served:
            raise APIError(
                404,
                f"the model {name[:200]!r} is not served here; this server serves {self.served!r}",
                param="model",
                code="model_not_found",
            )

    def params_of(
        self,
        req: _Sampling,
        max_tokens: int | None,
        constraint: OutputConstraint | None = None,
    ) -> GenerationParams:
        from llmapps.models.local import GenerationParams

        settings, lm = self.settings, self.lm
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
        temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
        return GenerationParams(
            max_new_tokens=wanted,
            temperature=temperature,
            top_p=req.top_p or 1.0,
            stop=self.stops_of(req),
            seed=req.seed,
            constraint=constraint,
        )

    async def check_constraint(
        self, constraint: OutputConstraint | None, constraint_field: str | None
    ) -> None:
        """A 400 naming ``constraint_field`` when the model cannot hold replies to ``constraint``
        (no engine here) or it does not compile; compiled grammars are cached, so the batch and
        the stream that follow reuse this one."""
        from starlette.concurrency import run_in_threadpool

        if constraint is None:
            return
        where = constraint_field or "constraint"
        reason = self.lm.constraint_refusal(constraint)
        if reason is not None:
            raise APIError(
                400,
                f"{where}: this server cannot constrain its replies ({reason})",
                param=where,
                code="unsupported_parameter",
            )
        try:
            await run_in_threadpool(self.lm.compile, constraint)
        except InputError as err:
            raise input_error(err, constraint_field) from err

    def stops_of(self, req: _Sampling) -> list[str]:
        """The request's stop strings, bounded in count and total length (a stop string is
        matched against every decoded tail, so its length must not be the client's to choose)."""
        settings = self.settings
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > settings.max_stop:
            raise APIError(
                400,
                f"stop: {len(stop)} stop strings; this server takes at most {settings.max_stop}",
                param="stop",
                code="too_many_stop_strings",
            )
        chars = sum(len(s) for s in stop)
        if chars > settings.max_stop_chars:
            raise APIError(
                400,
                f"stop: {chars} characters of stop strings; this server takes at most "
                f"{settings.max_stop_chars} in all: send shorter ones",
                param="stop",
                code="stop_too_long",
            )
        return [s for s in stop if s]  # an empty stop string would end every completion at once

    def fit_chat(self, messages: list[dict[str, str]], params: GenerationParams) -> str:
        """The chat prompt, its longest message shortened if the whole would not fit the context."""
        from llmapps.prompting import truncate_to_fit

        lm = self.lm
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
                    f"the chat template of {self.served!r} refused these messages: {err}",
                    param="messages",
                    code="invalid_messages",
                ) from err
            raise

    async def generate(
        self,
        request: Request,
        prompts: list[str],
        params: GenerationParams,
        constraint_field: str | None = None,
    ) -> list[Any]:
        """Generate through the batcher; a client that goes away cancels its queued prompts.

        ``constraint_field`` is the request field the constraint came from: a constraint the
        backend cannot compile is a 400 naming it.
        """
        futures = [asyncio.wrap_future(self.batcher.submit(p, params)) for p in prompts]
        gathered = asyncio.gather(*futures)
        # a dropped client leaves the gathered future unawaited: read its outcome so asyncio
        # does not log "_GatheringFuture exception was never retrieved" for every one
        gathered.add_done_callback(_settle)
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
            raise input_error(err, constraint_field) from err
        finally:
            if not gathered.done():
                gathered.cancel()

    def streaming(
        self, events: Iterator[dict[str, Any]], n_slots: int, cancel: threading.Event
    ) -> StreamingResponse:
        """Server-sent events of ``events``; a failure midway ends with an error event and ``[DONE]``."""
        from starlette.concurrency import run_in_threadpool

        end = object()
        slots = self.slots

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
                    500,
                    f"generation failed ({type(err).__name__}); see the server log",
                    type="server_error",
                    code="internal_error",
                )
                yield (
                    "data: "
                    + json.dumps(
                        {
                            "error": {
                                "message": body.message,
                                "type": body.type,
                                "param": None,
                                "code": body.code,
                            }
                        }
                    )
                    + "\n\n"
                )
            finally:
                cancel.set()  # a client that left stops the generation at its next token
                slots.release(n_slots)
                close = getattr(events, "close", None)
                if close is not None:  # stops the generator (and its stream) when a client left
                    with contextlib.suppress(BaseException):
                        await run_in_threadpool(close)
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def open_stream(
        self,
        prompt: str,
        params: GenerationParams,
        cancel: threading.Event,
        constraint_field: str | None = None,
    ) -> Iterator[str]:
        """The pieces of one streamed answer, the first already made, so that what fails before
        any token (a constraint the backend cannot compile) is a 400 rather than an error event
        after a 200 has been sent."""
        import itertools

        from starlette.concurrency import run_in_threadpool

        from llmapps.models.loader import backend_of
        from llmapps.models.streaming import stream_local

        lm = self.lm
        if backend_of(lm).capabilities.logits:  # transformers' generate: a stopping criterion
            source: Iterator[str] = stream_local(
                cast(Any, _CancellableLM(lm, cancel)), prompt, params
            )
        else:  # a backend's own stream (llama.cpp), pumped in a thread that checks cancel
            source = _pumped(lambda: lm.stream(prompt, params), cancel)
        end = object()
        try:
            first = await run_in_threadpool(next, source, end)
        except InputError as err:
            raise input_error(err, constraint_field) from err
        except BackendError as err:  # the stream's thread wraps what the backend raised
            if isinstance(err.__cause__, InputError):
                raise input_error(err.__cause__, constraint_field) from err
            raise
        return iter(()) if first is end else itertools.chain([cast(str, first)], source)

    def stream_events(
        self,
        prompt: str,
        pieces: Iterator[str],
        params: GenerationParams,
        make: Callable[..., dict[str, Any]],
        include_usage: bool,
    ) -> Iterator[dict[str, Any]]:
        """The events of one streamed answer: ``make(piece, finish, first=...)`` builds each."""
        lm = self.lm
        yield make(None, None, first=True)
        out = []
        for piece in pieces:
            out.append(piece)
            yield make(piece, None)
        n_out = len(lm.tokenizer("".join(out), add_special_tokens=False)["input_ids"])
        yield make(None, "length" if n_out >= params.max_new_tokens else "stop")
        if include_usage:
            yield usage_chunk(make(None, None), lm.count_tokens(prompt), n_out)

    async def stream(
        self,
        prompt: str,
        params: GenerationParams,
        make: Callable[..., dict[str, Any]],
        include_usage: bool,
        constraint_field: str | None = None,
    ) -> StreamingResponse:
        """A streamed answer to one prompt, holding one slot (taken here, released at its end)."""
        cancel = threading.Event()
        self.slots.acquire(1)
        try:
            pieces = await self.open_stream(prompt, params, cancel, constraint_field)
        except BaseException:
            cancel.set()
            self.slots.release(1)
            raise
        events = self.stream_events(prompt, pieces, params, make, include_usage)
        return self.streaming(events, 1, cancel)


def _settle(fut: asyncio.Future[Any]) -> None:
    """Mark a finished future's outcome as read (it is handled, or its client has gone)."""
    if not fut.cancelled():
        fut.exception()


def input_error(err: InputError, constraint_field: str | None) -> APIError:
    """A 400 for bad input found while generating; a constraint's names the field it came from."""
    from llmapps.models.structured import ConstraintError

    if isinstance(err, ConstraintError):
        return APIError(
            400,
            f"{constraint_field or 'constraint'}: {err}",
            param=constraint_field or err.param,
            code="invalid_structured_output",
        )
    return APIError(400, str(err), code="invalid_request")
