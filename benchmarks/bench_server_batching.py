"""Dynamic batching in ``llmapps serve``: 16 concurrent clients vs the same requests one by one.

The server runs in its own process on 127.0.0.1 (``llmapps serve --port 0``). The same 16 chat
requests (greedy, ``max_tokens`` 32) are sent sequentially (the peer: what a server that handles
one request at a time behind a lock delivers), then by 16 concurrent clients, which the server
gathers into batched ``generate`` calls. Throughput is completion tokens per wall second.

::

    python benchmarks/bench_server_batching.py                       # tiny-instruct, ~1-2 min
    python benchmarks/bench_server_batching.py \
        --model .pytest_cache/llmapps-home/models/tiny-instruct
    python benchmarks/bench_server_batching.py --model Qwen/Qwen2.5-0.5B-Instruct --threads 8

Prints a table and writes ``results/bench_server_batching.json`` beside this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TOPICS = [
    "a new footbridge",
    "a comet seen from a garden",
    "robot lawnmowers in parks",
    "a cycling stage win",
    "a library reopening",
    "an early frost",
    "a bakery cooperative",
    "a harbour wall",
    "a school garden",
    "a river clean-up",
    "a tram line",
    "a choir festival",
    "a wind farm vote",
    "a lost dog found",
    "a chess prodigy",
    "a night market",
]


def start_server(
    model: str, threads: int, max_batch: int, wait_ms: float
) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("LLMAPPS_SERVICE__SERVER__API_KEY", None)
    cmd = [
        sys.executable,
        "-m",
        "llmapps.cli",
        "serve",
        "--model",
        model,
        "--served-model-name",
        "bench",
        "--port",
        "0",
        "--max-batch",
        str(max_batch),
        "--batch-wait-ms",
        str(wait_ms),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stderr.readline() if proc.stderr else ""
        if m := re.search(r"(http://127\.0\.0\.1:\d+)", line):
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.terminate()
    raise SystemExit("llmapps serve did not start; run it by hand to see why")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="tiny-instruct", help="model id or directory (default: tiny-instruct)"
    )
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each mode (totals are summed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server process")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = ap.parse_args(argv)

    import httpx
    from rich.console import Console
    from rich.table import Table

    proc, url = start_server(args.model, args.threads, args.clients, args.batch_wait_ms)
    client = httpx.Client(base_url=url, timeout=600)
    bodies = [
        {
            "model": "bench",
            "temperature": 0,
            "max_tokens": args.max_tokens,
            "messages": [
                {"role": "user", "content": f"Write a riddle about {TOPICS[i % len(TOPICS)]}."}
            ],
        }
        for i in range(args.clients)
    ]

    def ask(body: dict[str, Any]) -> int:
        r = client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    totals = {"sequential": [0.0, 0], "concurrent": [0.0, 0]}
    try:
        ask(bodies[0])  # warm up (first generate call pays one-off costs)
        with ThreadPoolExecutor(args.clients) as pool:
            for _ in range(args.rounds):
                started = time.perf_counter()
                toks = sum(ask(b) for b in bodies)
                totals["sequential"][0] += time.perf_counter() - started
                totals["sequential"][1] += toks
                started = time.perf_counter()
                toks = sum(pool.map(ask, bodies))
                totals["concurrent"][0] += time.perf_counter() - started
                totals["concurrent"][1] += toks
        batching = client.get("/health").json()["batching"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    rows = []
    for mode, (secs, toks) in totals.items():
        rows.append(
            {
                "mode": mode,
                "requests": args.rounds * args.clients,
                "seconds": secs,
                "completion_tokens": toks,
                "tokens_per_s": toks / secs,
            }
        )
    ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    table = Table(
        title=f"llmapps serve {args.model}: {args.clients} requests x {args.rounds} rounds, "
        f"max_tokens {args.max_tokens}"
    )
    for col in ("mode", "requests", "seconds", "completion tokens", "tokens/s"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["mode"],
            str(r["requests"]),
            f"{r['seconds']:.2f}",
            str(r["completion_tokens"]),
            f"{r['tokens_per_s']:.1f}",
        )
    Console().print(table)
    print(
        f"concurrent / sequential tokens/s = {ratio:.2f}x "
        f"(target >= 3: {'PASS' if ratio >= 3 else 'MISS'}); "
        f"server batch sizes {batching['sizes']}"
    )
    out = Path(__file__).parent / "results" / "bench_server_batching.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"config": vars(args), "rows": rows, "ratio": ratio, "batching": batching}, indent=2
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
