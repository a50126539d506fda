"""``llmapps demo``: an app on a few bundled test samples with every registered strategy, side by side."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmapps.errors import LlmappsError

if TYPE_CHECKING:
    from llmapps.bench.run import OptionsFor

log = logging.getLogger(__name__)


def _why_not(row: dict[str, Any]) -> str:
    """``no`` and the first reason a row is invalid (a structured reply that did not close, a
    riddle that names its answer...), short enough for the table's column."""
    errors = row.get("errors") or ([row["error"]] if row.get("error") else [])
    reason = " ".join(str(errors[0]).split()) if errors else ""
    return f"no: {reason[:48]}" if reason else "no"


def run_demo(
    app: str,
    strategies: list[str] | None = None,
    *,
    n: int = 5,
    app_options: dict[str, Any] | None = None,
    strategy_options: Mapping[str, dict[str, Any]] | None = None,
    options: OptionsFor | None = None,
    settings: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run ``app`` on ``n`` test samples with each strategy; print and return the results.

    ``strategy_options`` are given options per strategy name (the command's flags); ``options``
    says what each strategy runs with over them, as the bench's ``OptionsFor`` does
    (``llmapps demo`` passes ``llmapps.compose.strategy_options``, the defaults every surface
    shares; default: the given options alone), and a strategy it gives a reason for is skipped
    with that reason. The table shows the app's ``demo_columns`` (default: its reference keys),
    the sample's references above the strategies' outputs. ``settings`` (default: the
    environment's) is what the strategies run under (``--tiny``: the tiny models).
    """
    from rich.console import Console
    from rich.table import Table

    from llmapps.apps import default_corpus, get_app, load_chain
    from llmapps.bench.run import given_options
    from llmapps.models.tiny import ensure_tiny_models
    from llmapps.runner import run_batches
    from llmapps.settings import get_settings
    from llmapps.strategies.base import STRATEGIES

    console = Console()
    settings = settings or get_settings()
    spec = get_app(app)
    spec.parse_options(app_options)  # a bad option fails before any model loads
    if spec.samples is None:
        raise LlmappsError(f"the app {app!r} has no bundled samples to demo")
    samples = spec.samples("test")[:n]
    names = strategies or STRATEGIES.names()
    console.print(f"[bold]{app}[/bold] on {len(samples)} test samples with: {', '.join(names)}")
    if {"tiny-base", "tiny-instruct"} & {settings.base_model, settings.instruct_model}:
        console.print(f"models: {settings.models_dir} (built on first use)")
        ensure_tiny_models(settings.models_dir, corpus=default_corpus)
    inputs = [{k: s[k] for k in ("id", *spec.input_keys) if k in s} for s in samples]
    results: dict[str, list[dict[str, Any]]] = {}
    timing: dict[str, tuple[float, int, str]] = {}
    for name in names:
        given = dict((strategy_options or {}).get(name) or {})
        with (options or given_options)(name, settings, given) as (opts, reason):
            if reason is not None:
                console.print(f"[yellow]{name}: skipped: {reason}[/yellow]")
                continue
            assert opts is not None
            try:
                started = time.perf_counter()
                chain = load_chain(app, name, app_options=app_options, **opts)
                rows = run_batches(chain, inputs, batch_size=len(inputs), desc=name)
                timing[name] = (
                    time.perf_counter() - started,
                    sum(r.get("output_tokens", 0) for r in rows),
                    "",
                )
            except LlmappsError as err:
                console.print(f"[red]{name}: {err}[/red]")
                timing[name] = (0.0, 0, str(err))
                continue
        results[name] = rows
    columns = spec.demo_columns or {k: k for k in spec.reference_keys} or {"output": "output"}
    keys = list(columns)
    for i, sample in enumerate(samples):
        table = Table(
            title=f"{sample.get('title', sample.get('id'))}", show_lines=True, expand=True
        )
        table.add_column("strategy", no_wrap=True)
        for n_col, key in enumerate(keys):
            table.add_column(columns[key], ratio=3 if n_col == 0 else 1)
        table.add_column("ok", no_wrap=True)
        table.add_column("tokens in/out", no_wrap=True)
        refs = [str(sample.get(f"reference_{k}", "")) for k in keys]
        if any(refs):
            table.add_row("reference", *refs, "", "")
        for name, rows in results.items():
            r = rows[i]
            first = r.get(keys[0]) or r.get("error") or " ".join((r.get("raw") or "").split())[:200]
            cells = [str(first), *(str(r.get(k, "")) for k in keys[1:])]
            table.add_row(
                name,
                *cells,
                "yes" if r.get("valid") else _why_not(r),
                f"{r.get('input_tokens', 0)}/{r.get('output_tokens', 0)}",
            )
        console.print(table)
    summary = Table(title="per strategy")
    for col in (
        "strategy",
        "valid",
        "wall s (load+generate)",
        "s / sample",
        "output tokens",
        "tokens/s",
        "error",
    ):
        summary.add_column(col)
    for name, (secs, toks, error) in timing.items():
        rows = results.get(name, [])
        valid = sum(1 for r in rows if r.get("valid"))
        summary.add_row(
            name,
            f"{valid}/{len(rows)}",
            f"{secs:.1f}",
            f"{secs / max(1, len(rows)):.2f}",
            str(toks),
            f"{toks / secs:.1f}" if secs else "-",
            error[:60],
        )
    console.print(summary)
    return results
