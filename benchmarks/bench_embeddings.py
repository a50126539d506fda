"""Embedding throughput against langchain-huggingface, and what the content-hash cache saves.

1. Throughput on the bundled articles (title + text): our ``SentenceTransformerEmbeddings`` vs
   ``HuggingFaceEmbeddings`` with default settings on the same model (the offline
   all-MiniLM-L6-v2), alternating rounds after a warm-up; the vectors must agree (cosine >= 0.999).
2. Index build vs rebuild of an unchanged corpus: load + chunk + embed + FAISS + save into a fresh
   folder with an empty cache, then again with a fresh embeddings object on the filled cache (the
   model is never loaded the second time).

    python benchmarks/bench_embeddings.py            # ~1-3 minutes on 2 cores

Prints a table and writes ``results/bench_embeddings.json`` beside this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--articles", default=str(ROOT / "data" / "articles.jsonl"))
    args = ap.parse_args(argv)

    from langchain_huggingface import HuggingFaceEmbeddings
    from rich.console import Console
    from rich.table import Table

    from llmapps.retrieval.embeddings import (
        MINILM,
        CachedEmbeddings,
        SentenceTransformerEmbeddings,
        bundled_minilm_path,
    )
    from llmapps.retrieval.loaders import load_documents
    from llmapps.retrieval.vectorstore import FaissVectorStore

    rows = [json.loads(x) for x in Path(args.articles).read_text().splitlines() if x.strip()]
    texts = [f"{r['title']}\n{r['text']}" for r in rows]

    ours = SentenceTransformerEmbeddings(MINILM, device="cpu")
    peer = HuggingFaceEmbeddings(model_name=str(bundled_minilm_path()))
    ours.embed_array(texts[:4])
    peer.embed_documents(texts[:4])
    t_ours, t_peer = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        a = ours.embed_array(texts)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = np.asarray(peer.embed_documents(texts), dtype=np.float32)
        t_peer.append(time.perf_counter() - t)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = float(np.min(np.sum(a * b, axis=1)))
    ours_tps, peer_tps = (
        len(texts) / statistics.median(t_ours),
        len(texts) / statistics.median(t_peer),
    )

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        timings = []
        for n in range(2):
            emb = CachedEmbeddings(
                SentenceTransformerEmbeddings(MINILM, device="cpu"), MINILM, cache_dir=cache
            )
            t = time.perf_counter()
            store = FaissVectorStore(emb, path=Path(tmp) / f"idx{n}")
            store.add_documents(load_documents(args.articles), skip_duplicates=True)
            store.save()
            timings.append((time.perf_counter() - t, dict(emb.stats), len(store)))
    (first, s1, n1), (second, s2, _) = timings

    table = Table(title=f"embeddings, {len(texts)} bundled articles, all-MiniLM-L6-v2 on CPU")
    for col in ("measure", "ours", "peer / before", "ratio"):
        table.add_column(col, justify="right")
    table.add_row(
        "throughput (texts/s), vs HuggingFaceEmbeddings",
        f"{ours_tps:.1f}",
        f"{peer_tps:.1f}",
        f"{ours_tps / peer_tps:.2f}x",
    )
    table.add_row("min cosine, ours vs HuggingFaceEmbeddings", f"{cos:.5f}", "", "")
    table.add_row(
        f"index rebuild vs first build ({n1} chunks), s",
        f"{second:.2f}",
        f"{first:.2f}",
        f"{first / second:.1f}x",
    )
    table.add_row("texts embedded (rebuild / first)", str(s2["misses"]), str(s1["misses"]), "")
    Console().print(table)
    result = {
        "texts": len(texts),
        "ours_texts_per_s": ours_tps,
        "peer_texts_per_s": peer_tps,
        "throughput_ratio": ours_tps / peer_tps,
        "min_cosine": cos,
        "rounds": args.rounds,
        "first_build_s": first,
        "rebuild_s": second,
        "rebuild_speedup": first / second,
        "first_build_embedded": s1["misses"],
        "rebuild_embedded": s2["misses"],
        "chunks": n1,
    }
    out = Path(__file__).resolve().parent / "results" / "bench_embeddings.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
