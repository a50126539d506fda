"""``llmapps audit fairness APP``: counterfactual twins of the test inputs, every named strategy run
on both twins, and the fairness + privacy report (``report.md``, ``report.json``) in ``--out``.

Each strategy's outputs go to ``<out>/<strategy>.jsonl`` as they come, so a stopped audit resumes
where it stopped; the report is rewritten from all the rows at the end of every run.

A strategy runs with the options every surface shares (``llmapps.compose.compose_strategies``,
as ``llmapps bench``, ``demo`` and ``ui`` get them): ``lora`` without ``--opt lora.adapter=DIR``
takes the base's demo (or full-recipe) adapter, ``service`` without ``--opt service.base_url=URL``
the configured endpoint or a ``llmapps serve`` on loopback running the instruct model for the
audit's length. ``run_audit`` is the audit itself, which ``llmapps bench --audit`` calls too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from llmapps.errors import ConfigError

DEFAULT_STRATEGIES = "few-shot,zero-shot,lora,service"
Said = Callable[[str, Mapping[str, Any]], None]


def parse_options(items: list[str] | None, strategies: list[str]) -> dict[str, dict[str, Any]]:
    """``STRATEGY.KEY=VALUE`` items -> {strategy: {key: value}} (values read as YAML scalars)."""
    out: dict[str, dict[str, Any]] = {s: {} for s in strategies}
    for item in items or []:
        name, eq, value = item.partition("=")
        strategy, dot, key = name.partition(".")
        if not eq or not dot or not key:
            raise ConfigError(f"--opt {item!r}: write STRATEGY.KEY=VALUE, e.g. lora.adapter=DIR")
        if strategy not in out:
            raise ConfigError(
                f"--opt {item!r}: {strategy!r} is not among --strategies ({', '.join(strategies)})"
            )
        out[strategy][key.replace("-", "_")] = yaml.safe_load(value) if value else value
    return out


def run_audit(
    app: str,
    strategies: Sequence[str],
    out_dir: Path,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    settings: Any = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 4,
    attributes: Sequence[str] | None = None,
    words: Path | None = None,
    report_only: bool = False,
    said: Said | None = None,
) -> tuple[dict[str, Any], Path]:
    """The audit of ``app`` on ``strategies`` into ``out_dir`` (resumable); the report and the path
    of its ``report.md``.

    Every strategy's options are composed and checked before any strategy runs (a bad option, or a
    strategy with no way to run here, is a ``ConfigError`` naming it); chains are built one at a
    time, when their turn comes. ``report_only``: no strategy runs, the report is rewritten from
    the rows already in ``out_dir``.
    """
    import contextlib
    import time

    from llmapps.apps import get_app
    from llmapps.audit.run import audit, twins_for
    from llmapps.compose import compose_strategies, load_chain, make_strategy

    started = time.perf_counter()
    spec = get_app(app)
    if spec.samples is None:
        raise ConfigError(f"app {spec.name!r} bundles no samples to audit")
    given = {name: dict((options or {}).get(name, {})) for name in strategies}
    samples = spec.samples(split)[:limit] if limit else spec.samples(split)
    common = spec.training_examples("train") if spec.training_examples else []
    twins = twins_for(spec, samples, attributes=attributes, words_file=words, common_rows=common)
    with contextlib.ExitStack() as stack:
        chains: dict[str, Callable[[], Any] | None] = dict.fromkeys(strategies)
        if not report_only:
            # the options every surface shares: lora's demo adapter, service's local server (held
            # for the whole audit, stopped at its end), each checked now, before any model loads
            composed = stack.enter_context(
                compose_strategies(strategies, options=given, settings=settings)
            )
            bad = [f"{c.label} cannot run: {c.reason}" for c in composed if c.reason]
            if bad:
                raise ConfigError("; ".join(bad))
            chains = {
                c.name: partial(load_chain, spec.name, make_strategy(c.name, settings, **c.options))
                for c in composed
            }
        out_dir.mkdir(parents=True, exist_ok=True)
        return audit(
            spec,
            samples,
            twins,
            out_dir,
            chains,
            split=split,
            batch_size=batch_size,
            said=said,
            started=None if report_only else started,
        )


def cmd_fairness(args: argparse.Namespace) -> int:
    from llmapps.files import check_output

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    options = parse_options(args.opt, strategies)
    out_dir = check_output(args.out, kind="folder")
    _, md = run_audit(
        args.app,
        strategies,
        out_dir,
        options=options,
        settings=getattr(args, "settings", None),  # --tiny
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        attributes=[a.strip() for a in args.attributes.split(",")] if args.attributes else None,
        words=args.words,
        report_only=args.report_only,
        said=print_timing,
    )
    print(md.read_text(encoding="utf-8"))
    return 0


def print_timing(name: str, took: Mapping[str, Any]) -> None:
    cpu = took.get("cpu_seconds", 0) / took["seconds"] if took.get("seconds") else 0
    print(
        f"{name}: {took['done']} outputs in {took['seconds']} s (its model loaded in "
        f"{took.get('load_seconds', '?')} s; CPU {cpu:.1f}x the wall time)",
        flush=True,
    )


def register(subparsers: Any, flags: Any) -> None:
    """Add ``audit fairness`` to the ``llmapps`` command line."""
    sub = flags.add_group(
        subparsers, "audit", "audit an app's outputs (fairness, privacy)", metavar=None
    )
    f = sub.add_parser(
        "fairness",
        help="counterfactual twins (gender, origin) through every strategy + privacy checks",
    )
    flags.add(
        f,
        "limit",
        app="the app to audit (`llmapps apps` lists them)",
        out={"type": Path, "required": True, "help": "folder for outputs and report"},
        strategies={"default": DEFAULT_STRATEGIES, "help": "comma-separated"},
        split="the samples' split (default test)",
        batch_size={"default": 4, "help": None},
    )
    f.add_argument("--attributes", help="comma-separated (default: every one in the words file)")
    f.add_argument("--words", type=Path, help="YAML of counterfactual swaps (default: bundled)")
    f.add_argument(
        "--opt",
        action="append",
        metavar="STRATEGY.KEY=VALUE",
        help="a strategy option, e.g. service.base_url=http://127.0.0.1:8000/v1 (repeatable)",
    )
    f.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the saved outputs"
    )
    f.set_defaults(func=cmd_fairness)
