"""``llmapps index …`` (build, add, info, search, delete); ``llmapps ask`` is the news-qa app's.

Registered through the ``llmapps.cli`` entry-point group; heavy imports happen inside commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from llmapps.errors import RetrievalError

DEFAULT_INDEX = "indexes/news"


def _writing(folder: str | Path) -> Any:
    """Hold the index folder's lock for a whole load-change-save, one writer at a time."""
    from llmapps.locks import exclusive_lock

    return exclusive_lock(Path(folder) / ".lock", f"the index {folder}", error=RetrievalError)


def _store(path: str) -> Any:
    from llmapps.retrieval.vectorstore import FaissVectorStore

    store = FaissVectorStore.load(path)
    store.require_documents()
    return store


def _add(store: Any, inputs: list[str], chunk_tokens: int | None) -> tuple[int, int, int]:
    from llmapps.retrieval.loaders import load_documents

    docs = [
        d
        for i in inputs
        for d in load_documents(i, embedding_model=store.model_id, chunk_tokens=chunk_tokens)
    ]
    added = store.add_documents(docs, skip_duplicates=True)
    return len(docs), len(added), len(store.last_skipped)


def cmd_build(args: argparse.Namespace) -> int:
    from llmapps.files import check_output

    check_output(args.out, args.input, kind="folder")  # no input inside it, not a file
    with _writing(args.out):
        return _build(args)


def _build(args: argparse.Namespace) -> int:
    from llmapps.retrieval.embeddings import make_embeddings
    from llmapps.retrieval.vectorstore import FaissVectorStore
    from llmapps.settings import get_settings

    out = Path(args.out)
    if (out / "manifest.json").exists() and not args.force:
        raise RetrievalError(
            f"{out} already holds an index; add to it with `llmapps index add --index {out} "
            "--input …`, or pass --force to rebuild it"
        )
    r = get_settings().retrieval
    t0 = time.perf_counter()
    emb = make_embeddings(args.model, progress=not args.quiet)
    store = FaissVectorStore(
        emb, index_kind=args.kind or r.index_kind, ann_above=r.auto_ann_above, path=out
    )
    _n, added, skipped = _add(store, args.input, args.chunk_tokens)
    if not added:
        raise RetrievalError(f"no documents to index in {', '.join(args.input)} (all empty?)")
    assert store.index is not None  # adding documents created it
    store.index.extra = {
        "inputs": [str(i) for i in args.input],
        "chunk_tokens": args.chunk_tokens or r.chunk_tokens,
        "chunk_overlap": r.chunk_overlap,
    }
    store.save(out)
    print(
        f"indexed {added} chunks ({skipped} skipped) from {', '.join(args.input)} into {out} "
        f"[{store.index.params.kind}, {emb.stats['misses']} embedded, {emb.stats['hits']} from cache] "
        f"in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    if not Path(args.index).is_dir():
        from llmapps.retrieval.store import build_hint

        raise RetrievalError(f"no index at {args.index}; " + build_hint(args.index))
    with _writing(args.index):
        return _add_to(args)


def _add_to(args: argparse.Namespace) -> int:
    from llmapps.retrieval.embeddings import CachedEmbeddings
    from llmapps.retrieval.vectorstore import FaissVectorStore

    store = FaissVectorStore.load(args.index)
    assert isinstance(
        store.embedding, CachedEmbeddings
    )  # load() without embeddings makes cached ones
    store.embedding.progress = not args.quiet
    _n, added, skipped = _add(
        store, args.input, store.index.extra.get("chunk_tokens") if store.index else None
    )
    if added:
        store.save()
    print(
        f"added {added} chunks to {args.index}; skipped {skipped} (empty or already indexed); "
        f"{len(store)} in total",
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

    store = _store(args.index)
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
    if not Path(args.index).is_dir():
        from llmapps.retrieval.store import build_hint

        raise RetrievalError(f"no index at {args.index}; " + build_hint(args.index))
    with _writing(args.index):
        return _delete(args)


def _delete(args: argparse.Namespace) -> int:
    store = _store(args.index)
    wanted = set(args.ids)
    # an article id removes all of its chunks
    ids = [
        r.id
        for r in store.index.records.values()
        if r.id in wanted or r.metadata.get("doc_id") in wanted
    ]
    if not ids:
        raise RetrievalError(
            f"none of {sorted(wanted)} is in {args.index}; `llmapps index search` shows ids"
        )
    store.delete(ids)
    store.save()
    print(f"deleted {len(ids)} chunks; {len(store)} left", file=sys.stderr)
    return 0


def register(subparsers: Any, flags: Any) -> None:
    """Add ``index`` to the ``llmapps`` command line."""
    index = subparsers.add_parser("index", help="build, extend, inspect and search FAISS indexes")
    isub = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    p = isub.add_parser(
        "build", help="embed and index documents (JSONL/CSV/text/HTML/Markdown or a folder)"
    )
    p.add_argument(
        "--input", "-i", required=True, action="append", help="file or folder (repeatable)"
    )
    p.add_argument(
        "--out", "-o", default=DEFAULT_INDEX, help=f"index folder (default {DEFAULT_INDEX})"
    )
    p.add_argument(
        "--kind", choices=["auto", "flat", "hnsw", "ivf"], help="default: settings (auto)"
    )
    p.add_argument("--model", help="embedding model (default: settings, all-MiniLM-L6-v2)")
    p.add_argument("--chunk-tokens", type=int, help="split documents longer than this")
    p.add_argument("--force", action="store_true", help="replace an existing index")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build)

    p = isub.add_parser(
        "add", help="add documents; ones already indexed (same content) are skipped"
    )
    p.add_argument("--index", default=DEFAULT_INDEX)
    p.add_argument("--input", "-i", required=True, action="append")
    p.add_argument("--quiet", "-q", action="store_true")
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
