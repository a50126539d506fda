"""CLI plugins: ``llmapps bench``, ``llmapps evaluate`` and ``llmapps human-eval``.

Registered through the ``llmapps.cli`` entry-point group like any third-party command. Heavy
libraries are imported inside the commands so ``llmapps --help`` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError
from llmapps.files import check_output, writing
from llmapps.jsonl import atomic_write, write_jsonl


def _default_app() -> str:
    from llmapps.apps import default_app

    return default_app("bench", fallback=lambda spec: spec.samples is not None)


def cmd_bench(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    # one bench per folder: a second one on the same --out is refused, naming the first's PID
    with writing(out, kind="folder"):
        return _bench(args, out)


def _bench(args: argparse.Namespace, out: Path) -> int:
    from rich.console import Console

    from llmapps.bench.report import log_mlflow, rich_tables, write_reports
    from llmapps.bench.run import Bench, BenchConfig, parse_sweep
    from llmapps.cli import check_app_options, engine_config, strategy_options
    from llmapps.strategies.base import STRATEGIES

    if args.mlflow:  # fail before an hour of benching, not after
        try:
            import mlflow  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                "--mlflow needs the optional extra: pip install 'llmapps[mlflow]'"
            ) from err
    app = args.app or _default_app()
    names = (
        [s.strip() for s in args.strategies.split(",") if s.strip()]
        if args.strategies
        else STRATEGIES.names()
    )
    config = BenchConfig(
        app=app,
        strategies=names,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size or _settings().bench.batch_size,
        strategy_options={n: strategy_options(n, args) for n in names},
        sweep=parse_sweep(args.sweep or []),
        app_options=check_app_options(app, args),
        perplexity=not args.no_perplexity,
        judge=args.judge,
        judge_app=args.judge_app,
        retry_failed=args.retry_failed,
    )
    # piped output (CI logs, notes) gets a width the two tables fit in, not rich's default of 80
    console = Console(width=None if Console().is_terminal else 150)
    console.print(f"[bold]bench[/bold] {app} ({args.split}) with {', '.join(names)} -> {out}")
    started = time.perf_counter()
    engine = engine_config(args)  # --engine ray: each strategy's batches on a pool of Ray actors
    bench = Bench(config, out, progress=not args.quiet, engine=engine)
    if engine is None:
        rows = bench.run()
    else:
        from llmapps.ray_engine import ray_cluster

        with ray_cluster(engine):  # one cluster for every strategy of the bench
            rows = bench.run()
    paths = write_reports(rows, bench.out, bench.metrics)
    elapsed = time.perf_counter() - started
    for table in rich_tables(
        rows, bench.metrics, title=f"{app}/{args.split} ({len(bench.samples)} samples)"
    ):
        console.print(table)
    console.print(
        f"{elapsed:.1f} s; summary in {paths['md']}, .csv, .json; plots in {paths['plots']}"
    )
    if args.mlflow:
        run_id = log_mlflow(rows, bench.out, args.experiment)
        console.print(f"logged to MLflow run {run_id}")
    failed = [r["strategy"] for r in rows if r.get("status") == "failed"]
    return 3 if failed and len(failed) == len(rows) else 0


def _settings() -> Any:
    from llmapps.settings import get_settings

    return get_settings()


def _writing_out(args: argparse.Namespace, inputs: list[str]) -> Any:
    """``--out``'s checks and lock for the whole command (before any work), if it has one."""
    return writing(args.out, inputs) if args.out else contextlib.nullcontext()


