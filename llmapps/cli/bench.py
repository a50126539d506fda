"""``llmapps bench``: every strategy of an app over the same samples; quality, speed, cost, memory.

The work is ``llmapps.bench`` (``Bench``, the reports); this reads the flags and prints the tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from llmapps.cli import flags
from llmapps.errors import ConfigError
from llmapps.files import writing


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
    from llmapps.compose import strategy_options
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
        strategy_options={n: flags.strategy_options(n, args) for n in names},
        sweep=parse_sweep(args.sweep or []),
        app_options=flags.check_app_options(app, args),
        perplexity=not args.no_perplexity,
        judge=args.judge,
        judge_app=args.judge_app,
        retry_failed=args.retry_failed,
    )
    # piped output (CI logs, notes) gets a width the two tables fit in, not rich's default of 80
    console = Console(width=None if Console().is_terminal else 150)
    console.print(f"[bold]bench[/bold] {app} ({args.split}) with {', '.join(names)} -> {out}")
    started = time.perf_counter()
    # --engine ray: each strategy's batches on a pool of Ray actors
    engine = flags.engine_config(args)
    if engine is None:
        bench = Bench(
            config, out, settings=args.settings, progress=not args.quiet, options=strategy_options
        )
        rows = bench.run()
    else:
        from llmapps.bench.ray_engine import RayEngine, ray_cluster

        bench = Bench(
            config,
            out,
            settings=args.settings,
            progress=not args.quiet,
            engine=RayEngine(engine),
            options=strategy_options,
        )
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
    if args.audit:
        _audit(args, config, bench, out, console)
    return 3 if failed and len(failed) == len(rows) else 0


def _audit(args: argparse.Namespace, config: Any, bench: Any, out: Path, console: Any) -> None:
    """``--audit``: the fairness + privacy audit (``llmapps audit fairness``) of the strategies
    that ran, on the bench's split and limit with the bench's options and batch, in
    ``<out>/audit/`` (resumable like the bench); its table is ``<out>/audit.md``, beside
    ``summary.md``. Each strategy runs on both counterfactual twins of every sample: the bench's
    own outputs are not reused, since only 6 of the 54 twin sides of the test split are the
    article as it is (an origin twin never is)."""
    from llmapps.cli.audit import print_timing, run_audit
    from llmapps.jsonl import atomic_write

    statuses = bench.statuses()
    ran_labels = {
        name for name, label, _ in config.runs() if statuses.get(label, {}).get("status") == "ran"
    }
    ran = [n for n in config.strategies if n in ran_labels]  # a swept one: any of its rows
    left = [n for n in config.strategies if n not in ran]
    if left:
        console.print(f"audit: {', '.join(left)} did not run in the bench, so not audited")
    if not ran:
        return
    console.print(f"[bold]audit[/bold] {config.app} ({config.split}) with {', '.join(ran)}")
    _, md = run_audit(
        config.app,
        ran,
        out / "audit",
        options={n: config.strategy_options.get(n, {}) for n in ran},
        settings=args.settings,
        split=config.split,
        limit=config.limit,
        batch_size=config.batch_size,
        said=print_timing,
    )
    table = md.read_text(encoding="utf-8")
    atomic_write(out / "audit.md", table)
    console.print(table, markup=False, soft_wrap=True)
    console.print(f"audit in {out / 'audit.md'} (outputs and report.json in {md.parent})")


def _settings() -> Any:
    from llmapps.settings import get_settings

    return get_settings()


def register(sub: Any, flags: Any) -> None:
    """Add ``llmapps bench``."""
    p = sub.add_parser(
        "bench",
        help="compare strategies on quality, speed, cost and memory",
        description="Run an app on every strategy over the same samples; write per-sample "
        "JSONL, a summary (md/csv/json) and plots. A rerun into the same --out skips done samples.",
    )
    flags.add(
        p,
        "split",
        "limit",
        app={"nargs": "?", "help": "app name (default: the app that declares itself the bench's)"},
        out="results folder (default: runs/bench-<time>)",
        quiet="no progress bars",
    )
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
    p.add_argument(
        "--audit",
        action="store_true",
        help="then the fairness + privacy audit (`llmapps audit fairness`) of the strategies that "
        "ran, with their options (swept values aside): <out>/audit.md and <out>/audit/",
    )
    flags.add_strategy_flags(p, multiple=True)
    flags.add_engine_flags(p)
    p.set_defaults(func=cmd_bench)
