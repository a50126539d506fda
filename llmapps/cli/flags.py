"""The flags commands share, and their reading into options: what each command and each app's
command is handed (``register(subparsers, flags)`` gets this module), so nothing imports the
command line to reuse its flags.

- ``add(p, "limit", "quiet", out="...")`` / ``add_group``: the flags many commands share
  (``SHARED``: ``--out``, ``--limit``, ``--quiet``, ``--seed``...) and ``llmapps NAME ACTION``;
- ``add_strategy_flags`` / ``strategy_options`` / ``app_options`` / ``check_app_options``: a
  strategy's flags (``--strategy``, ``--base-model``, ``--set``...) and an app's (``-O``);
- ``add_engine_flags`` / ``engine_config``: ``--engine ray`` and its pool;
- ``add_source_flags`` / ``run_ingest``: the news sources, fetching and cleaning flags
  (``SOURCE_FLAGS``);
- ``app_flags_to_options``: ``--KEY VALUE`` rewritten as ``-O KEY=VALUE`` for app commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from llmapps.errors import ConfigError

MODEL_FLAGS = {"base_model": "--base-model", "instruct_model": "--instruct-model"}
# strategy config fields set by a flag of their own; a flag no chosen strategy has is an error.
# --batch-size is not among them: it is also the batch of the command itself (run, bench, daily),
# so it goes to the strategies that have the field and is never an error.
STRATEGY_FLAGS = {**MODEL_FLAGS, "adapter": "--adapter", "max_new_tokens": "--max-new-tokens"}


# Flags many commands share, written once: name -> (flag strings, argparse keywords). A command
# adds them with ``add(p, "limit", "quiet", out="folder for the sheet")``: a name given as a
# keyword gets its own help (a string) or its own keywords (a dict over the shared ones).
SHARED: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "app": (("app",), {"help": "app name (`llmapps apps` lists them)"}),
    "out": (("--out", "-o"), {"help": "where the results go"}),
    "split": (("--split",), {"default": "test", "help": "sample split (default: test)"}),
    "limit": (("--limit",), {"type": int, "help": "only the first N samples"}),
    "seed": (("--seed",), {"type": int, "default": 0}),
    "batch_size": (("--batch-size",), {"type": int, "help": "prompts per generate() call"}),
    "max_new_tokens": (("--max-new-tokens",), {"type": int, "help": "generation budget"}),
    "strategies": (("--strategies",), {"help": "comma-separated strategy names"}),
    "base_model": (("--base-model",), {"help": "base model: hub id or directory"}),
    "adapter": (("--adapter",), {"help": "LoRA adapter folder"}),
    "recipe": (("--recipe", "-r"), {"help": "recipe YAML path or shipped name"}),
    "resume": (
        ("--resume",),
        {"action": "store_true", "help": "continue from the last checkpoint"},
    ),
    "overwrite": (
        ("--overwrite",),
        {"action": "store_true", "help": "discard an earlier run's checkpoints"},
    ),
    "set": (("--set",), {"action": "append", "default": [], "metavar": "FIELD=VALUE"}),
    "host": (("--host",), {"help": "bind address (default 127.0.0.1; others need an API key)"}),
    "port": (("--port",), {"type": int, "help": "port"}),
    "allowed_hosts": (
        ("--allowed-hosts",),
        {"help": "comma-separated Host names to answer (default: loopback names on loopback)"},
    ),
    "quiet": (("--quiet", "-q"), {"action": "store_true", "help": "no progress bar"}),
}


def add(p: Any, *names: str, **custom: str | dict[str, Any]) -> None:
    """Add the shared flags ``names``, then those in ``custom``, each with this command's help (a
    string) or keywords (a dict, over the shared ones); see ``SHARED``."""
    for name in (*names, *custom):
        strings, keywords = SHARED[name]
        own = custom.get(name, {})
        p.add_argument(*strings, **{**keywords, **({"help": own} if isinstance(own, str) else own)})


def add_group(subparsers: Any, name: str, help: str, *, metavar: str | None = "ACTION") -> Any:
    """``llmapps NAME ACTION ...``: a command made of actions; returns the actions' sub-parsers
    (each action's choice is ``args.<name>_command``)."""
    p = subparsers.add_parser(name, help=help)
    dest = f"{name.replace('-', '_')}_command"
    return p.add_subparsers(dest=dest, metavar=metavar, required=True)


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
    """``--engine`` and where a Ray run goes (``llmapps.bench.ray_engine``); Ray is imported only for it."""
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
    from llmapps.bench.ray_engine import RayEngineConfig

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
    if getattr(args, "settings", None) is not None:  # --tiny: the models the settings name
        from llmapps.compose import settings_options

        opts = {**settings_options(name, args.settings), **opts}
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


# The news source, fetch and cleaning flags ``news fetch`` and ``daily`` share, by group: (flags,
# kind, help); a kind is a type (its value, default None: settings decide), ``bool`` (a switch) or
# a metavar (a repeatable value).
SOURCE_FLAGS: dict[str, tuple[tuple[str, Any, str], ...]] = {
    "sources": (
        (
            "--feed -f",
            "URL_OR_FILE",
            "RSS/RDF/Atom feed URL, or a local JSONL/CSV/text/HTML/feed file or folder "
            "(repeatable)",
        ),
        (
            "--newsapi",
            "QUERY",
            "search a NewsAPI-compatible API (key from NEWSAPI_KEY or LLMAPPS_INGEST__NEWSAPI_KEY)",
        ),
        ("--newsapi-url", str, "base URL of the NewsAPI-compatible API"),
        ("--language", str, "NewsAPI language filter, e.g. en"),
    ),
    "fetching": (
        ("--timeout", float, "seconds per request (default 10)"),
        (
            "--allow-private-addresses",
            bool,
            "also fetch loopback, private and link-local addresses (local or intranet feeds); "
            "refused by default, as feeds choose the links that get fetched",
        ),
        ("--retries", int, "extra attempts after 5xx/429/network errors (default 2)"),
        ("--concurrency", int, "requests in flight at once (default 4)"),
        ("--user-agent", str, "User-Agent header"),
        ("--no-full-text", bool, "never fetch article pages for teasers"),
        ("--max-per-source", int, "keep at most N entries per source"),
        (
            "--lenient",
            bool,
            "keep entries recovered from broken XML or wrong encodings (reported as warnings)",
        ),
    ),
    "cleaning": (
        ("--min-words", int, "drop shorter articles (default 30)"),
        ("--max-chars", int, "cut longer articles at a sentence (default 20000)"),
        ("--near-dup", float, "near-duplicate Jaccard threshold (default 0.7)"),
        ("--no-dedup", bool, "keep duplicates"),
        ("--scrub-pii", bool, "replace e-mails, phones, cards and IPs (training text)"),
    ),
}


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """The source, fetch and cleaning flags ``news fetch`` and ``daily`` share (``SOURCE_FLAGS``)."""
    for title, rows in SOURCE_FLAGS.items():
        group = p.add_argument_group(title)
        for names, kind, help in rows:
            if kind is bool:
                how: dict[str, Any] = {"action": "store_true"}
            elif isinstance(kind, str):
                how = {"action": "append", "default": [], "metavar": kind}
            else:
                how = {"type": kind, "default": None}
            group.add_argument(*names.split(), help=help, **how)


def ingest_options(args: argparse.Namespace) -> Any:
    """``IngestOptions`` from the flags of ``add_source_flags`` over settings."""
    from llmapps.ingest.clean import CleanOptions
    from llmapps.ingest.fetcher import FetchOptions
    from llmapps.ingest.pipeline import IngestOptions
    from llmapps.settings import get_settings

    fetch = FetchOptions.from_settings(
        timeout_s=args.timeout,
        retries=args.retries,
        concurrency=args.concurrency,
        user_agent=args.user_agent,
        allow_private=getattr(args, "allow_private_addresses", False) or None,
    )
    clean: dict[str, Any] = {
        "min_words": args.min_words,
        "max_chars": args.max_chars,
        "near_dup_threshold": args.near_dup,
    }
    clean = {k: v for k, v in clean.items() if v is not None}
    if args.no_dedup:
        clean.update(dedup=False, near_dup_threshold=None)
    clean["scrub_pii"] = args.scrub_pii
    return IngestOptions(
        fetch=fetch,
        clean=CleanOptions(**clean),
        full_text=not args.no_full_text,
        max_per_source=args.max_per_source,
        lenient=args.lenient,
        newsapi_base_url=args.newsapi_url or get_settings().ingest.newsapi_base_url,
        newsapi_language=args.language,
    )


def check_sources(args: argparse.Namespace) -> None:
    """Refuse flags that name no source (before a command takes its output's lock)."""
    from llmapps.errors import ConfigError

    if not args.feed and not args.newsapi:
        raise ConfigError("no sources: give --feed URL_OR_FILE (repeatable) or --newsapi QUERY")


def run_ingest(args: argparse.Namespace, *, quiet: bool = False) -> Any:
    """Run ingestion for the parsed flags; print per-source results to stderr; return the result."""
    from pydantic import ValidationError

    from llmapps.errors import config_error_from_validation
    from llmapps.ingest.pipeline import ingest
    from llmapps.ingest.report import print_reports

    check_sources(args)
    try:
        options = ingest_options(args)
    except ValidationError as err:
        raise config_error_from_validation("news options", err) from err
    result = ingest(args.feed, newsapi_queries=args.newsapi, options=options)
    if not quiet:
        print_reports(result)
    return result
