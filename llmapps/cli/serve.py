"""``llmapps serve``: a local model (strategy, model id/dir or adapter) behind an OpenAI-style API.

Registered through the ``llmapps.cli`` entry-point group. The API key is read only from the
environment (``LLMAPPS_SERVICE__SERVER__API_KEY``), never from a flag, so it stays out of shell
history and process lists.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from llmapps.cli import flags
from llmapps.errors import ConfigError

ABOUT = (  # llmapps serve --help
    "Serve a local model at /v1/chat/completions, /v1/completions and /v1/models. "
    "Set LLMAPPS_SERVICE__SERVER__API_KEY to require 'Authorization: Bearer <key>'."
)


def register(subparsers: Any, flags: Any) -> None:
    """Add the ``serve`` sub-command."""
    p = subparsers.add_parser(
        "serve", help="serve a local model over an OpenAI-compatible HTTP API", description=ABOUT
    )
    flags.add_strategy_flags(p)
    # default: zero-shot, or lora when --adapter names an adapter folder
    p.set_defaults(strategy=None, func=cmd_serve)
    p.add_argument("--model", help="hub id or directory to serve instead of the strategy's model")
    p.add_argument(
        "--served-model-name", help="the id clients send as 'model' (default: the model's name)"
    )
    flags.add(p, "host", port="port (default 8000; 0: any free port)")
    p.add_argument("--max-batch", type=int, help="most requests in one batched generate call")
    p.add_argument("--batch-wait-ms", type=float, help="how long to gather requests into a batch")
    p.add_argument("--max-concurrent", type=int, help="prompts in flight (all requests) before 429")
    p.add_argument("--max-prompts", type=int, help="most prompts in one /v1/completions request")
    flags.add(
        p,
        allowed_hosts="comma-separated Host names to answer (default: loopback names on loopback, "
        "any otherwise); no CORS headers are ever sent",
    )
    p.add_argument("--max-tokens-limit", type=int, help="largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, help="largest request body")
    p.add_argument(
        "--app", help="answer /v1/chat/completions with this app's chain on --strategy (a chat app)"
    )


def check_strategy(args: argparse.Namespace) -> None:
    """Flag combinations that cannot serve, refused before anything loads or trains; sets the
    default strategy (zero-shot, or lora with --adapter)."""
    from llmapps.strategies.base import STRATEGIES, Strategy

    if args.model:
        if args.adapter:
            raise ConfigError(
                "--adapter goes with --strategy lora (which names its base model), not --model"
            )
        return
    if args.strategy is None:
        args.strategy = "lora" if args.adapter else "zero-shot"
    cls = STRATEGIES.get(args.strategy)
    if args.adapter and "adapter" not in cls.config_class.model_fields:
        raise ConfigError(
            f"the {args.strategy!r} strategy takes no adapter; use --strategy lora --adapter DIR"
        )
    if (  # it generates remotely: no model here to serve (before starting its defaults' server)
        cls.generation_model is Strategy.generation_model
        and cls.scoring_model is Strategy.scoring_model
    ):
        raise ConfigError(_no_local_model(args.strategy))


def _no_local_model(name: str) -> str:
    return (
        f"the {name!r} strategy has no local model to serve; "
        "use zero-shot, few-shot, lora or --model"
    )


@contextlib.contextmanager
def served_options(args: argparse.Namespace) -> Iterator[dict[str, Any] | None]:
    """The served strategy's options, built as the bench, demo, chat and web app build them
    (``llmapps.compose``: lora finds or trains its demo adapter), held for the block; None with
    ``--model``. A strategy that cannot run is a one-line ``ConfigError`` with its reason."""
    from llmapps.compose import runnable_options

    check_strategy(args)
    if args.model:
        yield None
        return
    with runnable_options(
        args.strategy,
        getattr(args, "settings", None),  # --tiny
        overrides=flags.strategy_options(args.strategy, args),
    ) as opts:
        yield opts


def resolve_model(args: argparse.Namespace, options: dict[str, Any] | None = None) -> Any:
    """The ``LocalModel`` to serve: ``--model`` as is, else the strategy's own (with adapter),
    built with ``options`` (default: the flags alone; ``served_options`` gives the composed
    ones)."""
    from llmapps.models.llamacpp import load_model
    from llmapps.strategies.base import make_strategy

    check_strategy(args)
    if args.model:
        return load_model(args.model, batch_size=args.batch_size)  # a .gguf runs on llama.cpp
    if options is None:
        options = flags.strategy_options(args.strategy, args)
    settings = getattr(args, "settings", None)  # --tiny
    lm = make_strategy(args.strategy, settings=settings, **options).generation_model()
    if lm is None:
        raise ConfigError(_no_local_model(args.strategy))
    return lm


def server_settings(args: argparse.Namespace) -> Any:
    """Settings' ``service.server`` with the flags on top, validated."""
    from llmapps.serving.server import server_settings as with_flags

    given = {
        "host": args.host,
        "port": args.port,
        "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms,
        "max_concurrent": args.max_concurrent,
        "max_prompts": args.max_prompts,
        "allowed_hosts": [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
        if args.allowed_hosts
        else None,
        "max_tokens": args.max_tokens_limit,
        "max_body_bytes": args.max_body_bytes,
    }
    return with_flags(**given)


def app_chat(args: argparse.Namespace, options: dict[str, Any] | None = None) -> Any:
    """``chat(messages) -> str``: the app ``--app`` built on the served strategy (with
    ``options``: default, the flags alone; ``served_options`` gives the composed ones)."""
    from llmapps.apps import APPS, get_app, load_chain

    spec = get_app(args.app)
    if spec.chat is None:
        chats = [n for n in APPS.names() if APPS.get(n).chat is not None]
        raise ConfigError(
            f"the app {args.app!r} is not a chat; --app takes one of: {', '.join(chats) or '(none)'}"
        )
    if args.model:
        raise ConfigError("--app builds the app on --strategy; drop --model")
    app_opts = flags.check_app_options(args.app, args)
    if options is None:
        options = flags.strategy_options(args.strategy, args)
    chain = load_chain(args.app, args.strategy, app_options=app_opts, **options)
    chat = spec.chat
    return lambda messages: chat(chain, messages)


def cmd_serve(args: argparse.Namespace) -> int:
    from llmapps.serving.app import create_app
    from llmapps.serving.server import bind_socket, is_loopback, uvicorn_server

    server = server_settings(args)
    if not is_loopback(server.host) and server.api_key is None:
        raise ConfigError(
            f"refusing to serve on {server.host} without an API key: set "
            "LLMAPPS_SERVICE__SERVER__API_KEY, or keep the default host 127.0.0.1"
        )
    if getattr(args, "app", None):
        flags.check_app_options(args.app, args)  # a bad -O fails now, before any model loads
    with served_options(args) as options:
        lm = resolve_model(args, options)
        chat = app_chat(args, options) if getattr(args, "app", None) else None
        name = args.served_model_name or getattr(args, "app", None) or args.model or lm.name
        app = create_app(lm, server, model_name=name, chat=chat)
        sock = bind_socket(server.host, server.port)
        port = sock.getsockname()[1]
        print(
            f"serving {name!r} at http://{server.host}:{port}/v1 "
            f"({'API key required' if server.api_key else 'no API key'}); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        uvicorn_server(app).run(sockets=[sock])
    return 0
