"""Dynamic batching: requests arriving together share one ``generate`` call.

A worker thread takes the first waiting request, gathers more for up to ``wait_ms`` (or until
``max_batch``), groups them by generation parameters (a batch shares them) and runs one
``LocalModel.generate`` per group. While it generates, new requests queue and form the next batch,
so under load batches fill without waiting at all.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmapps.models.local import GenerationOutput, GenerationParams, LocalModel

log = logging.getLogger(__name__)


@dataclass
class _Item:
    prompt: str
    params: GenerationParams
    future: Future[GenerationOutput]


@dataclass
class BatcherStats:
    """How requests were batched: generate calls, requests, and batch sizes seen."""

    batches: int = 0
    requests: int = 0
    sizes: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "max_batch": max(self.sizes, default=0),
            "sizes": dict(sorted(self.sizes.items())),
        }


def _params_key(p: GenerationParams) -> tuple[Any, ...]:
    """What requests must share to be batched (a batch runs under one set of params)."""
    return (
        p.max_new_tokens,
        p.temperature,
        p.top_p,
        tuple(p.stop),
        p.seed,
        p.constraint.key if p.constraint is not None else None,
        p.repetition_penalty,
        p.no_repeat_ngram_size,
    )


class DynamicBatcher:
    """Queue of prompts served by one worker thread in batches.

    Args:
        lm: the model; its ``generate`` is called with up to ``max_batch`` prompts.
        max_batch: most requests per batch.
        wait_ms: how long the first request of a batch waits for company.
    """

    def __init__(self, lm: LocalModel, *, max_batch: int = 16, wait_ms: float = 5.0) -> None:
        self.lm = lm
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.stats = BatcherStats()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llmapps-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, prompt: str, params: GenerationParams) -> Future[GenerationOutput]:
        """Queue one prompt; the future resolves to its ``GenerationOutput`` (or its error)."""
        fut: Future[GenerationOutput] = Future()
        if self._closed:
            fut.set_exception(RuntimeError("the server is shutting down"))
            return fut
        self._queue.put(_Item(prompt, params, fut))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the batch in progress; queued requests fail."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.future.set_exception(RuntimeError("the server is shutting down"))

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        items = [first]
        deadline = time.monotonic() + self.wait_s
        while len(items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                return items, True
            items.append(item)
        return items, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            items, stop = self._gather(first)
            groups: dict[tuple[Any, ...], list[_Item]] = {}
            for it in items:
                groups.setdefault(_params_key(it.params), []).append(it)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[_Item]) -> None:
        live = [it for it in group if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.sizes[len(live)] += 1
        try:
            outs = self.lm.generate([it.prompt for it in live], live[0].params)
        except Exception as err:  # every request of the batch gets the error, the worker lives on
            log.warning("batch of %d failed: %s", len(live), err)
            for it in live:
                it.future.set_exception(err)
            return
        for it, out in zip(live, outs, strict=True):
            it.future.set_result(out)
