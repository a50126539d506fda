"""The metric registry: every number the bench scores, summarises, tabulates and plots.

A ``Metric`` names a column (the key in a row's ``metrics`` and in the summary), how a batch of
rows computes it (``compute``; None when something else measures it: the bench's speed and
memory, the judge, an app's ``AppSpec.score``), whether higher is better, how rows aggregate into
the summary, and the short label of the printed tables. Scoring (``Scorer.score``), the summary
(``aggregate``), the tables and the plots all read this registry; no list of names is kept
anywhere else.

Families: ``per="field"`` makes one column per reference field (``rougeL`` -> ``rougeL_riddle``),
``per="k"`` one per solvability cut-off (``solvability`` -> ``solvability@1``).

To add a metric, register it once (here, in an app's ``AppSpec.metrics``, or through the
``llmapps.metrics`` entry-point group of your package)::

    def shouting(batch: Batch) -> list[dict[str, float]]:
        return [{"shouting": float(str(r.get("riddle", "")).isupper())} for r in batch.rows]

    register_metric(Metric("shouting", label="LOUD", higher_is_better=False, compute=shouting))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llmapps.registry import Registry

if TYPE_CHECKING:
    from llmapps.evaluate.scoring import MetricsConfig, Scorer

# per-row values of one metric for a batch: one dict per row, in order (a metric may set several
# keys, e.g. every solvability@k); a key left out means "not scored for this row"
Compute = Callable[["Batch"], list[dict[str, Any]]]
# (column, rows, per-row metrics, references by id, config) -> the summary value, or None
Aggregate = Callable[
    [str, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]], Mapping[str, Any], Any],
    Any,
]


@dataclass(frozen=True)
class Batch:
    """What a metric's ``compute`` sees: the rows, their references (aligned), the config, the
    scorer (for its solvability index) and texts no output may copy (worked examples)."""

    rows: Sequence[Mapping[str, Any]]
    refs: Sequence[Mapping[str, Any]]
    config: MetricsConfig
    scorer: Scorer
    copy_texts: Sequence[str] = ()


@dataclass(frozen=True)
class Metric:
    """One registered metric.

    Attributes:
        name: the column, or the stem of a family (see ``per``).
        label: its header in the printed tables (default: the name).
        higher_is_better: True, False, or None for a plain count (no "best" in the tables).
        aggregation: ``"mean"`` of the rows' values; ``"none"`` (kept per row only);
            ``"summary"`` (the bench's summary computes it from its runs: speed, memory); or a
            function ``(column, rows, metrics, references, config) -> value``.
        compute: per-row values for a batch (``Batch``); None when measured elsewhere.
        per: ``""`` one column; ``"field"`` one per reference field (``<name>_<field>``, the
            tables show the primary field's); ``"k"`` one per solvability cut-off (``<name>@k``).
        table: ``"all"`` (Markdown and terminal tables), ``"terminal"`` (the terminal's only) or
            ``""`` (JSON and CSV only).
        group: ``"quality"`` or ``"speed"`` (speed, cost and memory): which table it is in.
        rank: order in the tables (lower first).
        description: one line of what it measures.
    """

    name: str
    label: str = ""
    higher_is_better: bool | None = True
    aggregation: Literal["mean", "none", "summary"] | Aggregate = "mean"
    compute: Compute | None = None
    per: Literal["", "field", "k"] = ""
    table: Literal["all", "terminal", ""] = "all"
    group: Literal["quality", "speed"] = "quality"
    rank: int = 500
    description: str = ""

    def columns(self, config: Any) -> list[str]:
        """The columns of this metric under ``config`` (every field or cut-off of a family)."""
        if self.per == "field":
            return [f"{self.name}_{f}" for f in config.fields]
        if self.per == "k":
            return [f"{self.name}@{k}" for k in config.solvability_k]
        return [self.name]

    def shown(self, config: Any) -> list[str]:
        """The columns the tables show: a field family's primary field only."""
        if self.per == "field":
            return [f"{self.name}_{config.primary_field}"]
        return self.columns(config)


METRICS: Registry[Metric] = Registry(
    "metric", group="llmapps.metrics", pattern=re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
)


_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from llmapps.evaluate.builtin_metrics import BUILTINS

    for metric in BUILTINS:
        METRICS.register(metric.name, metric)


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (the same object twice is fine, two of a name an error)."""
    _load_builtins()
    METRICS.register(metric.name, metric)
    return metric


def metrics() -> list[Metric]:
    """Every registered metric, in table order."""
    _load_builtins()
    return sorted((METRICS.get(n) for n in METRICS.names()), key=lambda m: (m.rank, m.name))


def metric_for(column: str) -> Metric | None:
    """The metric a column belongs to (``rougeL_riddle`` -> ``rougeL``), or None if unregistered."""
    _load_builtins()
    names = set(METRICS.names())
    if column in names:
        return METRICS.get(column)
    stem, at, _ = column.partition("@")
    if at and stem in names and METRICS.get(stem).per == "k":
        return METRICS.get(stem)
    head = column
    while "_" in head:
        head = head.rsplit("_", 1)[0]
        if head in names and METRICS.get(head).per == "field":
            return METRICS.get(head)
    return None


def lower_is_better(column: str) -> bool:
    """True when the column's metric says lower is better (unknown columns: higher)."""
    m = metric_for(column)
    return m is not None and m.higher_is_better is False


def direction(column: str) -> str:
    """``"higher is better"``, ``"lower is better"`` or ``""`` (a count) for a plot's title."""
    m = metric_for(column)
    if m is not None and m.higher_is_better is None:
        return ""
    return "lower is better" if lower_is_better(column) else "higher is better"


def label(column: str, primary: str | None = None) -> str:
    """The short header of ``column``: its metric's label, with the field when not the primary."""
    m = metric_for(column)
    if m is None:
        return column
    text = m.label or m.name
    if m.per == "field":
        field = column[len(m.name) + 1 :]
        return text if field == primary else f"{text} {field}"
    if m.per == "k":
        return f"{text}@{column.partition('@')[2]}"
    return text
