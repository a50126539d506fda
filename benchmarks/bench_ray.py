"""``llmapps run`` on the local engine against ``--engine ray`` with N workers, and what Ray costs.

64 articles (the bundled train split) through news-riddle on few-shot, side by side in one run:

- local: ``run_file`` in this process, torch on 1 thread and on ``--threads`` (default: every
  core), each over all 64;
- ray: ``run_file_ray`` on a local cluster of ``--workers`` actors, 1 CPU and 1 torch thread each
  (the same cores in total), the cluster's start-up timed apart;
- a no-op pool: the same ``map_batches`` over the same number of batches with an actor that does
  nothing, which is Ray Data's own overhead per batch on this machine.

From the figures it fits the scaling model ``T(N) = start + load + B * (w + o) / N`` (``B``
batches, ``w`` work per batch on one actor, ``o`` overhead per batch, ``start`` cluster start-up,
``load`` an actor's model load) and prints it for N workers, each with its own cores or GPU.
On a 2-core machine shared with other jobs expect no gain: the cores are the limit, not the
engine. Rows of both engines are checked equal (greedy) before any figure is written.

::

    python benchmarks/bench_ray.py                      # tiny models, ~1-2 min on 2 cores
    python benchmarks/bench_ray.py --workers 4 --max-new-tokens 32

Writes ``results/bench_ray.json`` beside this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class Noop:
    """An actor that answers a batch without work: what is left is Ray Data's own cost."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"n": batch["n"]}


def _strip(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["id"]: {k: v for k, v in r.items() if k != "latency_s"} for r in rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=64, help="articles")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, local")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_ray.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("LLMAPPS_BASE_MODEL", "tiny-base")
    os.environ.setdefault("LLMAPPS_INSTRUCT_MODEL", "tiny-instruct")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import torch

    from chains.news_data import corpus as news_corpus
    from chains.news_data import samples
    from llmapps.apps import load_chain
    from llmapps.models.tiny import ensure_tiny_models
    from llmapps.ray_engine import RayEngineConfig, import_ray, map_batches, run_file_ray
    from llmapps.runner import run_file
    from llmapps.settings import get_settings

    settings = get_settings()
    ensure_tiny_models(settings.models_dir, corpus=news_corpus, progress=False)
    articles = samples("train")[: args.n]
    if len(articles) < args.n:
        raise SystemExit(f"the train split has {len(articles)} articles, not {args.n}")
    inputs = [{k: a[k] for k in ("id", "title", "text")} for a in articles]
    options = {"max_new_tokens": args.max_new_tokens}
    batches = -(-len(inputs) // args.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))

    # local engine: at one thread (what each actor gets) and at --threads (every core)
    started = time.perf_counter()
    chain = load_chain("news-riddle", "few-shot", **options)
    run_file(chain, inputs[:1], tmp / "warm.jsonl", batch_size=1, progress=False)  # load the model
    local_load = time.perf_counter() - started
    local_runs = {}
    for threads in dict.fromkeys((1, args.threads)):
        torch.set_num_threads(threads)
        started = time.perf_counter()
        path = tmp / f"local-{threads}.jsonl"
        run_file(chain, inputs, path, batch_size=args.batch_size, progress=False)
        local_runs[threads] = time.perf_counter() - started
    local_run = min(local_runs.values())
    torch.set_num_threads(1)

    # ray engine: cluster start-up timed apart, then the run (actors start and load inside it)
    ray = import_ray()
    config = RayEngineConfig(workers=args.workers)
    started = time.perf_counter()
    ray.init(
        num_cpus=args.workers,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    ray_start = time.perf_counter() - started
    seen: list[dict[str, Any]] = []
    started = time.perf_counter()
    run_file_ray(
        "news-riddle",
        "few-shot",
        inputs,
        tmp / "ray.jsonl",
        config=config,
        strategy_options=options,
        batch_size=args.batch_size,
        progress=False,
        on_batch=seen.append,
    )
    ray_run = time.perf_counter() - started
    started = time.perf_counter()
    chunks = [[{"id": str(i)}] for i in range(batches)]
    noop_first = None
    for _ in map_batches(ray, Noop, {}, chunks, config):
        noop_first = noop_first or time.perf_counter() - started
    noop_total = time.perf_counter() - started
    ray.shutdown()

    ray_rows = _strip(tmp / "ray.jsonl")
    if any(_strip(tmp / f"local-{t}.jsonl") != ray_rows for t in local_runs):
        raise SystemExit("the engines' rows differ: no figures are written")

    work = [b["work_s"] for b in seen]
    w = statistics.mean(work)  # one batch on one actor, one thread
    load = max(b["load_s"] for b in seen)
    # Ray Data's own cost per batch and actor: the no-op pool's time after its first batch
    o_noop = max(0.0, noop_total - (noop_first or 0.0)) / max(1, batches - 1) * args.workers
    o = o_noop
    local_w = local_runs[1] / batches  # one batch on the local engine, one thread (one core)

    def model(n: int) -> float:
        return ray_start + load + batches * (w + o) / n

    def model_local(articles_n: int) -> float:  # same code, same work per batch, no Ray
        return local_load + articles_n / args.batch_size * w

    scaling = [{"workers": n, "model_s": round(model(n), 2)} for n in (1, 2, 4, 8, 16, 32)]
    big = 10_000
    big_batches = big / args.batch_size
    scaling_10k = [
        {
            "workers": n,
            "model_s": round(ray_start + load + big_batches * (w + o) / n, 1),
            "vs_local": round(model_local(big) / (ray_start + load + big_batches * (w + o) / n), 2),
        }
        for n in (1, 2, 4, 8, 16, 32)
    ]
    result = {
        "what": f"news-riddle few-shot on {args.n} articles, tiny models, batch {args.batch_size}, "
        f"{args.max_new_tokens} new tokens; local: 1 process x 1 and x {args.threads} threads; ray: "
        f"{args.workers} actors x 1 CPU x 1 thread, local cluster",
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
            "ray": ray.__version__,
            "torch": torch.__version__,
        },
        "rows_equal": True,
        "local": {
            "load_s": round(local_load, 2),
            "run_s_by_threads": {str(t): round(v, 2) for t, v in local_runs.items()},
            "per_batch_s_1_thread": round(local_w, 4),
            "total_s_best": round(local_load + local_run, 2),
        },
        "ray": {
            "cluster_start_s": round(ray_start, 2),
            "run_s": round(ray_run, 2),
            "total_s": round(ray_start + ray_run, 2),
            "actor_load_s": round(load, 2),
            "first_batch_at_s": round(min(b["wall_s"] for b in seen), 2),
            "batches": batches,
            "batches_per_actor": {
                str(p): sum(1 for b in seen if b["pid"] == p)
                for p in sorted({b["pid"] for b in seen})
            },
            "work_per_batch_s": round(w, 4),
            "overhead_per_batch_s_noop_pool": round(o_noop, 4),
            "noop_pool_total_s": round(noop_total, 2),
        },
        "ratio_local_over_ray_total": round((local_load + local_run) / (ray_start + ray_run), 3),
        "scaling_model": {
            "formula": "T(N) = cluster_start + actor_load + B * (work_per_batch + overhead) / N, "
            "each worker with its own core(s) or GPU; overhead from the no-op pool; vs_local: "
            "against one local process on one core doing the same work per batch (load + B * w)",
            "this_run": scaling,
            "10k_articles": scaling_10k,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
