"""What the web app does, without the web: articles to pick, strategies with their models, and
runs that report latency, tokens and whether an input was truncated to fit the model.

Nothing here imports Gradio, so it is usable (and tested) on its own; ``llmapps.ui.app`` puts a
page on top. The app's labels come from its ``AppSpec.ui`` (a ``UiSpec``), or from its keys.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler

from llmapps.apps import AppSpec, UiSpec, get_app
from llmapps.errors import InputError, LlmappsError
from llmapps.observe import UsageTracker

log = logging.getLogger(__name__)

#: Longest input a page may send (characters); the model's own budget truncates far earlier.
MAX_INPUT_CHARS = 200_000
_MODEL_FIELDS = ("adapter", "model", "base_model", "instruct_model")


def resolve_ui(spec: AppSpec) -> UiSpec:
    """The app's ``UiSpec`` with every empty field filled in from its keys."""
    ui = spec.ui or UiSpec()
    inputs = ui.inputs or {k: k.replace("_", " ").capitalize() for k in spec.input_keys}
    hidden = dict(ui.hidden)
    outputs = ui.outputs or {
        k: k.replace("_", " ").capitalize() for k in spec.reference_keys if k not in hidden
    }
    long_inputs = ui.long_inputs or ((list(inputs)[-1],) if inputs else ())
    return UiSpec(
        title=ui.title or spec.name,
        inputs=inputs,
        long_inputs=long_inputs,
        outputs=outputs,
        hidden=hidden,
        reveal=ui.reveal,
        rate_fields=ui.rate_fields or (*outputs, *hidden),
    )


class TruncationWatcher(BaseCallbackHandler):
    """Notices when a strategy shortened an input to fit its model's context.

    ``llmapps.prompting.truncate_to_fit`` marks the inputs it shortened with ``_truncated``; the
    strategies' ``fit_context`` step hands them on, and this callback sees that step's output.
    """

    def __init__(self) -> None:
        self.truncated = False

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        if isinstance(outputs, Mapping) and outputs.get("_truncated"):
            self.truncated = True


@dataclass
class StrategyEntry:
    """A strategy offered on the page: its name, the model it runs on, and its options."""

    name: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    strategy: Any = None  # a ready Strategy instance (library use), else built from the name

    @property
    def label(self) -> str:
        return f"{self.name} · {self.model}" if self.model else self.name


def _short(value: str) -> str:
    path = Path(value)
    return path.name if value.startswith(("/", ".", "~")) and path.name else value


def describe_model(name: str, options: Mapping[str, Any], strategy: Any = None) -> str:
    """The model a strategy would run on (its config's model fields, else the settings' default)."""
    from llmapps.settings import get_settings
    from llmapps.strategies.base import make_strategy

    try:
        strat = strategy or make_strategy(name, **options)
        config = strat.describe()
    except LlmappsError as err:
        return f"not configured: {str(err).splitlines()[0][:80]}"
    settings = get_settings()
    parts = []
    for key in _MODEL_FIELDS:
        if key not in config:
            continue
        value = config[key] or getattr(settings, key, None)
        if key == "model" and not value:
            value = getattr(getattr(settings, "service", None), "model", None)
        if value:
            parts.append(_short(str(value)))
    return " on ".join(parts) if parts else ""


