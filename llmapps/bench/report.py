"""Turn a bench folder's rows into the summary: one row per strategy, as Markdown, CSV, JSON,
plots (matplotlib, Agg) and a rich table; optionally logged to MLflow."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError

# What each column is (direction, label, which table) is the metric registry's to say
# (llmapps.evaluate.metrics); every aggregate goes to JSON and CSV.


def speed_columns(table: str = "all") -> list[str]:
    """The speed, cost and memory columns of the Markdown (``"all"``) or terminal table."""
    from llmapps.evaluate.metrics import metrics

    wanted = ("all",) if table == "all" else ("all", "terminal")
    return [m.name for m in metrics() if m.group == "speed" and m.table in wanted]


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 4)


def summarise(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    status: Mapping[str, Any],
    metrics_config: Any,
    references: Mapping[str, Mapping[str, Any]],
    total: int,
) -> dict[str, Any]:
    """The summary row of one strategy from its per-sample rows and its run status."""
    from llmapps.evaluate.scoring import aggregate

    ok = [r for r in rows if not r.get("error")]
    errors = [r for r in rows if r.get("error")]
    state = status.get("status") or ("ran" if rows else "not run")
    failures = len(errors) + (total - len(rows) if state == "failed" else 0)
    out: dict[str, Any] = {
        "strategy": name,
        "status": state,
        "samples": len(rows),
        "of": total,
        "failures": failures,
        "error": status.get("error") or (errors[0]["error"] if errors else None),
    }
    if rows:
        out.update(aggregate(rows, metrics_config, references))
        if status.get("scores_perplexity") is False or "perplexity" not in out:
            out["perplexity"] = "n/a"
        lat = [float(r["latency_s"]) for r in ok if "latency_s" in r]
        secs = sum(float(r.get("sample_s", 0.0)) for r in ok)
        toks = sum(int(r.get("output_tokens", 0)) for r in ok)
        out.update(
            latency_p50_s=_percentile(lat, 50),
            latency_p95_s=_percentile(lat, 95),
            sample_s=round(secs / len(ok), 4) if ok else None,
            tokens_per_s=round(toks / secs, 2) if secs > 0 else None,
            output_tokens_mean=round(toks / len(ok), 2) if ok else None,
            cost_per_1k_usd=round(
                1000 * sum(float(r.get("cost_usd", 0.0)) for r in rows) / len(rows), 6
            ),
        )
    for key in ("load_s", "peak_rss_mb", "rss_delta_mb", "gpu_peak_mb"):
        out[key] = status.get(key)
    return out


def quality_columns(metrics_config: Any, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The quality columns worth a glance, in the registry's order, that some row has; the
    app's own metrics (``app_columns``) last."""
    from llmapps.evaluate.metrics import metrics

    wanted = [
        c
        for m in metrics()
        if m.group == "quality" and m.table in ("all", "terminal")
        for c in m.shown(metrics_config)
    ]
    wanted += list(getattr(metrics_config, "app_columns", ()))
    return [c for c in dict.fromkeys(wanted) if any(c in r for r in rows)]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table_columns(rows: Sequence[Mapping[str, Any]], metrics_config: Any) -> list[str]:
    return [
        "strategy",
        "samples",
        "failures",
        *quality_columns(metrics_config, rows),
        *speed_columns(),
        "error",
    ]