def cmd_evaluate(args: argparse.Namespace) -> int:
    inputs = [args.predictions, args.references]
    if args.out:
        check_output(Path(args.out).with_suffix(".rows.jsonl"), inputs)
    with _writing_out(args, inputs):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.evaluate.files import evaluate_files

    fields = [f.strip() for f in args.fields.split(",")] if args.fields else None
    groups, scored, config = evaluate_files(
        Path(args.predictions),
        Path(args.references),
        fields=fields,
        primary_field=args.primary_field,
        semantic=not args.no_semantic,
        app=args.app,
    )
    if config.riddle_field is None and config.answer_field is None and not args.app:
        print(
            "note: no app given (--app NAME) and the references are no bench's: only the "
            "per-field metrics are scored, not the app's riddle/answer ones",
            file=sys.stderr,
        )
    keys = list(dict.fromkeys(k for g in groups.values() for k in g))
    table = Table(title=f"{args.predictions} against {args.references}")
    table.add_column("metric")
    for g in groups:
        table.add_column(g)
    for k in keys:
        table.add_row(
            k,
            *(
                f"{v:.4f}"
                if isinstance(v := groups[g].get(k), float)
                else str(v if v is not None else "-")
                for g in groups
            ),
        )
    Console().print(table)
    if args.out:  # each file replaced whole (a temp file and a rename)
        out, rows_path = Path(args.out), Path(args.out).with_suffix(".rows.jsonl")
        atomic_write(
            out, json.dumps({"metrics": groups, "config": config.model_dump()}, indent=2) + "\n"
        )
        write_jsonl(
            rows_path,
            (
                {"id": r["id"], "strategy": r.get("strategy"), "metrics": r["metrics"]}
                for r in scored
            ),
        )
        print(f"wrote {out} and {rows_path}", file=sys.stderr)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.evaluate.metrics import metrics

    table = Table(title="registered metrics (llmapps.evaluate.metrics)")
    for col in ("column", "label", "better", "summary", "what it measures"):
        table.add_column(col)
    for m in metrics():
        column = {"field": f"{m.name}_<field>", "k": f"{m.name}@<k>"}.get(m.per, m.name)
        better = {True: "higher", False: "lower", None: "-"}[m.higher_is_better]
        agg = m.aggregation if isinstance(m.aggregation, str) else m.aggregation.__name__.strip("_")
        table.add_row(column, m.label or m.name, better, agg, m.description)
    Console().print(table)
    return 0


def cmd_human_export(args: argparse.Namespace) -> int:
    from llmapps.evaluate.human import SHEET_FILES, export_sheet, load_run_outputs

    run = Path(args.run)
    names = [s.strip() for s in args.strategies.split(",")] if args.strategies else None
    outputs, refs = load_run_outputs(run, names)
    sources = [run / "references.jsonl", *sorted((run / "samples").glob("*.jsonl"))]
    fields = (
        [f.strip() for f in args.fields.split(",")]
        if args.fields
        else sorted({k[len("reference_") :] for r in refs for k in r if k.startswith("reference_")})
    )
    with writing(args.out, sources, kind="folder", writes=SHEET_FILES) as out:
        paths = export_sheet(
            outputs, refs[: args.limit] if args.limit else refs, out, fields=fields, seed=args.seed
        )
    print(f"fill in {paths['csv']} (view: {paths['html']}); keep {paths['key']} to unblind")
    return 0


def cmd_human_import(args: argparse.Namespace) -> int:
    with _writing_out(args, [*args.sheets, args.key]):  # never the key or a sheet it reads
        return _human_import(args)


