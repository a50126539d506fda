"""The metric contract: ``Metric``, what its ``compute`` sees (``Batch``), and the ``METRICS``
registry every number the bench scores, summarises, tabulates and plots is registered in.

A ``Metric`` names a column (the key in a row's ``metrics`` and in the summary), how a batch of
rows computes it (``compute``; None when something else measures it: the bench's speed and
memory, the judge, an app's ``AppSpec.score``), whether higher is better, how rows aggregate into
the summary, and the short label of the printed tables. Scoring (``Scorer.score``), the summary
(``aggregate``), the tables and the plots all read this registry; no list of names is kept
anywhere else.

Families: ``per="field"`` makes one column per reference field (``rougeL`` -> ``rougeL_summary``),
``per="k"`` one per cut-off of the config's ``solvability_k`` (``name@k``).

Where metrics come from: the generic ones of ``llmapps.evaluate`` register when
``llmapps.evaluate.metrics`` is imported (everything that scores imports it); an app's or a
package's own through the ``llmapps.metrics`` entry-point group (one entry per metric, loaded on
first lookup) or ``register_metric`` (``AppSpec.register_metrics`` for an app's ``metrics``)::

    def shouting(batch: Batch) -> list[dict[str, float]]:
        return [{"shouting": float(str(r.get("title", "")).isupper())} for r in batch.rows]

    register_metric(Metric("shouting", label="LOUD", higher_is_better=False, compute=shouting))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llmapps.registry import Registry

__all__ = [
    "METRICS",
    "Aggregate",
    "Batch",
    "Compute",
    "Metric",
    "direction",
    "label",
    "lower_is_better",
    "metric_for",
    "metric_table",
    "metrics",
    "register_metric",
]

# per-row values of one metric for a batch: one dict per row, in order (a metric may set several
# keys, e.g. every name@k); a key left out means "not scored for this row"
Compute = Callable[["Batch"], list[dict[str, Any]]]
# (column, rows, per-row metrics, references by id, config) -> the summary value, or None
Aggregate = Callable[
    [str, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]], Mapping[str, Any], Any],
    Any,
]


@dataclass(frozen=True)
class Batch:
    """What a metric's ``compute`` sees: the rows, their references (aligned), the config (a
    ``llmapps.evaluate.scoring.MetricsConfig``: which fields to read), the scorer (every reference
    of the split by id, and ``index``: the split's source documents embedded, for metrics that
    retrieve) and texts no output may copy (the worked examples a strategy was shown)."""

    rows: Sequence[Mapping[str, Any]]
    refs: Sequence[Mapping[str, Any]]
    config: Any
    scorer: Any = None
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
            tables show the primary field's); ``"k"`` one per cut-off (``<name>@k``).
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


_DIRECTION = {"+": True, "-": False, "=": None}


def metric_table(
    table: str,
    *,
    group: Literal["quality", "speed"] = "quality",
    compute: Mapping[str, Compute] | None = None,
    aggregate: Mapping[str, Any] | None = None,
) -> list[Metric]:
    """The ``Metric`` of each line of ``table``, so a set of metrics reads as a table.

    A line is ``name | label | direction | rank | per | table | description``: direction ``+``
    (higher is better), ``-`` (lower) or ``=`` (a count); ``-`` leaves label, per and table empty
    (``table`` empty: JSON and CSV only). ``compute`` and ``aggregate`` map names to a metric's
    computation and aggregation (default: none, and the mean; ``"summary"`` for the speed group).
    """
    compute, aggregate = compute or {}, aggregate or {}
    out = []
    for line in table.strip().splitlines():
        name, label, way, rank, per, shown, description = (c.strip() for c in line.split("|"))
        out.append(
            Metric(
                name,
                label="" if label == "-" else label,
                higher_is_better=_DIRECTION[way],
                aggregation=aggregate.get(name, "summary" if group == "speed" else "mean"),
                compute=compute.get(name),
                per="" if per == "-" else per,  # type: ignore[arg-type]
                table="" if shown == "-" else shown,  # type: ignore[arg-type]
                group=group,
                rank=int(rank),
                description=description,
            )
        )
    return out


def metrics() -> list[Metric]:
    """Every registered metric (entry points loaded), in table order."""
    return sorted((METRICS.get(n) for n in METRICS.names()), key=lambda m: (m.rank, m.name))


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (the same object twice is fine, two of a name an error,
    an entry point's included)."""
    metrics()  # load the entry points first, so a clash with one of them is seen
    METRICS.register(metric.name, metric)
    return metric


def metric_for(column: str) -> Metric | None:
    """The metric a column belongs to (``rougeL_summary`` -> ``rougeL``), or None if unregistered."""
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
