"""The ``service`` client's concurrency against a loopback endpoint with a fixed latency.

64 requests to an OpenAI-compatible endpoint that answers after 200 ms, at concurrency 16, the
peers as a user would call them:

- ours: ``ServiceChatModel.batch`` at ``max_concurrency=16`` (cache off; rate limiter, retry and
  structured-output machinery on the path);
- peer: LangChain's ``ChatOpenAI.batch`` at the same ``max_concurrency`` (its thread pool);
- peer: the OpenAI SDK's ``AsyncOpenAI`` with ``asyncio.gather`` under a semaphore of 16;
- reference (``--sequential``): ``for x in xs: ChatOpenAI.invoke(x)``, slow and not a fair peer.

The ideal is ``64 x 0.2 / 16`` s. Runs on ``benchmarks/harness.py`` (interleaved repeats,
requests/s, quality: every reply non-empty and identical across sides)::

    python benchmarks/bench_service_client.py                 # ~1 min
    python benchmarks/bench_service_client.py -n 128 --latency 0.1 --sequential
    python benchmarks/bench_service_client.py --quick         # 16 requests, 20 ms

The endpoint (``llmapps/serving/fake_endpoint.py``) runs in its own process on 127.0.0.1; writes
``results/bench_service_client.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from typing import Any

import harness


def start_endpoint(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmapps.serving.fake_endpoint", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = proc.stdout.readline().strip() if proc.stdout else ""
    if not url.startswith("http://127.0.0.1:"):
        proc.terminate()
        raise SystemExit(f"the endpoint did not start: {url!r}")
    return proc, url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=64, help="requests")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="endpoint latency in seconds")
    ap.add_argument(
        "--sequential", action="store_true", help="add the sequential invoke loop (reference)"
    )
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.concurrency, args.latency = 16, 4, 0.02

    from langchain_openai import ChatOpenAI
    from openai import AsyncOpenAI

    from llmapps.service.chat import ServiceChatModel

    proc, url = start_endpoint(args.latency)
    loop = asyncio.new_event_loop()
    try:
        prompts = [f"Summarise story number {i}." for i in range(args.n)]
        common = {"model": "fake-model", "base_url": url, "api_key": "bench", "timeout": 30}
        ours = ServiceChatModel(**common, cache_path=None, retries=2, max_inflight=args.concurrency)
        peer = ChatOpenAI(**common, max_retries=0)
        sdk = AsyncOpenAI(base_url=url, api_key="bench", timeout=30, max_retries=0)
        cfg = {"max_concurrency": args.concurrency}

        async def gather() -> list[str]:
            gate = asyncio.Semaphore(args.concurrency)

            async def one(p: str) -> str:
                async with gate:
                    r = await sdk.chat.completions.create(
                        model="fake-model", messages=[{"role": "user", "content": p}]
                    )
                return r.choices[0].message.content or ""

            return list(await asyncio.gather(*(one(p) for p in prompts)))

        def run(texts: list[Any]) -> harness.Run:
            return harness.Run(
                work=len(texts), texts=[str(getattr(t, "content", t)) for t in texts]
            )

        sides = [
            harness.Side(
                f"ours: ServiceChatModel.batch, max_concurrency={args.concurrency}",
                lambda: run(ours.batch(prompts, config=cfg)),
                role="ours",
                batch_size=args.concurrency,
                inputs=prompts,
            ),
            harness.Side(
                f"ChatOpenAI.batch, max_concurrency={args.concurrency}",
                lambda: run(peer.batch(prompts, config=cfg)),
                batch_size=args.concurrency,
                inputs=prompts,
            ),
            harness.Side(
                f"AsyncOpenAI + asyncio.gather, {args.concurrency} in flight",
                lambda: run(loop.run_until_complete(gather())),
                batch_size=args.concurrency,
                inputs=prompts,
            ),
        ]
        if args.sequential:
            sides.append(
                harness.Side(
                    "sequential ChatOpenAI.invoke loop",
                    lambda: run([peer.invoke(p) for p in prompts]),
                    role="reference",
                    batch_size=1,
                    inputs=prompts,
                )
            )
        m = harness.measure_with(
            args,
            sides,
            harness.Metric("requests/s"),
            valid=harness.nonempty,
        )
    finally:
        loop.close()
        proc.terminate()
        proc.wait(timeout=10)
    ideal = args.n * args.latency / args.concurrency
    harness.finish(
        "bench_service_client",
        m,
        args,
        config={k: getattr(args, k) for k in ("n", "concurrency", "latency", "sequential")},
        what=f"{args.n} chat requests at concurrency {args.concurrency} to a loopback endpoint "
        f"answering in {args.latency * 1000:.0f} ms (ideal {ideal:.2f} s)",
        argv=argv,
        extra={"ideal_s": ideal, "ours_stats": ours.stats.as_dict()},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
