"""Query latency of our FAISS index (exact and HNSW) against LlamaIndex's SimpleVectorStore.

Same vectors, same queries, one query at a time, side by side::

    python benchmarks/bench_retrieval.py              # 100,000 x 384, ~2-4 minutes on 2 cores
    python benchmarks/bench_retrieval.py -n 20000     # quicker

The vectors are synthetic but shaped like sentence embeddings (unit vectors around 2,000 topic
centres, so nearest neighbours are meaningful; i.i.d. Gaussian vectors would make any ANN index
look worse than on real text). Prints a table and writes ``results/bench_retrieval.json`` beside
this script. Recall@10 is measured against the exact index on the same queries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def make_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 50, 1), d)).astype(np.float32)
    v = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


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
    ap.add_argument("--peer-queries", type=int, default=10, help="queries for SimpleVectorStore (slow)")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256, 512])
    args = ap.parse_args(argv)

    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore, VectorStoreQuery
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from llmapps.retrieval.store import IndexParams, VectorIndex

    vecs = make_vectors(args.n, args.d)
    rng = np.random.default_rng(1)
    pick = rng.choice(args.n, args.queries, replace=False)
    queries = vecs[pick] + 0.3 * rng.normal(size=(args.queries, args.d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [f"v{i}" for i in range(args.n)]
    texts = [""] * args.n

    built = {}
    for kind in ("flat", "hnsw"):
        t = time.perf_counter()
        idx = VectorIndex(args.d, "synthetic", IndexParams(kind=kind))
        for s in tqdm(range(0, args.n, 20_000), desc=f"building {kind}", file=sys.stderr):
            idx.add(ids[s:s + 20_000], texts[s:s + 20_000], vecs[s:s + 20_000])
        built[kind] = (idx, time.perf_counter() - t)

    t = time.perf_counter()
    peer = SimpleVectorStore()
    peer.add([TextNode(id_=i, text="", embedding=v) for i, v in zip(ids, vecs.tolist(), strict=True)])
    peer_build = time.perf_counter() - t

    rows = {}
    exact_ms, exact_res = per_query_ms(lambda q: [r.id for r, _ in built["flat"][0].search(q[None], 10)[0]], queries)
    rows["faiss flat (exact)"] = (exact_ms, 1.0, built["flat"][1])
    hnsw = built["hnsw"][0]
    for ef in args.ef_search:  # efSearch trades speed for recall; show the curve
        hnsw.params.hnsw_ef_search = ef
        hnsw._apply_search_params()
        hnsw_ms, hnsw_res = per_query_ms(lambda q: [r.id for r, _ in hnsw.search(q[None], 10)[0]], queries)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_res, hnsw_res, strict=True)]))
        rows[f"faiss hnsw (M=32, efSearch={ef})"] = (hnsw_ms, recall, built["hnsw"][1])
    pq = queries[: args.peer_queries]
    peer_ms, peer_res = per_query_ms(
        lambda q: peer.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10)).ids, pq)
    peer_recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_res, peer_res, strict=False)]))
    rows["llama-index SimpleVectorStore"] = (peer_ms, peer_recall, peer_build)

    table = Table(title=f"query latency, {args.n:,} vectors x {args.d}, k=10, one query at a time")
    for col in ("index", "median ms/query", "speed-up vs SimpleVectorStore", "recall@10 vs exact", "build s"):
        table.add_column(col, justify="right")
    result = {"n": args.n, "d": args.d, "queries": args.queries, "peer_queries": args.peer_queries, "rows": {}}
    for name, (ms, rec, build_s) in rows.items():
        speed = peer_ms / ms
        table.add_row(name, f"{ms:.3f}", f"{speed:,.0f}x", f"{rec:.3f}", f"{build_s:.1f}")
        result["rows"][name] = {"ms_per_query": ms, "speedup_vs_simple": speed, "recall_at_10": rec, "build_s": build_s}
    Console().print(table)
    out = Path(__file__).resolve().parent / "results" / "bench_retrieval.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