def to_markdown(rows: Sequence[Mapping[str, Any]], metrics_config: Any) -> str:
    """The summary as a Markdown table (errors shortened to one line)."""
    cols = table_columns(rows, metrics_config)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "samples":
                v = f"{r.get('samples')}/{r.get('of')}"
            text = _fmt(v)
            if c == "error" and v:
                text = " ".join(str(v).split())[:120]
            cells.append(text.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot(
    rows: Sequence[Mapping[str, Any]], out: Path, metrics_config: Any, quality: str | None = None
) -> list[Path]:
    """Quality against latency (one point per strategy) and one bar chart per metric, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    qcols = quality_columns(metrics_config, rows)
    numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if quality is None:
        from llmapps.evaluate.metrics import metrics

        # a cut-off family's first column (an app's solvability@k), then ROUGE-L of the primary
        preferred = [
            *(
                c
                for m in metrics()
                if m.per == "k" and m.table
                for c in m.columns(metrics_config)[:1]
            ),
            f"rougeL_{metrics_config.primary_field}",
        ]
        present = [q for q in [*preferred, *qcols] if any(numeric(r.get(q)) for r in rows)]
        # a metric on which every strategy ties says nothing: plot the first one that separates them
        varied = [q for q in present if len({r.get(q) for r in rows if numeric(r.get(q))}) > 1]
        quality = next(iter(varied or present), None)
    pts = [
        r for r in rows if quality and numeric(r.get(quality)) and numeric(r.get("latency_p50_s"))
    ]
    if pts and quality:  # pts is non-empty only with a quality metric
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for r in pts:
            ax.scatter(r["latency_p50_s"], r[quality], s=60)
            p95 = r.get("latency_p95_s")
            if numeric(p95):
                ax.plot([r["latency_p50_s"], p95], [r[quality]] * 2, alpha=0.4)
            ax.annotate(
                r["strategy"],
                (r["latency_p50_s"], r[quality]),
                textcoords="offset points",
                xytext=(5, 5),
            )
        ax.set_xlabel("latency per batch, p50 (line to p95), s")
        ax.set_ylabel(quality)
        ax.set_title(f"{quality} against latency")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"quality_vs_latency_{_slug(quality)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    from llmapps.evaluate.metrics import direction

    for metric in [*qcols, *speed_columns(), "failures"]:
        bars = [(r["strategy"], float(r[metric])) for r in rows if numeric(r.get(metric))]
        if not bars:
            continue
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(bars) + 2), 3.6))
        ax.bar([b[0] for b in bars], [b[1] for b in bars], color="tab:blue")
        better = direction(metric)
        ax.set_title(f"{metric} ({better})" if better else metric)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"bar_{_slug(metric)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_reports(
    rows: Sequence[Mapping[str, Any]], out: Path, metrics_config: Any
) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv``, ``summary.json`` and ``plots/`` into ``out``."""
    out = Path(out)
    paths = {"md": out / "summary.md", "csv": out / "summary.csv", "json": out / "summary.json"}
    paths["md"].write_text(to_markdown(rows, metrics_config), encoding="utf-8")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in keys})
    paths["json"].write_text(json.dumps(list(rows), indent=2, default=str) + "\n", encoding="utf-8")
    plot(rows, out / "plots", metrics_config)
    paths["plots"] = out / "plots"
    return paths


def _short(col: str, primary: str) -> str:
    from llmapps.evaluate.metrics import label

    return {"samples": "done", "failures": "fail"}.get(col) or label(col, primary)


def rich_tables(
    rows: Sequence[Mapping[str, Any]], metrics_config: Any, title: str = "bench"
) -> list[Any]:
    """The summary as two ``rich`` tables, quality and cost, narrow enough for a terminal; the best
    value of each column is bold."""
    from rich.table import Table

    from llmapps.evaluate.metrics import lower_is_better, metric_for

    p = metrics_config.primary_field
    groups = [
        (
            f"{title}: quality of {p!r}",
            ["strategy", "samples", "failures", *quality_columns(metrics_config, rows)],
        ),
        (
            f"{title}: speed, cost, memory",
            [
                "strategy",
                *(
                    c
                    for c in speed_columns("terminal")
                    if c != "gpu_peak_mb" or any(r.get(c) for r in rows)
                ),
                "error",
            ],
        ),
    ]
    tables = []
    for heading, cols in groups:
        table = Table(title=heading, title_justify="left")
        for c in cols:
            table.add_column(
                _short(c, p),
                overflow="fold",
                max_width=48 if c == "error" else None,
                justify="left" if c in ("strategy", "error") else "right",
            )
        best: dict[str, float] = {}
        for c in cols:
            vals = [
                float(r[c])
                for r in rows
                if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
            ]
            counted = (m := metric_for(c)) is not None and m.higher_is_better is None
            if (
                len(vals) > 1
                and c not in ("samples", "failures")
                and len(set(vals)) > 1
                and not counted
            ):
                best[c] = min(vals) if lower_is_better(c) else max(vals)
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c)
                text = f"{r.get('samples')}/{r.get('of')}" if c == "samples" else _fmt(v)
                if c == "error" and v:
                    text = f"[red]{' '.join(str(v).split())[:200]}[/red]"
                elif c == "strategy" and r.get("status") not in ("ran", None):
                    text = f"{v} [dim]({r.get('status')})[/dim]"
                elif c in best and isinstance(v, (int, float)) and float(v) == best[c]:
                    text = f"[bold]{text}[/bold]"
                cells.append(text)
            table.add_row(*cells)
        tables.append(table)
    return tables


def log_mlflow(rows: Sequence[Mapping[str, Any]], out: Path, experiment: str | None = None) -> str:
    """Log a bench run to MLflow: params from ``config.json``, metrics per strategy, the folder as artifacts.

    Returns the MLflow run id. Raises ``ConfigError`` when mlflow is not installed.
    """
    try:
        import mlflow
    except ImportError as err:
        raise ConfigError(
            "--mlflow needs the optional extra: pip install 'llmapps[mlflow]'"
        ) from err
    config = json.loads((Path(out) / "config.json").read_text())
    bench = config.get("bench", {})
    if experiment:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"bench-{bench.get('app')}-{Path(out).name}") as run:
        mlflow.log_params(
            {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in bench.items()}
        )
        mlflow.log_params(
            {f"version.{k}": v for k, v in config.get("versions", {}).items() if k != "time"}
        )
        for r in rows:
            metrics = {
                f"{r['strategy']}.{_slug(k).replace('@', '_at_')}": float(v)
                for k, v in r.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out))
        return str(run.info.run_id)