class AppSession:
    """One app served to many page sessions: chains are built once per strategy and shared.

    Args:
        app: a registered app name.
        strategies: the strategies offered, by name (default: every registered one).
        strategy_options: per strategy name, the options its config gets (e.g. ``base_model``).
        extra_strategies: ready ``Strategy`` instances to offer too (library use).
        app_options: options for the app's ``build`` (e.g. ``{"variant": "two-step"}``).
        articles: extra inputs to pick from (e.g. ingested news), besides the app's samples.
        sample_split: the split of the app's bundled samples offered for picking.
    """

    def __init__(
        self,
        app: str,
        strategies: Sequence[str] | None = None,
        *,
        strategy_options: Mapping[str, Mapping[str, Any]] | None = None,
        extra_strategies: Sequence[Any] = (),
        app_options: Mapping[str, Any] | None = None,
        articles: Sequence[Mapping[str, Any]] = (),
        sample_split: str = "test",
    ) -> None:
        from llmapps.strategies.base import STRATEGIES

        self.app = app
        self.spec = get_app(app)
        self.ui = resolve_ui(self.spec)
        self.app_options = dict(app_options or {})
        opts = strategy_options or {}
        names = list(strategies) if strategies else STRATEGIES.names()
        self.entries: dict[str, StrategyEntry] = {}
        for name in names:
            STRATEGIES.get(name)  # unknown names fail here, with suggestions
            options = dict(opts.get(name, {}))
            self.entries[name] = StrategyEntry(name, describe_model(name, options), options)
        for strat in extra_strategies:
            self.entries[strat.name] = StrategyEntry(
                strat.name, describe_model(strat.name, {}, strat), strategy=strat
            )
        self.articles = self._articles(articles, sample_split)
        self._chains: dict[str, Any] = {}
        self._build_lock = threading.Lock()

    def _articles(
        self, extra: Sequence[Mapping[str, Any]], split: str
    ) -> dict[str, dict[str, Any]]:
        rows: list[Mapping[str, Any]] = list(extra)
        if self.spec.samples is not None:
            try:
                rows += self.spec.samples(split)
            except (LlmappsError, FileNotFoundError) as err:
                log.warning("no bundled %s samples of %s: %s", split, self.app, err)
        out: dict[str, dict[str, Any]] = {}
        for n, row in enumerate(rows):
            ident = str(row.get("id") or n)
            out[ident] = {k: str(row.get(k) or "") for k in self.ui.inputs}
        return out

    def article_choices(self) -> list[tuple[str, str]]:
        """(label, id) pairs for a picker: the first input (e.g. the title) labels each one."""
        first = next(iter(self.ui.inputs), None)
        return [
            (f"{(a.get(first) or ident)[:90]}  [{ident}]" if first else ident, ident)
            for ident, a in self.articles.items()
        ]

    def strategy_choices(self) -> list[tuple[str, str]]:
        return [(e.label, e.name) for e in self.entries.values()]

    def chain(self, name: str) -> Any:
        """The app's chain on strategy ``name``, built on first use (errors are ``LlmappsError``)."""
        from llmapps.apps import load_chain

        if name not in self.entries:
            raise InputError(
                f"strategy {name!r} is not offered here; pick one of {', '.join(self.entries)}"
            )
        with self._build_lock:
            if name not in self._chains:
                entry = self.entries[name]
                started = time.perf_counter()
                self._chains[name] = load_chain(
                    self.app,
                    entry.strategy or name,
                    app_options=self.app_options,
                    **({} if entry.strategy else entry.options),
                )
                log.info("built %s on %s in %.1f s", self.app, name, time.perf_counter() - started)
            return self._chains[name]

    def check_input(self, values: Mapping[str, Any]) -> dict[str, str]:
        """The input dict for the app, or ``InputError`` saying which box to fill."""
        inputs = {k: str(values.get(k) or "").strip() for k in self.ui.inputs}
        long_keys = self.ui.long_inputs or tuple(inputs)
        empty = [self.ui.inputs[k] for k in long_keys if not inputs.get(k)]
        if empty:
            raise InputError(f"{' and '.join(empty)} is empty: paste one or pick one from the list")
        too_long = [
            f"{self.ui.inputs[k]} ({len(v):,} characters)"
            for k, v in inputs.items()
            if len(v) > MAX_INPUT_CHARS
        ]
        if too_long:
            raise InputError(
                f"{', '.join(too_long)} is longer than the {MAX_INPUT_CHARS:,} characters "
                "the page accepts: paste a shorter text"
            )
        return inputs

    def run(self, name: str, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Run ``inputs`` (checked dicts) through strategy ``name`` in one batch.

        Each result has the app's output keys plus ``latency_s``, token counts, ``truncated`` and,
        for an input that failed, ``error`` (the others still finish). Building the strategy may
        raise an ``LlmappsError`` (no model, no endpoint).
        """
        chain = self.chain(name)
        trackers = [(UsageTracker(), TruncationWatcher()) for _ in inputs]
        started = time.perf_counter()
        outs = chain.batch(
            [dict(x) for x in inputs],
            config=[{"callbacks": list(t)} for t in trackers],
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - started
        rows = []
        for out, (usage, watcher) in zip(outs, trackers, strict=True):
            if isinstance(out, Exception):
                log.info("%s failed on one input: %s", name, out, exc_info=out)
                row: dict[str, Any] = {"valid": False, "error": error_text(out)}
            else:
                row = dict(out) if isinstance(out, Mapping) else {"output": out}
            row.update(
                latency_s=round(elapsed, 3),
                batch_size=len(inputs),
                truncated=watcher.truncated,
                **usage.as_dict(),
            )
            rows.append(row)
        return rows


def error_text(err: BaseException) -> str:
    """An error as one line for a page: our errors as they are, others with their type."""
    if isinstance(err, LlmappsError):
        return str(err)
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]


def status_line(row: Mapping[str, Any], label: str = "") -> str:
    """The facts under a result: latency, tokens, validity, truncation, or the error."""
    if row.get("error"):
        return f"{label + ': ' if label else ''}error: {row['error']}"
    parts = [
        f"{row.get('latency_s', 0):.2f} s",
        f"{row.get('input_tokens', 0)} tokens in / {row.get('output_tokens', 0)} out",
    ]
    if row.get("batch_size", 1) > 1:
        parts.append(f"batch of {row['batch_size']}")
    if "valid" in row:
        parts.append(
            "format ok"
            if row["valid"]
            else "format not followed: " + ", ".join(row.get("errors") or [])
        )
    line = f"{label + ': ' if label else ''}{'; '.join(parts)}"
    if row.get("truncated"):
        line = (
            "Notice: the input was longer than the model's budget and was truncated to fit; "
            "the result only covers its beginning.\n" + line
        )
    return line
