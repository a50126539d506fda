"""The ``llmapps`` command line.

Sub-commands of the core live here; apps and packages add their own through the ``llmapps.cli``
entry-point group: each entry is a function ``register(subparsers)`` that adds parsers whose
``func(args) -> int`` does the work. Errors become one-line messages and exit codes; ``--debug``
shows the traceback. Heavy libraries are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError, LlmappsError
from llmapps.files import check_output
from llmapps.locks import exclusive_lock, lock_path

log = logging.getLogger("llmapps")

# `llmapps run` finished but some rows hold an error (distinct from the error family's codes)
ROWS_FAILED_EXIT = 4

MODEL_FLAGS = {"base_model": "--base-model", "instruct_model": "--instruct-model"}
# strategy config fields set by a flag of their own; a flag no chosen strategy has is an error.
# --batch-size is not among them: it is also the batch of the command itself (run, bench, daily),
# so it goes to the strategies that have the field and is never an error.
STRATEGY_FLAGS = {**MODEL_FLAGS, "adapter": "--adapter", "max_new_tokens": "--max-new-tokens"}


def add_strategy_flags(p: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    """The flags every command that builds a strategy shares, and the app options (``-O``)."""
    if multiple:
        p.add_argument(
            "--strategies",
            default=None,
            help="comma-separated strategy names (default: all registered)",
        )
    else:
        p.add_argument(
            "--strategy", "-s", default="few-shot", help="strategy name (llmapps strategies)"
        )
    p.add_argument(
        "--base-model",
        help="base model: packaged name, hub id, directory or .gguf (default: gemma-3-270m)",
    )
    p.add_argument(
        "--instruct-model",
        help="instruction model: packaged name, hub id, directory or .gguf "
        "(default: smollm2-135m-instruct)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        default=argparse.SUPPRESS,
        help="use the tiny models trained locally (tiny-base, tiny-instruct): fast, not good",
    )
    p.add_argument("--adapter", help="LoRA adapter folder (lora strategy)")
    p.add_argument("--batch-size", type=int, help="prompts per generate() call")
    p.add_argument("--max-new-tokens", type=int, help="generation budget")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any strategy config field, e.g. --set temperature=0.7 (repeatable)",
    )
    p.add_argument(
        "--option",
        "-O",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="app_option",
        help="an option of the chosen app (repeatable; also --KEY VALUE; `llmapps apps` "
        "lists each app's)",
    )
    p.set_defaults(app_flags=True)


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """``--engine`` and where a Ray run goes (``llmapps.ray_engine``); Ray is imported only for it."""
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default); ray: a pool of Ray actors (pip install 'llmapps[ray]')",
    )
    p.add_argument(
        "--address",
        help="--engine ray: an existing cluster (auto, ray://HOST:10001); "
        "default: a local cluster on loopback",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="--engine ray: actors in the pool, each loads the model once (default: 2)",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        help="--engine ray: GPUs each actor reserves (default: 1 when "
        "the cluster has GPUs, else 0; 0 for a service strategy whose model runs elsewhere)",
    )


def engine_config(args: argparse.Namespace) -> Any:
    """The ``RayEngineConfig`` of ``--engine ray``; None for local (Ray flags then are an error)."""
    if getattr(args, "engine", "local") != "ray":
        flags = (
            ("--address", args.address),
            ("--workers", args.workers),
            ("--gpus-per-worker", args.gpus_per_worker),
        )
        given = [f for f, v in flags if v is not None]
        if given:
            raise ConfigError(
                f"{' and '.join(given)} apply to --engine ray only; add --engine ray or drop them"
            )
        return None
    from llmapps.ray_engine import RayEngineConfig

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give 1 or more actors")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker {args.gpus_per_worker}: give 0 or more")
    return RayEngineConfig(
        address=args.address,
        gpus_per_worker=args.gpus_per_worker,
        **({"workers": args.workers} if args.workers else {}),
    )


def _chosen_strategies(name: str, args: argparse.Namespace) -> list[str]:
    """The strategies the command builds: ``--strategies`` (default every one) or just ``name``."""
    from llmapps.strategies.base import STRATEGIES

    if not hasattr(args, "strategies"):
        return [name]
    raw = getattr(args, "strategies", None)
    return [s.strip() for s in raw.split(",") if s.strip()] if raw else STRATEGIES.names()


def strategy_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Strategy config options from CLI flags for the strategy ``name``.

    A flag (or ``--set`` field) that none of the command's strategies has is a ``ConfigError``
    naming the strategies that take it and the options the chosen ones have; with several
    strategies (``--strategies``) each gets the fields it has.
    """
    from llmapps.options import parse_assignments
    from llmapps.strategies.base import STRATEGIES

    chosen = _chosen_strategies(name, args)
    fields = {
        n: set(STRATEGIES.get(n).config_class.model_fields) - {"kind"} for n in {*chosen, name}
    }
    given: dict[str, tuple[str, Any]] = {}
    for attr, flag in STRATEGY_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            given[attr] = (flag, value)
    for key, value in parse_assignments(getattr(args, "set", []) or [], "--set").items():
        given[key] = (f"--set {key}", value)
    for attr, (flag, _) in given.items():
        if not any(attr in fields[n] for n in chosen):
            takers = [
                n for n in STRATEGIES.names() if attr in STRATEGIES.get(n).config_class.model_fields
            ]
            which = " and ".join(repr(n) for n in chosen)
            hint = f"it is an option of {', '.join(takers)}" if takers else "no strategy has it"
            valid = ", ".join(sorted(set().union(*(fields[n] for n in chosen))))
            raise ConfigError(
                f"{flag} does not apply to the {which} strateg{'y' if len(chosen) == 1 else 'ies'} "
                f"({hint}); {'its' if len(chosen) == 1 else 'their'} options: {valid}"
            )
    opts = {attr: value for attr, (_, value) in given.items() if attr in fields[name]}
    batch = getattr(args, "batch_size", None)
    if batch is not None and "batch_size" in fields[name] and "batch_size" not in opts:
        opts["batch_size"] = batch
    return opts


