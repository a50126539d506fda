"""Callback handlers that measure what a chain did: tokens in and out, model calls."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult


class UsageTracker(BaseCallbackHandler):
    """Adds up token usage reported by any LangChain model (local, chat or OpenAI-compatible).

    Pass one per input (``chain.batch(xs, config=[{"callbacks": [t]} for t in trackers])``) to get
    per-sample counts even from one batched call.
    """

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.calls = 0

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.calls += 1
        counted = False
        for gens in response.generations:
            for g in gens:
                usage = getattr(getattr(g, "message", None), "usage_metadata", None)
                info = g.generation_info or {}
                if usage:
                    self.input_tokens += int(usage.get("input_tokens", 0))
                    self.output_tokens += int(usage.get("output_tokens", 0))
                    counted = True
                elif "input_tokens" in info:
                    self.input_tokens += int(info["input_tokens"])
                    self.output_tokens += int(info.get("output_tokens", 0))
                    counted = True
        if not counted and response.llm_output:
            usage = response.llm_output.get("token_usage") or {}
            self.input_tokens += int(usage.get("prompt_tokens", 0))
            self.output_tokens += int(usage.get("completion_tokens", 0))

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "llm_calls": self.calls,
        }
