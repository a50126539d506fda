"""``llmapps demo``: an app on a few bundled test samples with every strategy (``llmapps.demo``)."""

from __future__ import annotations

import argparse
from typing import Any

from llmapps.cli import flags


def cmd_demo(args: argparse.Namespace) -> int:
    from llmapps.apps import default_app
    from llmapps.compose import strategy_options
    from llmapps.demo import run_demo
    from llmapps.strategies.base import STRATEGIES

    names = args.strategies.split(",") if args.strategies else None
    app = args.app or default_app("demo", fallback=lambda s: s.samples is not None)
    app_opts = flags.check_app_options(app, args)
    given = {n: flags.strategy_options(n, args) for n in names or STRATEGIES.names()}
    # the defaults every surface shares (llmapps.compose): the bench's, the web app's
    run_demo(
        app,
        names,
        n=args.n,
        app_options=app_opts,
        strategy_options=given,
        options=strategy_options,
        settings=getattr(args, "settings", None),  # --tiny
    )
    return 0


def register(subparsers: Any, flags: Any) -> None:
    """Add ``demo``."""
    p = subparsers.add_parser("demo", help="run an app on bundled test samples with every strategy")
    p.add_argument("--app", help="app name (default: the app that declares itself the demo's)")
    p.add_argument("-n", type=int, default=5, help="number of test samples")
    flags.add_strategy_flags(p, multiple=True)
    p.set_defaults(func=cmd_demo)
