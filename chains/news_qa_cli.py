"""``llmapps ask``: answer a question from indexed articles with news-qa, citing its sources.

Registered by the news-qa app through the command line's entry-point group, which hands it the
shared flags (the core's ``llmapps index`` builds the index it reads)::

    llmapps index build --input data/articles.jsonl --out indexes/news
    llmapps ask "What happened with fuel prices?" --index indexes/news --strategy zero-shot
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import Any


def cmd_ask(args: argparse.Namespace, flags: Any) -> int:
    from llmapps.apps import load_chain

    app_opts: dict[str, Any] = {"k": args.k}
    if args.index:
        app_opts["index"] = args.index
    app_opts.update(
        flags.app_options(args)
    )  # -O KEY=VALUE / --KEY VALUE: any other option of the app
    chain = load_chain(
        args.app, args.strategy, app_options=app_opts, **flags.strategy_options(args.strategy, args)
    )
    result = chain.invoke({"question": args.question})
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(result.get("answer") or "(no answer)")
    cited = {c["n"] for c in result.get("citations", [])}
    print("\nsources:")
    for s in result.get("sources", []):
        mark = "*" if s["n"] in cited else " "
        print(f" {mark}[{s['n']}] {s['title']} ({s['id']}, score {s['score']:.3f})")
    if not cited:
        print("(the answer cites none of them)", file=sys.stderr)
    return 0


def register_ask(subparsers: Any, flags: Any) -> None:
    """Add ``ask`` to the ``llmapps`` command line (``flags``: its shared flags, handed over)."""
    p = subparsers.add_parser("ask", help="answer a question from indexed articles, with citations")
    p.add_argument("question")
    p.add_argument("--index", help="index folder (default: the bundled articles, indexed once)")
    p.add_argument("--app", default="news-qa", help="a retrieval app (default news-qa)")
    p.add_argument("-k", type=int, default=4, help="articles to retrieve")
    p.add_argument("--json", action="store_true")
    flags.add_strategy_flags(p)
    p.set_defaults(func=partial(cmd_ask, flags=flags))
