"""``llmapps ui``: the web app on a loopback port (a CLI plugin, like any third-party command).

Gradio is imported only when the command runs, so ``llmapps --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError


def _default_app() -> str:
    from llmapps.apps import APPS

    with_ui = [n for n in APPS.names() if APPS.get(n).ui is not None]
    if with_ui:
        return with_ui[0]
    names = APPS.names()
    if not names:
        raise ConfigError("no app is registered: install the project (pip install -e .)")
    return names[0]


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            "llmapps ui needs Gradio, an optional extra: pip install 'llmapps[ui]'"
        ) from err
    from llmapps.apps import get_app
    from llmapps.cli import check_app_options, strategy_options
    from llmapps.evaluate.human import RatingStore
    from llmapps.strategies.base import STRATEGIES
    from llmapps.ui.app import launch
    from llmapps.ui.session import AppSession, resolve_ui

    if args.concurrency < 1:
        raise ConfigError(f"--concurrency {args.concurrency}: give 1 or more")
    app = args.app or _default_app()
    spec = get_app(app)
    names = (
        [s.strip() for s in args.strategies.split(",") if s.strip()]
        if args.strategies
        else STRATEGIES.names()
    )
    articles: list[dict[str, Any]] = []
    for path in args.articles:
        if spec.read_inputs is None:
            raise ConfigError(f"the app {app!r} cannot read input files (--articles {path})")
        if not Path(path).exists():
            raise ConfigError(f"--articles {path}: no such file or folder")
        articles += spec.read_inputs(Path(path))
    if args.run and not Path(args.run).is_dir():
        raise ConfigError(f"--run {args.run}: no such folder (the --out of `llmapps bench`)")
    session = AppSession(
        app,
        names,
        strategy_options={n: strategy_options(n, args) for n in names},
        app_options=check_app_options(app, args),  # a bad option fails before models load
        articles=articles,
    )
    store = None
    if args.ratings or args.run:
        if args.run:
            store = RatingStore.from_run(
                Path(args.run),
                Path(args.ratings) if args.ratings else None,
                fields=resolve_ui(spec).rate_fields,
                limit=args.limit,
            )
        else:
            store = RatingStore(Path(args.ratings))
    print(
        f"llmapps ui: {app} with {', '.join(session.entries)} on http://{args.host}:{args.port}"
        + (f"; ratings in {store.path}" if store else "")
        + " (Ctrl-C stops)",
        file=sys.stderr,
    )
    launch(session, store, host=args.host, port=args.port, concurrency=args.concurrency)
    return 0


def register(sub: Any) -> None:
    """Add ``llmapps ui``."""
    from llmapps.cli import add_strategy_flags

    p = sub.add_parser(
        "ui",
        help="web app: try an app, compare strategies, rate outputs blinded (Gradio)",
        description="Serve a page on a loopback port: run the app on a pasted or picked input, "
        "compare 2-4 strategies side by side, and rate a bench run's outputs blinded (A/B/tie, "
        "saved as you go to ratings.jsonl, which `llmapps human-eval import` reads too).",
    )
    p.add_argument("app", nargs="?", help="app name (default: the first app with a page layout)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument(
        "--articles",
        action="append",
        default=[],
        metavar="PATH",
        help="more inputs to pick from, e.g. `llmapps news fetch` output (repeatable)",
    )
    p.add_argument("--run", help="a bench run folder to rate (exports a blinded sheet once)")
    p.add_argument(
        "--ratings", help="where the sheet and ratings.jsonl live (default: RUN/human-eval)"
    )
    p.add_argument("--limit", type=int, help="rate only the first N samples of the run")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="generations run at once; more sessions queue (default: 1)",
    )
    add_strategy_flags(p, multiple=True)
    p.set_defaults(func=cmd_ui)
