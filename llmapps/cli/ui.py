"""``llmapps ui``: the web app on a loopback port (a CLI plugin, like any third-party command).

Gradio is imported only when the command runs, so ``llmapps --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmapps.cli import flags
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
    from llmapps.compose import compose_strategies, read_run
    from llmapps.evaluate.human import RatingStore, load_run_outputs
    from llmapps.serving.server import is_loopback
    from llmapps.settings import get_settings
    from llmapps.strategies.base import STRATEGIES
    from llmapps.ui.app import MAX_BODY_BYTES, launch
    from llmapps.ui.rating import RatingFlow
    from llmapps.ui.session import AppSession, resolve_ui

    if args.concurrency < 1:
        raise ConfigError(f"--concurrency {args.concurrency}: give 1 or more")
    server = get_settings().service.server  # the key and limits `llmapps serve` uses
    key = server.api_key.get_secret_value() if server.api_key else None
    if not is_loopback(args.host) and key is None:  # before any model loads
        raise ConfigError(
            f"refusing to serve the page on {args.host} without a key: set "
            "LLMAPPS_SERVICE__SERVER__API_KEY (the page then asks for it), or keep the default "
            "--host 127.0.0.1"
        )
    hosts = [h.strip() for h in (args.allowed_hosts or "").split(",") if h.strip()]
    app = args.app or _default_app()
    spec = get_app(app)
    names = (
        [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    )
    articles: list[dict[str, Any]] = []
    for path in args.articles:
        if spec.read_inputs is None:
            raise ConfigError(f"the app {app!r} cannot read input files (--articles {path})")
        if not Path(path).exists():
            raise ConfigError(f"--articles {path}: no such file or folder")
        articles += spec.read_inputs(Path(path))
    run = Path(args.run) if args.run else None
    if run is not None and not run.is_dir():
        raise ConfigError(f"--run {args.run}: no such folder (the --out of `llmapps bench`)")
    app_opts = flags.check_app_options(app, args)  # a bad option fails before models load
    for name in names or ():
        STRATEGIES.get(name)  # an unknown name fails here, with suggestions
    given = {n: flags.strategy_options(n, args) for n in (names or STRATEGIES.names())}
    store = None
    if run is not None:  # a damaged sheet or key, or a folder that is no bench run: one line,
        store = RatingStore.from_run(  # before anything is said or loaded
            run,
            Path(args.ratings) if args.ratings else None,
            fields=resolve_ui(spec).rate_fields,
            limit=args.limit,
        )
        read_run(run)
    print(
        "llmapps ui: preparing the strategies as the bench does"
        + (f" (from {run}/config.json)" if run else "")
        + ": a missing demo adapter is trained, a local server started...",
        file=sys.stderr,
    )
    with compose_strategies(
        names,
        run=run,
        options={k: v for k, v in given.items() if v},
        settings=getattr(args, "settings", None),  # --tiny
    ) as cs:
        session = AppSession(app, composed=cs, app_options=app_opts, articles=articles)
        session.prepare()  # build each chain now: one that cannot run is listed with why
        for name, reason in session.unavailable():
            print(f"  {name}: not offered: {reason}", file=sys.stderr)
        flow = None
        if args.ratings or run:
            fields = resolve_ui(spec).rate_fields
            if store is not None and run is not None:
                outputs, refs = load_run_outputs(run, store.strategies)
                samples = {str(r["id"]): r for r in refs}
                flow = RatingFlow(store, outputs, samples, fields)
            else:
                flow = RatingFlow(RatingStore(Path(args.ratings)))
        print(
            f"llmapps ui: {app} with {', '.join(n for _, n in session.strategy_choices())} on "
            f"http://{args.host}:{args.port}"
            + (f"; ratings in {flow.store.path}" if flow else "")
            + ("; key required" if key else "")
            + " (Ctrl-C stops)",
            file=sys.stderr,
        )
        launch(
            session,
            flow,
            run=run,
            host=args.host,
            port=args.port,
            concurrency=args.concurrency,
            key=key,
            allowed_hosts=hosts or list(server.allowed_hosts) or None,
            max_body_bytes=max(MAX_BODY_BYTES, server.max_body_bytes),
        )
    return 0


def register(sub: Any, flags: Any) -> None:
    """Add ``llmapps ui``."""
    p = sub.add_parser(
        "ui",
        help="web app: try an app, compare strategies, rate outputs blinded (Gradio)",
        description="Serve a page on a loopback port: run the app on a pasted or picked input, "
        "compare 2-4 strategies side by side, and rate a bench run's outputs blinded (A/B/tie, "
        "saved as you go to ratings.jsonl, which `llmapps human-eval import` reads too).",
    )
    flags.add(
        p,
        app={"nargs": "?", "help": "app name (default: the first app with a page layout)"},
        host={
            "default": "127.0.0.1",
            "help": "interface to listen on (default: loopback; others need a key: "
            "LLMAPPS_SERVICE__SERVER__API_KEY)",
        },
        allowed_hosts="comma-separated Host names the page answers (default: loopback names on "
        "loopback, any host otherwise; against DNS rebinding)",
        port={"default": 7860, "help": "port (default: 7860)"},
    )
    p.add_argument(
        "--articles",
        action="append",
        default=[],
        metavar="PATH",
        help="more inputs to pick from, e.g. `llmapps news fetch` output (repeatable)",
    )
    p.add_argument(
        "--run",
        help="a bench run folder: its strategies as it ran them, its results grid, and its outputs to rate (a blinded sheet exported once)",
    )
    p.add_argument(
        "--ratings", help="where the sheet and ratings.jsonl live (default: RUN/human-eval)"
    )
    flags.add(p, limit="rate only the first N samples of the run")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="generations run at once; more sessions queue (default: 1)",
    )
    flags.add_strategy_flags(p, multiple=True)
    p.set_defaults(func=cmd_ui)
