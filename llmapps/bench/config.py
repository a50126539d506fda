"""What a bench runs (``BenchConfig``, saved as ``config.json``) and the ``--sweep`` flag's values."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BenchConfig(BaseModel):
    """What a bench runs; saved as ``config.json`` beside the results.

    Attributes:
        app: registered app name.
        strategies: strategy names (default: every registered strategy).
        split: the app's sample split.
        limit: use only the first ``limit`` samples.
        batch_size: samples per batch (latency is measured per batch).
        strategy_options: per strategy, config options over its offline demo options.
        app_options: options of the app (e.g. ``{"variant": "two-step"}``).
        perplexity: score the reference reply after each strategy's own prompt, under its local
            model (``llmapps.evaluate.perplexity.continuation_nll``).
        judge: a strategy used as LLM judge through ``judge_app`` (None: no judge).
        judge_app: the app that wraps the judge prompt (default: the app's ``judge_app``).
        retry_failed: run rows that failed in an earlier run again.
        sweep: option name -> values; each strategy that has the option runs once per value
            (the product over several options), labelled ``<strategy>[<key>=<value>,...]``.
    """

    model_config = ConfigDict(extra="forbid")

    app: str
    strategies: list[str] = Field(default_factory=list)
    split: str = "test"
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)
    strategy_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    app_options: dict[str, Any] = Field(default_factory=dict)
    perplexity: bool = True
    judge: str | None = None
    judge_app: str | None = None
    retry_failed: bool = False
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    def runs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(strategy, label, swept options)`` for every run of this bench, in order."""
        import itertools

        from llmapps.strategies.base import STRATEGIES

        out: list[tuple[str, str, dict[str, Any]]] = []
        for name in self.strategies:
            fields = STRATEGIES.get(name).config_class.model_fields
            keys = [k for k in self.sweep if k in fields]
            if not keys:
                out.append((name, name, {}))
                continue
            # a label names a file: a path value shows as its last part (its whole self, slashes
            # replaced, where two values share a last part)
            short = {k: len({_value_text(v, short=True) for v in self.sweep[k]}) for k in keys}
            for values in itertools.product(*(self.sweep[k] for k in keys)):
                opts = dict(zip(keys, values, strict=True))
                label = ",".join(
                    f"{k}={_value_text(v, short=short[k] == len(self.sweep[k]))}"
                    for k, v in opts.items()
                )
                out.append((name, f"{name}[{label}]", opts))
        return out


def parse_sweep(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["structured=on,off"]`` -> ``{"structured": ["on", "off"]}`` (``--sweep`` flags; each
    value a YAML scalar as ``--set`` reads it, ``on``/``off`` kept as words)."""
    from llmapps.options import parse_assignments, parse_value

    out: dict[str, list[Any]] = {}
    for item in items:
        ((key, _),) = parse_assignments([item.split(",")[0]], "--sweep").items()
        raw = item.partition("=")[2]
        words = [v.strip() for v in raw.split(",") if v.strip()]
        out[key] = [v if v in ("on", "off") else parse_value(v) for v in words]
    return out


def _value_text(value: Any, *, short: bool = True) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value)
    if "/" in text or os.sep in text:  # a path: never a folder of its own under samples/
        text = text.rstrip("/" + os.sep)
        return Path(text).name if short else text.strip("/").replace("/", "_").replace(os.sep, "_")
    return text