def app_options(args: argparse.Namespace) -> dict[str, Any]:
    """App options from ``-O KEY=VALUE`` and ``--KEY VALUE`` flags, unchecked: the app's options
    model checks them when the chain is built (``load_chain``)."""
    from llmapps.options import parse_assignments

    return parse_assignments(getattr(args, "app_option", None) or [], "-O")


def check_app_options(app: str, args: argparse.Namespace) -> dict[str, Any]:
    """``app_options(args)`` checked against the app's options model now, before models load."""
    from llmapps.apps import get_app

    raw = app_options(args)
    get_app(app).parse_options(raw)
    return raw


def app_flags_to_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--KEY VALUE`` / ``--KEY=VALUE`` flags the command does not define, rewritten as
    ``-O KEY=VALUE`` for commands that build an app: the chosen app's options model, not this
    parser, says which keys exist (``--variant two-step`` for news-riddle)."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    argv = list(argv)
    at = next((i for i, a in enumerate(argv) if sub is not None and a in sub.choices), None)
    if sub is None or at is None or not sub.choices[argv[at]].get_default("app_flags"):
        return argv
    known = list(sub.choices[argv[at]]._option_string_actions)
    out, i = argv[: at + 1], at + 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        name, sep, value = arg.partition("=")
        if not arg.startswith("--") or len(arg) == 2 or any(k.startswith(name) for k in known):
            out.append(arg)
            i += 1
            continue
        if not sep:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise ConfigError(
                    f"{arg} needs a value: {arg} VALUE (an app option, as -O {arg[2:]}=VALUE)"
                )
            value = argv[i + 1]
            i += 1
        out += ["-O", f"{name[2:]}={value}"]
        i += 1
    return out


# ---------------------------------------------------------------- commands


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


def cmd_run(args: argparse.Namespace) -> int:
    from llmapps.apps import get_app, load_chain
    from llmapps.options import option_key
    from llmapps.runner import run_file

    spec = get_app(args.app)
    options = check_app_options(args.app, args)
    strat_opts = strategy_options(args.strategy, args)  # bad flags fail before inputs are read
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
    engine = engine_config(args)
    if engine is not None:  # --engine ray: the same rows and file, written from a pool of actors
        from llmapps.ray_engine import run_file_ray

        summary = run_file_ray(
            args.app,
            args.strategy,
            inputs,
            Path(args.out),
            config=engine,
            strategy_options=strat_opts,
            app_options=options,
            batch_size=args.batch_size or 16,
            extra={"strategy": args.strategy},
            progress=not args.quiet,
            retry_failed=args.retry_failed,
        )
        print(summary.describe(args.out), file=sys.stderr)
        return ROWS_FAILED_EXIT if summary.unfinished else 0
    chain = load_chain(args.app, args.strategy, app_options=options, **strat_opts)
    summary = run_file(
        chain,
        inputs,
        Path(args.out),
        batch_size=args.batch_size or 16,
        extra={"strategy": args.strategy},
        progress=not args.quiet,
        retry_failed=args.retry_failed,
    )
    print(summary.describe(args.out), file=sys.stderr)
    return ROWS_FAILED_EXIT if summary.unfinished else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from llmapps.apps import default_app
    from llmapps.demo import run_demo

    names = args.strategies.split(",") if args.strategies else None
    app = args.app or default_app("demo", fallback=lambda s: s.samples is not None)
    run_demo(app, names, n=args.n, app_options=check_app_options(app, args), flags=args)
    return 0


