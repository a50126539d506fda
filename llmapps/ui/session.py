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

from llmapps.api.apps import AppSpec, UiSpec, get_app
from llmapps.errors import InputError, LlmappsError, one_line
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
    """A strategy offered on the page: its name (a bench row's label, e.g.
    ``few-shot[structured=on]``), the model it runs on, its options, and why it cannot run
    (``reason``; None: it can)."""

    name: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    strategy: Any = None  # a ready Strategy instance (library use), else built from the name
    kind: str = ""  # the registered strategy (default: name)
    reason: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} · {self.model}" if self.model else self.name

    @property
    def runnable(self) -> bool:
        return self.reason is None


def _short(value: str) -> str:
    path = Path(value)
    return path.name if value.startswith(("/", ".", "~")) and path.name else value


def describe_model(name: str, options: Mapping[str, Any], strategy: Any = None) -> str:
    """The model a strategy would run on (its config's model fields, else the settings' default).

    Raises:
        LlmappsError: the options do not make a strategy (its one line says why).
    """
    from llmapps.settings import get_settings
    from llmapps.strategies.base import make_strategy

    strat = strategy or make_strategy(name, **options)
    config = strat.describe()
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


def make_entry(
    label: str,
    kind: str,
    options: Mapping[str, Any],
    strategy: Any = None,
    reason: str | None = None,
) -> StrategyEntry:
    """The page's entry for a strategy; one whose options do not build is kept with its reason."""
    model = ""
    if reason is None:
        try:
            model = describe_model(kind, options, strategy)
        except LlmappsError as err:
            reason = one_line(err)
    return StrategyEntry(label, model, dict(options), strategy, kind, reason)


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
        composed: the strategy set of ``llmapps.compose.compose_strategies`` (the bench's and the
            demo's): offered instead of ``strategies``, those that cannot run listed with why.
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
        composed: Sequence[Any] = (),
    ) -> None:
        from llmapps.strategies.base import STRATEGIES

        self.app = app
        self.spec = get_app(app)
        self.ui = resolve_ui(self.spec)
        self.app_options = dict(app_options or {})
        opts = strategy_options or {}
        self.entries: dict[str, StrategyEntry] = {}
        for c in composed:
            self.entries[c.label] = make_entry(c.label, c.name, c.options, reason=c.reason)
        if not composed:
            for name in list(strategies) if strategies else STRATEGIES.names():
                STRATEGIES.get(name)  # unknown names fail here, with suggestions
                self.entries[name] = make_entry(name, name, dict(opts.get(name, {})))
        for strat in extra_strategies:
            self.entries[strat.name] = make_entry(strat.name, strat.name, {}, strat)
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
        """(label, name) of the strategies that can run: the only ones a picker offers."""
        return [(e.label, e.name) for e in self.entries.values() if e.runnable]

    def unavailable(self) -> list[tuple[str, str]]:
        """(name, one-line reason with the fix) of each strategy that cannot run here."""
        return [(e.name, e.reason) for e in self.entries.values() if e.reason is not None]

    def prepare(self) -> None:
        """Build every runnable strategy's chain now (models load once, here), so one that
        fails to build is listed with its reason instead of offered and failing on first use."""
        for entry in self.entries.values():
            if not entry.runnable:
                continue
            try:
                self.chain(entry.name)
            except Exception as err:  # any backend fault: this strategy is listed, not offered
                log.debug("%s cannot run", entry.name, exc_info=True)
                entry.reason = one_line(err)
                log.warning("%s is not offered: %s", entry.name, entry.reason)

    def chain(self, name: str) -> Any:
        """The app's chain on strategy ``name``, built on first use (errors are ``LlmappsError``)."""
        from llmapps.options import as_kwargs
        from llmapps.strategies.base import make_strategy

        if name not in self.entries:
            offered = [n for n, e in self.entries.items() if e.runnable]
            raise InputError(
                f"strategy {str(name)[:80]!r} is not offered here; pick one of {', '.join(offered)}"
            )
        entry = self.entries[name]
        if entry.reason is not None and name not in self._chains:
            raise InputError(f"{name} cannot run here: {entry.reason}")
        with self._build_lock:
            if name not in self._chains:
                started = time.perf_counter()
                # what compose.load_chain does: the strategy (made here from the options the
                # composed set gives it, unless given ready) and the app built on it
                options = as_kwargs(self.spec.parse_options(self.app_options))  # before models
                strategy = entry.strategy or make_strategy(entry.kind or name, **entry.options)
                self._chains[name] = self.spec.build(strategy, **options)
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
                if isinstance(out, LlmappsError):  # said in the page; no traceback for it
                    log.debug("%s failed on one input: %s", name, out)
                else:
                    log.warning("%s failed on one input: %s", name, out, exc_info=out)
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
    """An error as one line for a page, in words: our errors as they say it, others' message
    without the Python class name."""
    if isinstance(err, LlmappsError):
        return one_line(err)
    text = one_line(err) if str(err).strip() else "an unexpected failure"
    return f"{text[:300]} (the server log has the details)"


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
