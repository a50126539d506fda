"""The metric registry (``llmapps.evaluate.metrics``): every column scoring writes belongs to a
registered metric, families resolve (``rougeL_riddle`` -> ``rougeL``), and adding a metric is one
registration that scoring, the summary, the tables and the direction of "best" all pick up."""

from __future__ import annotations

from typing import Any

import pytest

from llmapps.errors import ConfigError
from llmapps.evaluate.metrics import (
    METRICS,
    Batch,
    Metric,
    direction,
    label,
    lower_is_better,
    metric_for,
    metrics,
    register_metric,
)


def _config() -> Any:
    from llmapps.apps import get_app
    from llmapps.evaluate.scoring import MetricsConfig

    fields = get_app("news-riddle").metric_fields
    return MetricsConfig.for_fields(
        ["summary", "riddle", "answer"], app_fields=fields, semantic=False
    )


def _rows(articles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": a["id"],
            "summary": a["reference_summary"],
            "riddle": a["reference_riddle"],
            "answer": "no idea",
        }
        for a in articles[:3]
    ]


def test_families_and_directions_resolve() -> None:
    assert metric_for("rougeL_riddle").name == "rougeL"  # type: ignore[union-attr]
    assert metric_for("solvability@3").name == "solvability"  # type: ignore[union-attr]
    assert metric_for("answer_f1").name == "answer_f1"  # type: ignore[union-attr]
    assert metric_for("not_a_metric") is None and not lower_is_better("not_a_metric")
    assert lower_is_better("leakage") and lower_is_better("latency_p95_s")
    assert not lower_is_better("solvability@1") and direction("words_riddle") == ""
    assert (
        label("solvability@1") == "solv@1" and label("rougeL_summary", "riddle") == "rougeL summary"
    )


def test_every_scored_and_summarised_column_is_registered(
    test_articles: list[dict[str, Any]],
) -> None:
    from llmapps.evaluate.scoring import Scorer, aggregate

    config = _config()
    rows = _rows(test_articles)
    per_row = Scorer(test_articles[:3], config).score(rows)
    summary = aggregate(
        [{**r, "metrics": m} for r, m in zip(rows, per_row, strict=True)],
        config,
        {a["id"]: a for a in test_articles[:3]},
    )
    columns = {k for m in per_row for k in m} | set(summary)
    assert {"rougeL_riddle", "bleu_riddle", "leakage", "answer_f1", "solvability@1"} <= columns
    assert all(metric_for(c) is not None for c in columns), sorted(
        c for c in columns if metric_for(c) is None
    )
    assert "source_rank" not in summary  # a per-row part, not summarised


def test_adding_a_metric_is_one_registration(test_articles: list[dict[str, Any]]) -> None:
    from llmapps.bench.report import quality_columns, rich_tables
    from llmapps.evaluate.scoring import Scorer, aggregate

    def shouting(batch: Batch) -> list[dict[str, Any]]:
        return [
            {"test_shouting": float(str(r.get("riddle", "")).isupper())}
            if r.get("loud_test")
            else {}
            for r in batch.rows
        ]

    register_metric(
        Metric("test_shouting", label="LOUD", higher_is_better=False, compute=shouting, rank=95)
    )
    config = _config()
    rows = [{**r, "loud_test": True} for r in _rows(test_articles)]
    rows[0]["riddle"] = rows[0]["riddle"].upper()
    per_row = Scorer(test_articles[:3], config).score(rows)
    assert [m["test_shouting"] for m in per_row] == [1.0, 0.0, 0.0]  # scoring ran it
    summary = aggregate([{**r, "metrics": m} for r, m in zip(rows, per_row, strict=True)], config)
    assert summary["test_shouting"] == pytest.approx(1 / 3)  # the summary means it
    table_rows = [
        {"strategy": "a", "samples": 3, "of": 3, "test_shouting": 0.1},
        {"strategy": "b", "samples": 3, "of": 3, "test_shouting": 0.5},
    ]
    cols = quality_columns(config, table_rows)
    assert cols.index("test_shouting") > cols.index("answer_f1") if "answer_f1" in cols else cols
    quality = rich_tables(table_rows, config)[0]
    assert "LOUD" in [c.header for c in quality.columns]  # the tables label it
    loud = next(c for c in quality.columns if c.header == "LOUD")
    assert next(iter(loud.cells)) == "[bold]0.1[/bold]"  # lower is better: the smaller one is best


def test_a_second_metric_of_a_name_is_an_error() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_metric(Metric("leakage"))
    with pytest.raises(ConfigError, match="metric name 'bad name' must match"):
        METRICS.register("bad name", Metric("bad name"))


def test_builtins_say_what_they_are() -> None:
    from llmapps.evaluate.builtin_metrics import BUILTINS

    assert {m.name for m in BUILTINS} <= {m.name for m in metrics()}
    for m in BUILTINS:
        assert m.group in ("quality", "speed") and (m.description or not m.table), m.name


def test_the_metrics_command_lists_the_registry(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmapps.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["metrics"]) == 0
    out = capsys.readouterr().out
    assert "solvability@<k>" in out and "rougeL_<field>" in out and "corpus_bleu" in out
    assert any("leakage" in line and "lower" in line for line in out.splitlines())


def test_every_registered_metric_says_what_it_is_and_apps_own_theirs() -> None:
    """Built-in, an app's or a package's (entry points): every registered metric is picked up
    here by name; an entry point's metric is computed by its package, not by the core."""
    from importlib.metadata import entry_points

    for m in metrics():
        if m.name.startswith("test_"):
            continue  # registered by a test of this file
        assert m.group in ("quality", "speed") and (m.description or not m.table), m.name
        assert m.per in ("", "field", "k") and m.label.strip() == m.label, m.name
    for ep in entry_points(group="llmapps.metrics"):
        m = METRICS.get(ep.name)
        assert m.name == ep.name, f"entry point {ep.name} holds the metric {m.name}"
        assert m.compute is None or not m.compute.__module__.startswith("llmapps."), ep.name
    leak = metric_for("leakage")
    assert leak is not None and leak.compute is not None
    assert leak.compute.__module__ == "chains.news_riddle_metrics"  # the app owns it


def test_a_metric_table_reads_one_metric_a_line() -> None:
    from llmapps.api.metrics import metric_table

    def compute(batch: Batch) -> list[dict[str, Any]]:
        return [{} for _ in batch.rows]

    a, b = metric_table(
        """
        test_a | A | - | 7 | field | terminal | one
        test_b | - | = | 8 | -     | -        | two
        """,
        compute={"test_a": compute},
        aggregate={"test_b": "none"},
    )
    assert (a.name, a.label, a.higher_is_better, a.rank, a.per, a.table) == (
        "test_a", "A", False, 7, "field", "terminal",
    )  # fmt: skip
    assert a.compute is compute and a.aggregation == "mean" and a.description == "one"
    assert (b.label, b.higher_is_better, b.per, b.table) == ("", None, "", "")
    assert b.compute is None and b.aggregation == "none"
