"""Embedding throughput against langchain-huggingface, and what the content-hash cache saves.

Two measurements on ``benchmarks/harness.py`` (interleaved repeats after a warm-up):

1. ``bench_embeddings``: throughput on the bundled articles (title + text), our
   ``SentenceTransformerEmbeddings`` vs ``HuggingFaceEmbeddings`` with default settings on the same
   model (the offline all-MiniLM-L6-v2); quality is each side's minimum cosine to our vectors.
2. ``bench_embeddings_rebuild``: an index build (load + chunk + embed + FAISS + save) of an
   unchanged corpus on a warm cache against the same build on a cold cache (a fresh cache folder
   every run). This is ours against ours, the saving of the cache, not a peer: LangChain's
   ``CacheBackedEmbeddings`` (the peer a user would reach for) is in ``langchain-classic``, which
   this project does not install. Both sides share one loaded model, so neither pays its load.

::

    python benchmarks/bench_embeddings.py            # ~2-4 minutes on 2 cores
    python benchmarks/bench_embeddings.py --quick    # 3 articles

Writes ``results/bench_embeddings.json`` and ``results/bench_embeddings_rebuild.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import harness
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", default=str(ROOT / "data" / "articles.jsonl"))
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    args.argv = argv

    lines = [x for x in Path(args.articles).read_text().splitlines() if x.strip()]
    if args.quick:
        lines = lines[:3]
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as folder:
        return measure_both(args, lines, Path(folder))


def measure_both(args: argparse.Namespace, lines: list[str], tmp: Path) -> int:
    """Both measurements; the corpus copy, caches and indexes live under ``tmp``."""
    import torch
    from langchain_huggingface import HuggingFaceEmbeddings

    from llmapps.retrieval.embeddings import (
        MINILM,
        CachedEmbeddings,
        SentenceTransformerEmbeddings,
        bundled_minilm_path,
    )
    from llmapps.retrieval.loaders import load_documents
    from llmapps.retrieval.vectorstore import FaissVectorStore

    corpus = tmp / "articles.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    rows = [json.loads(x) for x in lines]
    texts = [f"{r['title']}\n{r['text']}" for r in rows]

    ours = SentenceTransformerEmbeddings(MINILM, device="cpu")
    peer = HuggingFaceEmbeddings(model_name=str(bundled_minilm_path()))
    reference = ours.embed_array(texts)

    def quality(vectors: np.ndarray) -> dict[str, float]:
        v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return {"min cosine to ours": round(float(np.min(np.sum(v * reference, axis=1))), 5)}

    def ours_run() -> harness.Run:
        return harness.Run(len(texts), info={"quality": quality(ours.embed_array(texts))})

    def peer_run() -> harness.Run:
        vectors = np.asarray(peer.embed_documents(texts), dtype=np.float32)
        return harness.Run(len(texts), info={"quality": quality(vectors)})

    common = {"dtype": "float32", "threads": torch.get_num_threads(), "inputs": texts}
    m = harness.measure_with(
        args,
        [
            harness.Side("ours: SentenceTransformerEmbeddings", ours_run, role="ours", **common),
            harness.Side("HuggingFaceEmbeddings (defaults)", peer_run, **common),
        ],
        harness.Metric("texts/s"),
    )
    config = {"articles": len(rows), "model": MINILM}
    harness.finish(
        "bench_embeddings",
        m,
        args,
        config=config,
        what=f"embedding {len(texts)} bundled articles with all-MiniLM-L6-v2 on CPU",
        argv=args.argv,
    )

    warm_cache = tmp / "warm-cache"
    runs = iter(range(1_000_000))

    def build(cache: Path) -> harness.Run:
        emb = CachedEmbeddings(ours, MINILM, cache_dir=cache)
        store = FaissVectorStore(emb, path=tmp / f"index-{next(runs)}")
        store.add_documents(load_documents(corpus), skip_duplicates=True)
        store.save()
        return harness.Run(1, info={"quality": {"chunks": len(store), **emb.stats}})

    build(warm_cache)  # fills the warm side's cache before its warm-up
    rebuild = harness.measure(
        [
            harness.Side("rebuild, warm cache", lambda: build(warm_cache), role="ours", **common),
            harness.Side(
                "first build, cold cache",
                lambda: build(tmp / f"cold-{next(runs)}"),
                role="reference",
                **common,
            ),
        ],
        harness.Metric("s/build", kind="time"),
        repeats=args.repeats,
        warmup=args.warmup,
        progress=print,
    )
    if args.out is not None:
        args.out = Path(args.out).with_name(Path(args.out).stem + "_rebuild.json")
    harness.finish(
        "bench_embeddings_rebuild",
        rebuild,
        args,
        config=config,
        what=f"index build of {len(rows)} unchanged articles: warm cache vs cold (ours vs ours)",
        argv=args.argv,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
