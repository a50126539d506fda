"""The ``service`` client's concurrency against a loopback endpoint with a fixed latency.

64 requests to an OpenAI-compatible endpoint that answers after 200 ms, side by side:

- ours: ``ServiceChatModel.batch`` at ``max_concurrency=16`` (cache off, rate limiter and retry
  machinery on the path), against the ideal ``64 x 0.2 / 16`` s;
- peer: LangChain's plain sequential loop (``for x in xs: ChatOpenAI.invoke(x)``);
- reference: ``ChatOpenAI.batch`` at the same ``max_concurrency`` (LangChain's own thread pool).

::

    python benchmarks/bench_service_client.py                 # ~25 s
    python benchmarks/bench_service_client.py -n 128 --latency 0.1

The endpoint (``llmapps/service/fake_endpoint.py``) runs in its own process on 127.0.0.1. Prints a
table and writes ``results/bench_service_client.json`` beside this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def start_endpoint(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmapps.service.fake_endpoint", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = proc.stdout.readline().strip() if proc.stdout else ""
    if not url.startswith("http://127.0.0.1:"):
        proc.terminate()
        raise SystemExit(f"the endpoint did not start: {url!r}")
    return proc, url


def timed(fn: Any, repeats: int = 1) -> float:
    """Median wall time of ``repeats`` runs (a shared 2-core box is noisy)."""
    import statistics

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=64, help="requests")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="endpoint latency in seconds")
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs of each concurrent client (median kept)"
    )
    ap.add_argument("--skip-sequential", action="store_true", help="skip the slow sequential peer")
    args = ap.parse_args(argv)

    from langchain_openai import ChatOpenAI
    from rich.console import Console
    from rich.table import Table

    from llmapps.service.chat import ServiceChatModel

    proc, url = start_endpoint(args.latency)
    try:
        prompts = [f"Summarise story number {i}." for i in range(args.n)]
        common = {"model": "fake-model", "base_url": url, "api_key": "bench", "timeout": 30}
        ours = ServiceChatModel(**common, cache_path=None, retries=2, max_inflight=args.concurrency)
        peer = ChatOpenAI(**common, max_retries=0)
        ours.invoke("warm up")
        peer.invoke("warm up")
        cfg = {"max_concurrency": args.concurrency}
        ideal = args.n * args.latency / args.concurrency
        rows: list[dict[str, Any]] = []
        t = timed(lambda: ours.batch(prompts, config=cfg), args.repeats)
        rows.append(
            {
                "run": f"ours: ServiceChatModel.batch, max_concurrency={args.concurrency}",
                "seconds": t,
            }
        )
        t = timed(lambda: peer.batch(prompts, config=cfg), args.repeats)
        rows.append(
            {
                "run": f"reference: ChatOpenAI.batch, max_concurrency={args.concurrency}",
                "seconds": t,
            }
        )
        if not args.skip_sequential:
            t = timed(lambda: [peer.invoke(p) for p in prompts])
            rows.append({"run": "peer: sequential ChatOpenAI.invoke loop", "seconds": t})
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    ours_s = rows[0]["seconds"]
    for r in rows:
        r["x_ideal"] = r["seconds"] / ideal
        r["speedup_vs_ours"] = r["seconds"] / ours_s
    table = Table(
        title=f"{args.n} requests, {args.latency * 1000:.0f} ms endpoint latency, "
        f"ideal {ideal:.2f} s"
    )
    for col in ("run", "seconds", "x ideal", "seconds / ours"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["run"], f"{r['seconds']:.2f}", f"{r['x_ideal']:.3f}", f"{r['speedup_vs_ours']:.2f}"
        )
    Console().print(table)
    verdict = "PASS" if rows[0]["x_ideal"] <= 1.15 else "MISS"
    print(
        f"ours / ideal = {rows[0]['x_ideal']:.3f} (target <= 1.15: {verdict}); "
        f"stats: {ours.stats.as_dict()}"
    )
    if not args.skip_sequential:
        print(f"sequential peer / ours = {rows[-1]['seconds'] / ours_s:.1f}x")
    out = Path(__file__).parent / "results" / "bench_service_client.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"config": vars(args), "ideal_s": ideal, "rows": rows, "stats": ours.stats.as_dict()},
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