def _human_import(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.evaluate.human import import_ratings

    report = import_ratings([Path(p) for p in args.sheets], Path(args.key))
    console = Console()
    table = Table(
        title=f"human preference: {report['ratings']} ratings by {len(report['raters'])} rater(s)"
    )
    for c in ("strategy", "win rate", "comparisons"):
        table.add_column(c)
    for name, rate in sorted(report["win_rate"].items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{rate:.3f}", str(report["comparisons"][name]))
    console.print(table)
    a = report["agreement"]
    console.print(
        f"agreement: {a['percent'] if a['percent'] is not None else 'n/a (one rater per item)'}"
        f", Cohen's kappa {a['cohen_kappa'] if a['cohen_kappa'] is not None else 'n/a'}"
    )
    if args.out:
        atomic_write(args.out, json.dumps(report, indent=2) + "\n")
    return 0


def register_bench(sub: Any) -> None:
    """Add ``llmapps bench``."""
    from llmapps.cli import add_engine_flags, add_strategy_flags

    p = sub.add_parser(
        "bench",
        help="compare strategies on quality, speed, cost and memory",
        description="Run an app on every strategy over the same samples; write per-sample "
        "JSONL, a summary (md/csv/json) and plots. A rerun into the same --out skips done samples.",
    )
    p.add_argument(
        "app", nargs="?", help="app name (default: the app that declares itself the bench's)"
    )
    p.add_argument("--split", default="test", help="sample split (default: test)")
    p.add_argument("--out", "-o", help="results folder (default: runs/bench-<time>)")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument(
        "--sweep",
        action="append",
        metavar="KEY=V1,V2",
        help="run each strategy that has option KEY once per value, side by side in one report "
        "(e.g. --sweep structured=on,off); repeatable",
    )
    p.add_argument(
        "--judge", metavar="STRATEGY", help="grade outputs with this strategy as LLM judge"
    )
    p.add_argument(
        "--judge-app", help="app holding the judge rubric (default: the benched app's judge_app)"
    )
    p.add_argument(
        "--no-perplexity",
        action="store_true",
        help="skip the perplexity of the references after each strategy's prompt",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="run again samples that failed before"
    )
    p.add_argument(
        "--mlflow", action="store_true", help="log params, metrics and artifacts to MLflow"
    )
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_strategy_flags(p, multiple=True)
    add_engine_flags(p)
    p.set_defaults(func=cmd_bench)


def register_evaluate(sub: Any) -> None:
    """Add ``llmapps evaluate`` and ``llmapps human-eval``."""
    p = sub.add_parser("evaluate", help="score a predictions JSONL against a references JSONL")
    p.add_argument(
        "--predictions",
        "-p",
        required=True,
        help="JSONL with id and output fields (llmapps run/bench output)",
    )
    p.add_argument(
        "--references",
        "-r",
        required=True,
        help="JSONL with id and reference_<field> keys (a bench's references.jsonl) or plain fields + --fields",
    )
    p.add_argument(
        "--fields", help="comma-separated fields to score (default: every reference_<field>)"
    )
    p.add_argument("--primary-field", help="the field riddle metrics and lengths report on")
    p.add_argument(
        "--app",
        help="the app whose metric fields (riddle, answer, leak ...) to score (default: the "
        "bench's, when the references are a bench's references.jsonl)",
    )
    p.add_argument(
        "--no-semantic", action="store_true", help="skip embedding similarity and solvability"
    )
    p.add_argument(
        "--out", help="write aggregate metrics JSON here (and per-row metrics beside it)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("metrics", help="list the registered metrics: direction, summary, label")
    p.set_defaults(func=cmd_metrics)

    h = sub.add_parser(
        "human-eval", help="blinded side-by-side sheets for people, and their ratings back"
    )
    hsub = h.add_subparsers(dest="human_command", metavar="ACTION", required=True)
    p = hsub.add_parser("export", help="write sheet.csv/.html and key.json from a bench folder")
    p.add_argument("run", help="a bench folder")
    p.add_argument("--out", "-o", required=True, help="folder for the sheet")
    p.add_argument("--strategies", help="comma-separated (default: every strategy in the folder)")
    p.add_argument("--fields", help="output fields to show (default: the reference fields)")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_human_export)
    p = hsub.add_parser("import", help="win rates and agreement from filled sheets")
    p.add_argument(
        "sheets",
        nargs="+",
        help="filled sheet CSVs (one per rater, or a rater column) and/or the web app's ratings.jsonl",
    )
    p.add_argument("--key", required=True, help="key.json written with the sheet")
    p.add_argument("--out", help="write the report JSON here")
    p.set_defaults(func=cmd_human_import)
