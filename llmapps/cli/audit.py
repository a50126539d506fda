"""``llmapps audit fairness APP``: counterfactual twins of the test inputs, every named strategy run
on both twins, and the fairness + privacy report (``report.md``, ``report.json``) in ``--out``.

Each strategy's outputs go to ``<out>/<strategy>.jsonl`` as they come, so a stopped audit resumes
where it stopped; the report is rewritten from all the rows at the end of every run.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from llmapps.errors import ConfigError

DEFAULT_STRATEGIES = "few-shot,zero-shot,lora,service"


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


def cmd_fairness(args: argparse.Namespace) -> int:
    from llmapps.apps import get_app, load_chain
    from llmapps.audit.run import audit, twins_for
    from llmapps.files import check_output
    from llmapps.strategies.base import make_strategy

    spec = get_app(args.app)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    options = parse_options(args.opt, strategies)
    # every strategy's config is validated (unknown names, missing options) before any model loads
    settings = getattr(args, "settings", None)  # --tiny
    built = {name: make_strategy(name, settings=settings, **options[name]) for name in strategies}
    if spec.samples is None:
        raise ConfigError(f"app {spec.name!r} bundles no samples to audit")
    out_dir = check_output(args.out, kind="folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = spec.samples(args.split)[: args.limit] if args.limit else spec.samples(args.split)
    common = spec.training_examples("train") if spec.training_examples else []
    attributes = [a.strip() for a in args.attributes.split(",")] if args.attributes else None
    twins = twins_for(
        spec, samples, attributes=attributes, words_file=args.words, common_rows=common
    )
    # chains are built one at a time, when their turn comes (a model loads once at a time)
    chains = {
        name: None if args.report_only else partial(load_chain, spec.name, built[name])
        for name in strategies
    }
    _, md = audit(
        spec,
        samples,
        twins,
        out_dir,
        chains,
        split=args.split,
        batch_size=args.batch_size,
        said=lambda name, took: print(
            f"{name}: {took['done']} outputs in {took['seconds']} s", flush=True
        ),
    )
    print(md.read_text(encoding="utf-8"))
    return 0


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
