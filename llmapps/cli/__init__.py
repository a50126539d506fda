"""The ``llmapps`` command line: one dispatcher (``main``); nothing imports this package.

Every command, the core's included, is registered through the ``llmapps.cli`` entry-point group,
as simonw/llm's ``register_commands(cli)`` hook does: each entry is ``register(subparsers,
flags)``, which adds parsers whose ``func(args) -> int`` does the work; ``flags`` is
``llmapps.cli.flags`` (the shared flags and their reading into options), handed over so that an
app's or a package's command never imports the command line. The core's commands are thin
modules here (``llmapps.cli.run``, ``.bench``, ``.serve``...) calling library functions.

Typed errors (``llmapps.errors``) become one-line messages and exit codes; ``--debug`` shows the
traceback. Heavy libraries are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Sequence
from typing import Any

from llmapps.cli import flags
from llmapps.compose import tiny_settings
from llmapps.errors import ConfigError, LlmappsError

log = logging.getLogger("llmapps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmapps",
        description="Build LLM apps on LangChain; compare few-shot, zero-shot, service and LoRA.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="info logs")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="use the tiny local models (tiny-base, tiny-instruct) instead of the real defaults",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_commands(sub)
    return parser


def register_commands(sub: Any) -> None:
    """Call every ``llmapps.cli`` entry point with the sub-parsers and the flags module; a
    ``register(subparsers)`` of one argument (an older plugin) gets the sub-parsers alone."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="llmapps.cli"):
        try:
            register = ep.load()
            if _positional_count(register) >= 2:
                register(sub, flags)
            else:
                register(sub)
        except Exception as err:  # a broken plugin must not take the CLI down
            log.warning("CLI plugin %s failed to load: %s", ep.name, err)


def _positional_count(fn: Any) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = flags.app_flags_to_options(parser, sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        parser.error(str(err))
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    # --tiny: settings with the tiny models, handed to the command (args.settings) and from it to
    # llmapps.compose, never written to the environment; None: the environment's settings
    try:
        args.settings = tiny_settings() if getattr(args, "tiny", False) else None
        return int(args.func(args) or 0)
    except LlmappsError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; results written so far are kept", file=sys.stderr)
        return 130
