"""``llmapps index …`` (build, add, info, search, delete); ``llmapps ask`` is the news-qa app's.

The work is ``llmapps.retrieval.folder`` (build, add, delete under the folder's lock) and the
store; this reads the flags and prints. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmapps.errors import RetrievalError

DEFAULT_INDEX = "indexes/news"


def cmd_build(args: argparse.Namespace) -> int:
    from llmapps.files import check_output
    from llmapps.retrieval.folder import build_index

    check_output(args.out, args.input, kind="folder")  # no input inside it, not a file
    given = {k: getattr(args, k) for k in ("model", "kind", "chunk_tokens", "force")}
    done = build_index(args.out, args.input, progress=not args.quiet, **given)
    print(
        f"indexed {done.added} chunks ({done.skipped} skipped) from {', '.join(args.input)} into "
        f"{Path(args.out)} [{done.kind}, {done.embedded} embedded, {done.cached} from cache] "
        f"in {done.seconds:.1f}s",
        file=sys.stderr,
    )
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from llmapps.retrieval.folder import add_to_index

    done = add_to_index(args.index, args.input, progress=not args.quiet)
    print(
        f"added {done.added} chunks to {args.index}; skipped {done.skipped} (empty or already "
        f"indexed); {done.total} in total",
        file=sys.stderr,
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.retrieval.store import VectorIndex, read_manifest

    m = read_manifest(args.index)
    index = VectorIndex.load(args.index)  # verifies checksums and counts
    table = Table(title=f"index {args.index}", show_header=False)
    for key in (
        "embedding_model",
        "dimension",
        "normalized",
        "metric",
        "count",
        "generation",
        "updated",
    ):
        table.add_row(key, str(m.get(key)))
    table.add_row("index", json.dumps(m["index"]))
    table.add_row(
        "documents", str(len({r.metadata.get("doc_id", r.id) for r in index.records.values()}))
    )
    for name, digest in m["files"].items():
        table.add_row(name, digest[:16] + "…")
    if m.get("config"):
        table.add_row("config", json.dumps(m["config"]))
    if args.check:
        if len(index) == 0:
            raise RetrievalError(f"the index at {args.index} is empty; nothing to check")
        table.add_row("recall@10 vs exact", f"{index.recall_at_k(10):.3f}")
    Console().print(table)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.retrieval.folder import load_store

    store = load_store(args.index)
    if args.mmr:
        docs = [
            (d, float("nan")) for d in store.max_marginal_relevance_search(args.query, k=args.k)
        ]
    else:
        docs = store.similarity_search_with_score(args.query, k=args.k)
    if args.json:
        for d, s in docs:
            print(
                json.dumps({"id": d.id, "score": s, "metadata": d.metadata, "text": d.page_content})
            )
        return 0
    table = Table(title=f"{args.query!r} in {args.index}")
    for col in ("#", "score", "id", "title", "text"):
        table.add_column(col)
    for n, (d, s) in enumerate(docs, 1):
        table.add_row(
            str(n),
            f"{s:.3f}",
            str(d.id),
            str(d.metadata.get("title", ""))[:50],
            " ".join(d.page_content.split())[:90],
        )
    Console().print(table)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from llmapps.retrieval.folder import delete_from_index

    done = delete_from_index(args.index, args.ids)
    print(f"deleted {done.removed} chunks; {done.total} left", file=sys.stderr)
    return 0


def register(subparsers: Any, flags: Any) -> None:
    """Add ``index`` to the ``llmapps`` command line."""
    isub = flags.add_group(subparsers, "index", "build, extend, inspect and search FAISS indexes")

    p = isub.add_parser(
        "build", help="embed and index documents (JSONL/CSV/text/HTML/Markdown or a folder)"
    )
    p.add_argument(
        "--input", "-i", required=True, action="append", help="file or folder (repeatable)"
    )
    flags.add(p, out={"default": DEFAULT_INDEX, "help": f"index folder (default {DEFAULT_INDEX})"})
    p.add_argument(
        "--kind", choices=["auto", "flat", "hnsw", "ivf"], help="default: settings (auto)"
    )
    p.add_argument("--model", help="embedding model (default: settings, all-MiniLM-L6-v2)")
    p.add_argument("--chunk-tokens", type=int, help="split documents longer than this")
    p.add_argument("--force", action="store_true", help="replace an existing index")
    flags.add(p, "quiet")
    p.set_defaults(func=cmd_build)

    p = isub.add_parser(
        "add", help="add documents; ones already indexed (same content) are skipped"
    )
    p.add_argument("--index", default=DEFAULT_INDEX)
    p.add_argument("--input", "-i", required=True, action="append")
    flags.add(p, quiet={"help": None})
    p.set_defaults(func=cmd_add)

    p = isub.add_parser(
        "info", help="show an index's manifest (--check: recall@10 against exact search)"
    )
    p.add_argument("--index", default=DEFAULT_INDEX)
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=cmd_info)

    p = isub.add_parser("search", help="the documents nearest to a query")
    p.add_argument("query")
    p.add_argument("--index", default=DEFAULT_INDEX)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--mmr", action="store_true", help="diversify with maximal marginal relevance")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=cmd_search)

    p = isub.add_parser("delete", help="remove documents (by chunk id or article id)")
    p.add_argument("ids", nargs="+")
    p.add_argument("--index", default=DEFAULT_INDEX)
    p.set_defaults(func=cmd_delete)
