"""What a bench measures besides quality: memory high-water, token usage with reported cost, prices.

- ``PeakMemory``: the process's resident-set high-water while a strategy runs (sampled by a
  thread with psutil, since ``ru_maxrss`` only ever grows over the whole process), and
  ``torch.cuda.max_memory_allocated`` on GPU.
- ``CostTracker``: token usage (like ``UsageTracker``) plus a cost an endpoint reports itself in
  ``llm_output`` or a message's ``response_metadata`` (``cost``, ``cost_usd`` or ``total_cost``).
- ``Price``: what a strategy costs: per 1,000 input/output tokens and per hour of compute.
"""

from __future__ import annotations

import platform
import sys
import threading
import time
from typing import Any

from langchain_core.outputs import LLMResult
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmapps.errors import config_error_from_validation
from llmapps.observe import UsageTracker

_COST_KEYS = ("cost", "cost_usd", "total_cost")


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakMemory:
    """Context manager measuring the peak RSS (and CUDA allocation) over its body, in MiB.

    Attributes (after exit): ``start_mb``, ``peak_mb``, ``delta_mb`` (peak minus start) and
    ``gpu_peak_mb`` (None without CUDA).
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.start_mb = self.peak_mb = self.delta_mb = 0.0
        self.gpu_peak_mb: float | None = None
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _rss())

    def __enter__(self) -> PeakMemory:
        start = _rss()
        self._peak = start
        self.start_mb = start / 2**20
        if _cuda():
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="peak-memory")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._peak = max(self._peak, _rss())
        self.peak_mb = round(self._peak / 2**20, 1)
        self.delta_mb = round(self.peak_mb - self.start_mb, 1)
        self.start_mb = round(self.start_mb, 1)
        if _cuda():
            import torch

            self.gpu_peak_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _cuda() -> bool:
    if "torch" not in sys.modules:  # nothing can be on a GPU without torch loaded
        return False
    import torch

    return bool(torch.cuda.is_available())


class CostTracker(UsageTracker):
    """Token usage plus any cost the backend reports about itself (read defensively), and the
    prompts the model was sent (``prompts``: a string per completion call, a message list per chat
    call), which the bench scores the reference after."""

    def __init__(self) -> None:
        super().__init__()
        self.reported_cost: float | None = None
        self.prompts: list[Any] = []

    def on_llm_start(self, serialized: Any, prompts: list[str], **kwargs: Any) -> None:
        self.prompts.extend(prompts)

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[Any]], **kwargs: Any
    ) -> None:
        self.prompts.extend(messages)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        super().on_llm_end(response, **kwargs)
        found: list[float] = []
        sources: list[Any] = [response.llm_output or {}]
        for gens in response.generations:
            for g in gens:
                sources.append(
                    getattr(getattr(g, "message", None), "response_metadata", None) or {}
                )
                sources.append(g.generation_info or {})
        for src in sources:
            if not isinstance(src, dict):
                continue
            for key in _COST_KEYS:
                value = src.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    found.append(float(value))
                    break
        if found:
            # llm_output often repeats the per-generation figure: count the batch total once
            self.reported_cost = (self.reported_cost or 0.0) + max(found)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(super().as_dict())
        if self.reported_cost is not None:
            out["reported_cost_usd"] = round(self.reported_cost, 8)
        return out


class Price(BaseModel):
    """What running a strategy costs, in any one currency (the table says USD)."""

    model_config = ConfigDict(extra="forbid")

    usd_per_1k_input_tokens: float = Field(0.0, ge=0.0)
    usd_per_1k_output_tokens: float = Field(0.0, ge=0.0)
    usd_per_hour: float = Field(0.0, ge=0.0)

    @classmethod
    def for_strategy(cls, name: str, settings: Any) -> Price:
        """The price of ``name`` from ``settings.bench.prices``, else compute time at the default rate."""
        b = settings.bench
        raw = {"usd_per_hour": b.compute_price_per_hour, **b.prices.get(name, {})}
        try:
            return cls(**raw)
        except ValidationError as err:
            raise config_error_from_validation(
                f"bench price of {name!r} (LLMAPPS_BENCH__PRICES)", err
            ) from err

    def cost(self, row: dict[str, Any]) -> float:
        """Cost of one row: its reported cost if any, else its tokens, plus its share of compute time."""
        tokens = (
            row.get("input_tokens", 0) * self.usd_per_1k_input_tokens
            + row.get("output_tokens", 0) * self.usd_per_1k_output_tokens
        ) / 1000.0
        reported = row.get("reported_cost_usd")
        compute = float(row.get("sample_s", 0.0)) * self.usd_per_hour / 3600.0
        return (float(reported) if isinstance(reported, (int, float)) else tokens) + compute


def versions() -> dict[str, str]:
    """Versions of python, the platform and the libraries a bench result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for dist in (
        "llmapps",
        "torch",
        "transformers",
        "peft",
        "langchain-core",
        "langchain-openai",
        "sentence-transformers",
        "faiss-cpu",
        "rouge-score",
        "sacrebleu",
        "numpy",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out
