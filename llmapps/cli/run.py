"""``llmapps run APP``: an app over a file of inputs, resumable (here or on a Ray pool)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmapps.cli import flags
from llmapps.errors import ConfigError
from llmapps.files import check_output
from llmapps.locks import exclusive_lock, lock_path

# `llmapps run` finished but some rows hold an error (distinct from the error family's codes)
ROWS_FAILED_EXIT = 4


def cmd_run(args: argparse.Namespace) -> int:
    from llmapps.apps import get_app, load_chain
    from llmapps.options import option_key
    from llmapps.runner import run_file

    spec = get_app(args.app)
    options = flags.check_app_options(args.app, args)
    # bad flags fail before inputs are read
    strat_opts = flags.strategy_options(args.strategy, args)
    key = args.out.partition("=")[0]
    if "=" in args.out and option_key(key) in spec.options.model_fields:
        raise ConfigError(
            f"-o is --out (the results file), not an app option; did you mean -O {args.out}?"
        )
    if spec.read_inputs is None:
        raise ConfigError(f"the app {args.app!r} cannot read input files")
    check_output(args.out, [args.input])  # never an input, nor the wrong kind of path
    with exclusive_lock(lock_path(Path(args.out)), f"the results file {args.out}"):
        pass  # a second run is refused before models load; the runner holds the lock itself
    inputs = spec.read_inputs(Path(args.input))
    if not inputs:
        raise ConfigError(f"{args.input} holds no inputs")
    how: dict[str, Any] = {
        "batch_size": args.batch_size or 16,
        "extra": {"strategy": args.strategy},
        "progress": not args.quiet,
        "retry_failed": args.retry_failed,
    }
    engine = flags.engine_config(args)
    if engine is not None:  # --engine ray: the same rows and file, written from a pool of actors
        from llmapps.bench.ray_engine import run_file_ray

        summary = run_file_ray(
            args.app,
            args.strategy,
            inputs,
            Path(args.out),
            config=engine,
            strategy_options=strat_opts,
            app_options=options,
            **how,
        )
    else:
        chain = load_chain(args.app, args.strategy, app_options=options, **strat_opts)
        summary = run_file(chain, inputs, Path(args.out), **how)
    print(summary.describe(args.out), file=sys.stderr)
    return ROWS_FAILED_EXIT if summary.unfinished else 0


def register(subparsers: Any, flags: Any) -> None:
    """Add ``run``."""
    p = subparsers.add_parser("run", help="run an app over a file of inputs, resumable")
    p.add_argument("app", help="app name (llmapps apps)")
    p.add_argument("--input", "-i", required=True, help="JSONL file, text file or folder")
    p.add_argument("--out", "-o", required=True, help="JSONL results file (appended, resumable)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument(
        "--retry-failed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run rows that failed before (an 'error' in --out) again (default: yes)",
    )
    p.epilog = (
        f"exit status: 0 every row done, {ROWS_FAILED_EXIT} some rows failed (rerun to retry "
        "them), 2 bad input or options, 3 a backend failed"
    )
    flags.add_strategy_flags(p)
    flags.add_engine_flags(p)
    p.set_defaults(func=cmd_run)
