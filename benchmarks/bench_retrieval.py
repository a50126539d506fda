"""Query latency of our FAISS index (exact and HNSW) against LlamaIndex's SimpleVectorStore.

Same vectors, same queries, one query at a time, side by side::

    python benchmarks/bench_retrieval.py              # 100,000 x 384, ~2-4 minutes on 2 cores
    python benchmarks/bench_retrieval.py -n 20000     # quicker

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
far more necessary than on text. Prints a table and writes ``results/bench_retrieval.json``
beside this script. Recall@10 is measured against the exact index on the same queries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

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


def per_query_ms(search, queries: np.ndarray) -> tuple[float, list]:
    times, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(search(q))
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="vectors")
    ap.add_argument("-d", type=int, default=384, help="dimension")
    ap.add_argument("--queries", type=int, default=200, help="queries for the FAISS indexes")
    ap.add_argument(
        "--peer-queries", type=int, default=10, help="queries for SimpleVectorStore (slow)"
    )
    ap.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="compare the synthetic data with real MiniLM embeddings of the bundled sentences",
    )
    args = ap.parse_args(argv)

    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore, VectorStoreQuery
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from llmapps.retrieval.store import IndexParams, VectorIndex

    if args.calibrate:
        stats = calibrate()
        table = Table(title="bundled sentences: real all-MiniLM-L6-v2 vs synthetic, same size")
        for col in ("statistic", "real", "synthetic"):
            table.add_column(col, justify="right")
        for key in stats["real"]:
            table.add_row(key, f"{stats['real'][key]:.3f}", f"{stats['synthetic'][key]:.3f}")
        Console().print(table)
        return 0
    vecs = make_vectors(args.n, args.d)
    queries = make_queries(vecs, args.queries)
    ids = [f"v{i}" for i in range(args.n)]
    texts = [""] * args.n

    built = {}
    for kind in ("flat", "hnsw"):
        t = time.perf_counter()
        idx = VectorIndex(args.d, "synthetic", IndexParams(kind=kind))
        for s in tqdm(range(0, args.n, 20_000), desc=f"building {kind}", file=sys.stderr):
            idx.add(ids[s : s + 20_000], texts[s : s + 20_000], vecs[s : s + 20_000])
        built[kind] = (idx, time.perf_counter() - t)

    t = time.perf_counter()
    peer = SimpleVectorStore()
    peer.add(
        [TextNode(id_=i, text="", embedding=v) for i, v in zip(ids, vecs.tolist(), strict=True)]
    )
    peer_build = time.perf_counter() - t

    rows = {}
    exact_ms, exact_res = per_query_ms(
        lambda q: [r.id for r, _ in built["flat"][0].search(q[None], 10)[0]], queries
    )
    rows["faiss flat (exact)"] = (exact_ms, 1.0, built["flat"][1])
    hnsw = built["hnsw"][0]
    for ef in args.ef_search:  # efSearch trades speed for recall; show the curve
        hnsw.params.hnsw_ef_search = ef
        hnsw._apply_search_params()
        hnsw_ms, hnsw_res = per_query_ms(
            lambda q: [r.id for r, _ in hnsw.search(q[None], 10)[0]], queries
        )
        recall = float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_res, hnsw_res, strict=True)])
        )
        rows[f"faiss hnsw (M={hnsw.params.hnsw_m}, efSearch={ef})"] = (
            hnsw_ms,
            recall,
            built["hnsw"][1],
        )
    pq = queries[: args.peer_queries]
    peer_ms, peer_res = per_query_ms(
        lambda q: peer.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10)).ids,
        pq,
    )
    peer_recall = float(
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_res, peer_res, strict=False)])
    )
    rows["llama-index SimpleVectorStore"] = (peer_ms, peer_recall, peer_build)

    table = Table(title=f"query latency, {args.n:,} vectors x {args.d}, k=10, one query at a time")
    for col in (
        "index",
        "median ms/query",
        "speed-up vs SimpleVectorStore",
        "recall@10 vs exact",
        "build s",
    ):
        table.add_column(col, justify="right")
    result = {
        "n": args.n,
        "d": args.d,
        "queries": args.queries,
        "peer_queries": args.peer_queries,
        "rows": {},
    }
    for name, (ms, rec, build_s) in rows.items():
        speed = peer_ms / ms
        table.add_row(name, f"{ms:.3f}", f"{speed:,.0f}x", f"{rec:.3f}", f"{build_s:.1f}")
        result["rows"][name] = {
            "ms_per_query": ms,
            "speedup_vs_simple": speed,
            "recall_at_10": rec,
            "build_s": build_s,
        }
    Console().print(table)
    out = Path(__file__).resolve().parent / "results" / "bench_retrieval.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
