"""``llmapps chat`` (talk to the shop assistant) and ``llmapps annotate`` (check and format dialogues).

Registered by the boutique app through the command line's entry-point group (which hands
``register_chat`` its flags module; nothing here imports the command line)::

    llmapps chat boutique --strategy zero-shot --session alice
    > How much is the white linen shirt?
    > and in blue?
    > /history      /reset      /quit

    llmapps annotate check new_dialogues.jsonl            # the annotation format, every problem listed
    llmapps annotate format new_dialogues.jsonl --out sft.jsonl   # cleaned, as fine-tuning rows
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from llmapps.errors import ConfigError, InputError
from llmapps.files import check_output, writing
from llmapps.jsonl import write_jsonl


def _chat_apps() -> list[str]:
    from llmapps.apps import APPS

    return [n for n in APPS.names() if APPS.get(n).chat is not None]


def run_chat(chain: Any, session: str, stdin: TextIO, stdout: TextIO) -> int:
    """The read-answer loop; a bad message is reported and the session goes on unharmed."""
    from chains.boutique import check_session_id

    check_session_id(session)
    chain.history(session)  # a damaged history file: one line before the first question
    interactive = stdin.isatty()
    print(
        f"session {session!r}: ask about the shop; /history, /reset, /quit", file=stdout, flush=True
    )
    while True:
        if interactive:
            print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            return 0
        text = line.rstrip("\n")
        command = text.strip().lower()
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            chain.reset(session)
            print("(history cleared)", file=stdout, flush=True)
            continue
        if command == "/history":
            turns = chain.history(session)
            for m in turns:
                print(f"  {'you' if m['role'] == 'user' else 'shop'}: {m['content']}", file=stdout)
            print(f"({len(turns)} messages)", file=stdout, flush=True)
            continue
        try:
            out = chain.invoke(text, config={"configurable": {"session_id": session}})
        except InputError as err:
            print(f"error: {err}", file=stdout, flush=True)
            continue
        print(f"shop: {out['answer']}", file=stdout)
        if out["citations"]:
            print(
                "      cited: " + "; ".join(f"{c['id']} {c['title']}" for c in out["citations"]),
                file=stdout,
            )
        fixes = len(out["guard"]["corrected"]) + len(out["guard"]["withheld"])
        if fixes:
            print(
                f"      (the guard corrected or withheld {fixes} claim(s) of the model)",
                file=stdout,
            )
        stdout.flush()


def cmd_chat(args: argparse.Namespace, flags: Any) -> int:
    from chains.boutique import check_session_id
    from llmapps.apps import load_chain
    from llmapps.compose import runnable_options

    check_session_id(args.session)  # before minutes of model loading
    apps = _chat_apps()
    if args.app not in apps:
        raise ConfigError(
            f"{args.app!r} is not a chat app; `llmapps chat` works with: {', '.join(apps) or '(none)'}"
        )
    app_options: dict[str, Any] = flags.app_options(args)  # -O KEY=VALUE / --KEY VALUE
    if args.history_db:
        app_options["history_db"] = args.history_db
    if args.index:
        app_options["index"] = args.index
    # the strategy as the bench, demo, daily and web app build it (llmapps.compose): lora finds
    # or trains its demo adapter, service uses the configured endpoint or a local server
    with runnable_options(
        args.strategy,
        getattr(args, "settings", None),  # --tiny
        overrides=flags.strategy_options(args.strategy, args),
    ) as opts:
        chain = load_chain(args.app, args.strategy, app_options=app_options, **opts)
        return run_chat(chain, args.session, sys.stdin, sys.stdout)


def register_chat(subparsers: Any, flags: Any) -> None:
    """Add ``chat`` to the ``llmapps`` command line (``flags``: its shared flags, handed over)."""
    p = subparsers.add_parser("chat", help="chat with an app that keeps a conversation (boutique)")
    p.add_argument("app", nargs="?", default="boutique", help="the chat app (default boutique)")
    flags.add_strategy_flags(p)
    p.set_defaults(strategy="zero-shot", func=partial(cmd_chat, flags=flags))
    p.add_argument(
        "--session", default="default", help="session id: its history is kept across runs"
    )
    p.add_argument(
        "--history-db",
        help="SQLite file of histories (default $LLMAPPS_HOME/boutique/history.sqlite)",
    )
    p.add_argument("--index", help="catalog index folder (default: the bundled catalog)")


def cmd_annotate(args: argparse.Namespace) -> int:
    from collections import Counter

    from chains import boutique, boutique_data, news_annotate

    if args.action == "guide" or news_annotate.is_news_annotation_file(Path(args.file or "")):
        return news_annotate.cmd_annotate(args)  # news-riddle references (chains/news_annotate.py)
    if not args.file:
        raise ConfigError(f"annotate {args.action} needs a FILE")
    if args.action == "agree":
        raise ConfigError("annotate agree compares news-riddle annotations; dialogues have none")

    if args.action == "format" and args.out:  # before reading: never overwrite the dialogues
        check_output(args.out, [args.file])
    rows = boutique_data.read_dialogues(Path(args.file))  # InputError lists every problem
    kinds = Counter(t["kind"] for d in rows for t in d["turns"])
    print(
        f"{args.file}: {len(rows)} dialogues, {sum(kinds.values())} turns valid "
        f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"
    )
    if args.action == "format":
        if not args.out:
            raise ConfigError("annotate format needs --out FILE.jsonl")
        examples = boutique.examples(rows=rows)
        with writing(args.out, [args.file]) as out:
            write_jsonl(out, examples)  # a temp file and a rename
        print(f"{len(examples)} fine-tuning rows (sources, history, question, answer) -> {out}")
    return 0


def register_annotate(subparsers: Any, flags: Any) -> None:
    """Add ``annotate`` (the boutique dialogue annotation format) to the ``llmapps`` command line."""
    p = subparsers.add_parser(
        "annotate",
        help="check annotated shop dialogues or news riddles, or format them for fine-tuning",
    )
    p.add_argument(
        "action",
        choices=("check", "format", "agree", "guide"),
        help="check: validate; format: also write fine-tuning rows (news riddles: a data "
        "folder); agree: news riddles' inter-annotator agreement; guide: how to write one",
    )
    p.add_argument(
        "file",
        nargs="?",
        help="JSONL of dialogues (chains/boutique_data.py) or news riddles (chains/news_annotate.py)",
    )
    p.add_argument("--out", "-o", help="format: the JSONL of fine-tuning rows (news: a folder)")
    p.add_argument(
        "--split",
        default="train",
        choices=("train", "validation"),
        help="news riddles: the split new articles join (never test)",
    )
    p.set_defaults(func=cmd_annotate)
