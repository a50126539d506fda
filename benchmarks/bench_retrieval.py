"""Query latency of our FAISS index (exact and HNSW) against LlamaIndex and numpy brute force.

Same vectors, the same queries on every side, one query at a time, k=10, on
``benchmarks/harness.py`` (interleaved repeats; the figure is ms per query over a run):

- ours: our ``VectorIndex`` flat (exact), and HNSW (M=32, ``--ef-search``, default 64);
- peers: LlamaIndex's ``SimpleVectorStore`` and numpy brute force (``vecs @ q`` + argpartition).

Quality is recall@10 against the exact index on the same queries. ::

    python benchmarks/bench_retrieval.py              # 100,000 x 384, 20 queries, ~10 min
    python benchmarks/bench_retrieval.py -n 20000     # quicker
    python benchmarks/bench_retrieval.py --quick      # 2,000 x 32, 5 queries

The vectors are synthetic but calibrated on real all-MiniLM-L6-v2 embeddings of the bundled
article sentences (``--calibrate`` embeds them and prints both sets of statistics side by side).
They are drawn hierarchically, as text is: topics (n/500), documents around topics (n/10),
sentences around documents; queries are stored vectors perturbed as much as MiniLM moves a
sentence when 30% of its words are dropped. Measured on 1,576 bundled sentences (real vs
synthetic at the same size): random-pair cosine 0.070+-0.096 vs 0.080+-0.119, nearest-neighbour
cosine 0.51 vs 0.51, 10th neighbour 0.36 vs 0.39, query-to-source 0.825 vs 0.825, query's 10th
neighbour 0.35 vs 0.38. The synthetic set is more isotropic than the real one (90% of the
variance needs 265 principal components vs 171), which makes it harder, not easier, for HNSW.
An earlier version perturbed queries by 0.3 per dimension (cosine 0.17 to their source: queries
close to random, unlike any real query) and drew flat isotropic clusters; it made efSearch look
far more necessary than on text. Writes ``results/bench_retrieval.json``. The earlier version
timed FAISS on 200 queries against SimpleVectorStore on 10; every side now gets the same ones.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np

# Calibrated against MiniLM embeddings of the bundled sentences (see the module docstring).
DOC_SPREAD, SENTENCE_SPREAD, QUERY_NOISE = 1.0, 1.5, 0.035


def make_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors: sentences around documents around topics (see the module docstring)."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(max(n // 500, 1), d)).astype(np.float32)
    docs = topics[rng.integers(0, len(topics), max(n // 10, 1))]
    docs += DOC_SPREAD * rng.normal(size=docs.shape).astype(np.float32)
    v = docs[rng.integers(0, len(docs), n)] + SENTENCE_SPREAD * rng.normal(size=(n, d)).astype(
        np.float32
    )
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_queries(vecs: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """Stored vectors moved as far as a sentence with 30% of its words dropped moves in MiniLM."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vecs), count, replace=False)
    q = vecs[pick] + QUERY_NOISE * rng.normal(size=(count, vecs.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def describe(v: np.ndarray, q: np.ndarray, src: np.ndarray) -> dict[str, float]:
    """The statistics the synthetic data is calibrated on (O(n^2): call on a few thousand rows)."""
    s = v @ v.T
    np.fill_diagonal(s, -1.0)
    pairs = s[np.triu_indices(len(v), 1)]
    top = -np.sort(-s, axis=1)
    qtop = -np.sort(-(q @ v.T), axis=1)
    ev = np.linalg.svd(v - v.mean(0), compute_uv=False) ** 2
    return {
        "random_pair_cos": float(pairs.mean()),
        "random_pair_std": float(pairs.std()),
        "nn1_cos": float(top[:, 0].mean()),
        "nn10_cos": float(top[:, 9].mean()),
        "query_source_cos": float(np.sum(q * src, axis=1).mean()),
        "query_nn10_cos": float(qtop[:, 9].mean()),
        "pcs_for_90pct_variance": int(np.searchsorted(np.cumsum(ev) / ev.sum(), 0.9)) + 1,
    }


def calibrate() -> dict[str, dict[str, float]]:
    """Real MiniLM statistics of the bundled sentences (queries: 30% of words dropped) vs synthetic."""
    import re

    from chains.news_data import read_articles  # bench only: the core never imports chains
    from llmapps.retrieval.embeddings import make_embeddings

    root = Path(__file__).resolve().parent.parent
    sents = [
        s
        for a in read_articles(root / "data" / "articles.jsonl")
        for s in re.split(r"(?<=[.!?])\s+", a["text"])
        if len(s.split()) >= 6
    ]
    rng = np.random.default_rng(0)
    src_idx = list(range(0, len(sents), 10))
    dropped = [
        " ".join([w for w in sents[i].split() if rng.random() > 0.3] or sents[i].split()[:1])
        for i in src_idx
    ]
    emb = make_embeddings(progress=True)
    v, q = emb.embed_array(sents), emb.embed_array(dropped)
    sv = make_vectors(len(sents), v.shape[1])
    sq_src = sv[src_idx]
    sq = sq_src + QUERY_NOISE * rng.normal(size=sq_src.shape).astype(np.float32)
    sq /= np.linalg.norm(sq, axis=1, keepdims=True)
    return {"real": describe(v, q, v[src_idx]), "synthetic": describe(sv, sq, sq_src)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="vectors")
    ap.add_argument("-d", type=int, default=384, help="dimension")
    ap.add_argument("--queries", type=int, default=20, help="queries, the same for every side")
    ap.add_argument("--ef-search", type=int, default=64, help="HNSW efSearch")
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="compare the synthetic data with real MiniLM embeddings of the bundled sentences",
    )
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.queries = 2_000, 32, 5

    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore, VectorStoreQuery

    from llmapps.retrieval.store import IndexParams, VectorIndex

    if args.calibrate:
        stats = calibrate()
        print("bundled sentences: real all-MiniLM-L6-v2 vs synthetic, same size")
        for key in stats["real"]:
            print(f"  {key:<24} {stats['real'][key]:>8.3f} {stats['synthetic'][key]:>8.3f}")
        return 0
    vecs = make_vectors(args.n, args.d)
    queries = make_queries(vecs, args.queries)
    ids = [f"v{i}" for i in range(args.n)]
    texts = [""] * args.n

    built: dict[str, Any] = {}
    for kind in ("flat", "hnsw"):
        t = time.perf_counter()
        idx = VectorIndex(args.d, "synthetic", IndexParams(kind=kind))
        for s in range(0, args.n, 20_000):
            idx.add(ids[s : s + 20_000], texts[s : s + 20_000], vecs[s : s + 20_000])
        built[kind] = (idx, time.perf_counter() - t)
    hnsw = built["hnsw"][0]
    hnsw.params.hnsw_ef_search = args.ef_search
    hnsw._apply_search_params()
    t = time.perf_counter()
    peer = SimpleVectorStore()
    peer.add(
        [TextNode(id_=i, text="", embedding=v) for i, v in zip(ids, vecs.tolist(), strict=True)]
    )
    peer_build = time.perf_counter() - t
    id_arr = np.asarray(ids)

    def faiss_search(index: Any) -> Callable[[np.ndarray], list[str]]:
        return lambda q: [r.id for r, _ in index.search(q[None], 10)[0]]

    def numpy_search(q: np.ndarray) -> list[str]:
        scores = vecs @ q
        top = np.argpartition(-scores, 10)[:10]
        return list(id_arr[top[np.argsort(-scores[top])]])

    def llama_search(q: np.ndarray) -> list[str]:
        query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10)
        return list(peer.query(query).ids or [])

    exact = [faiss_search(built["flat"][0])(q) for q in queries]

    def side_run(search: Callable[[np.ndarray], list[str]]) -> Callable[[], harness.Run]:
        def run() -> harness.Run:
            found = [search(q) for q in queries]
            recall = float(
                np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found, strict=True)])
            )
            return harness.Run(work=len(queries), info={"quality": {"recall@10": recall}})

        return run

    inputs = [q.tobytes().hex() for q in queries]
    import faiss

    threads = faiss.omp_get_max_threads()
    common = {"dtype": "float32", "inputs": inputs}
    sides = [
        harness.Side(
            "FAISS flat (exact)",
            side_run(faiss_search(built["flat"][0])),
            role="ours",
            threads=threads,
            settings={"build_s": round(built["flat"][1], 2)},
            **common,
        ),
        harness.Side(
            f"FAISS HNSW (M={hnsw.params.hnsw_m}, efSearch={args.ef_search})",
            side_run(faiss_search(hnsw)),
            role="ours",
            threads=threads,
            settings={"build_s": round(built["hnsw"][1], 2)},
            **common,
        ),
        harness.Side(
            "LlamaIndex SimpleVectorStore",
            side_run(llama_search),
            settings={"build_s": round(peer_build, 2)},
            **common,
        ),
        harness.Side("numpy brute force", side_run(numpy_search), **common),
    ]
    m = harness.measure_with(
        args,
        sides,
        harness.Metric("ms/query", kind="time", scale=1000.0),
    )
    harness.finish(
        "bench_retrieval",
        m,
        args,
        config={k: getattr(args, k) for k in ("n", "d", "queries", "ef_search")},
        what=f"k=10 queries one at a time over {args.n:,} synthetic vectors x {args.d}",
        argv=argv,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