def cmd_models_build(args: argparse.Namespace) -> int:
    import shutil

    from llmapps.models.packaged import ensure_packaged_model, is_packaged, packaged_models
    from llmapps.models.tiny import TEST_SPEC, TinySpec, ensure_tiny_models
    from llmapps.settings import get_settings

    settings = get_settings()
    names = args.names or [settings.base_model, settings.instruct_model]
    tiny = [n for n in names if n in ("tiny-base", "tiny-instruct")]
    unknown = [n for n in names if n not in tiny and not is_packaged(n)]
    if unknown:
        known = ["tiny-base", "tiny-instruct", *packaged_models()]
        raise ConfigError(
            f"cannot build {', '.join(unknown)}: llmapps builds {', '.join(known)} "
            "(hub ids, folders and .gguf files are used as they are)"
        )
    for name in dict.fromkeys(names):
        if args.force:
            shutil.rmtree(settings.models_dir / name, ignore_errors=True)
        if is_packaged(name):
            print(f"{name}: {ensure_packaged_model(name, settings)}")
    if tiny:
        ensure_tiny_models(settings.models_dir, TEST_SPEC if args.spec == "test" else TinySpec())
        print(f"tiny-base and tiny-instruct are in {settings.models_dir}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    import json

    from llmapps.models.packaged import folder_size, packaged_models, read_model_manifest
    from llmapps.settings import get_settings

    settings = get_settings()
    print(f"{'name':23} {'kind':9} {'state':10} {'size':>8}  source")
    for name, entry in packaged_models().items():
        folder = settings.models_dir / name
        manifest = read_model_manifest(folder)
        state = "built" if manifest else "not built"
        size = f"{folder_size(folder) / 2**20:,.0f} MB" if manifest else "-"
        print(
            f"{name:23} {entry.kind:9} {state:10} {size:>8}  pip: {entry.package} ({entry.gguf_file})"
        )
    for name in ("tiny-base", "tiny-instruct"):
        folder = settings.models_dir / name
        manifest_path = folder / "llmapps-tiny.json"
        built = manifest_path.exists()
        size = f"{folder_size(folder) / 2**20:,.0f} MB" if built else "-"
        detail = ""
        if built:
            data = json.loads(manifest_path.read_text())
            detail = f", final loss {data.get('final_loss', float('nan')):.3f}"
        kind = "base" if name == "tiny-base" else "instruct"
        print(
            f"{name:23} {kind:9} {'built' if built else 'not built':10} {size:>8}  "
            f"trained here on the bundled articles{detail}"
        )
    print(f"models folder: {settings.models_dir}")
    print(f"base model in use:     {settings.base_model}")
    print(f"instruct model in use: {settings.instruct_model}")
    return 0


# ---------------------------------------------------------------- parser


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

    p = sub.add_parser("strategies", help="list registered strategies and what they need")
    p.set_defaults(func=cmd_strategies)
    p = sub.add_parser("apps", help="list registered apps")
    p.set_defaults(func=cmd_apps)

    p = sub.add_parser("run", help="run an app over a file of inputs, resumable")
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
    add_strategy_flags(p)
    add_engine_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run an app on bundled test samples with every strategy")
    p.add_argument("--app", help="app name (default: the app that declares itself the demo's)")
    p.add_argument("-n", type=int, default=5, help="number of test samples")
    add_strategy_flags(p, multiple=True)
    p.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="the packaged pretrained models and the tiny ones")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser("build", help="convert packaged models / train the tiny ones, once")
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="gemma-3-270m, smollm2-135m-instruct, tiny-base, tiny-instruct "
        "(default: the base and instruct models in use)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if built")
    p.add_argument(
        "--spec", choices=["default", "test"], default="default", help="tiny models' size"
    )
    p.set_defaults(func=cmd_models_build)
    p = msub.add_parser("list", help="show the models and where they are")
    p.set_defaults(func=cmd_models_list)

    _register_plugins(sub)
    return parser


def _register_plugins(sub: Any) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="llmapps.cli"):
        try:
            ep.load()(sub)
        except Exception as err:  # a broken plugin must not take the CLI down
            log.warning("CLI plugin %s failed to load: %s", ep.name, err)


def use_tiny_models() -> None:
    """``--tiny``: the tiny local models become this process's base and instruct models (through
    the environment, so every setting reader sees them: strategies, the demo's server, lora)."""
    import os

    os.environ["LLMAPPS_BASE_MODEL"] = "tiny-base"
    os.environ["LLMAPPS_INSTRUCT_MODEL"] = "tiny-instruct"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = app_flags_to_options(parser, sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        parser.error(str(err))
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "tiny", False):
        use_tiny_models()
    try:
        return int(args.func(args) or 0)
    except LlmappsError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
