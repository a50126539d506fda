"""``llmapps strategies``, ``llmapps apps`` and ``llmapps metrics``: what is registered."""

from __future__ import annotations

import argparse
from typing import Any

from llmapps.errors import LlmappsError


def cmd_strategies(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.strategies.base import STRATEGIES

    table = Table(title="registered strategies")
    for col in ("name", "what it is", "what it needs"):
        table.add_column(col)
    for name in STRATEGIES.names():
        try:
            cls = STRATEGIES.get(name)
            table.add_row(name, cls.summary, cls.requires)
        except LlmappsError as err:
            table.add_row(name, "[red]cannot load[/red]", str(err))
    Console().print(table)
    return 0


def cmd_apps(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.apps import APPS
    from llmapps.options import describe_options

    table = Table(title="registered apps (options: -O KEY=VALUE or --KEY VALUE)")
    for col in ("name", "what it does", "options"):
        table.add_column(col)
    for name in APPS.names():
        spec = APPS.get(name)
        opts = describe_options(spec.options)
        table.add_row(
            name, spec.description, "; ".join(f"{k}: {v}" if v else k for k, v in opts.items())
        )
    Console().print(table)
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


def register(subparsers: Any, flags: Any) -> None:
    """Add ``strategies``, ``apps`` and ``metrics``."""
    p = subparsers.add_parser("strategies", help="list registered strategies and what they need")
    p.set_defaults(func=cmd_strategies)
    p = subparsers.add_parser("apps", help="list registered apps")
    p.set_defaults(func=cmd_apps)
    p = subparsers.add_parser(
        "metrics", help="list the registered metrics: direction, summary, label"
    )
    p.set_defaults(func=cmd_metrics)
