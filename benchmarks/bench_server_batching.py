"""``llmapps serve`` under concurrent clients against llama-cpp-python's own server, same GGUF.

Each server runs in its own process on 127.0.0.1, both up for the whole run; the same chat
requests (greedy, ``max_tokens`` 32) go to them on ``benchmarks/harness.py`` (interleaved
repeats, completion tokens per wall second, each server process's peak RSS):

- ours: ``llmapps serve --model GGUF`` (our llama.cpp backend, dynamic batching), ``--clients``
  (16) concurrent clients;
- peer: ``python -m llama_cpp.server --model GGUF`` with the same threads and context, the same
  concurrent clients (it answers one request at a time, as shipped);
- reference: our server with the requests sent one by one (what batching gains, not a peer).

Quality: every reply non-empty (valid) and identical to ours. ``--model`` that is not a ``.gguf``
(a transformers model, e.g. ``tiny-instruct``) runs ours and the reference only. ::

    python benchmarks/bench_server_batching.py           # the packaged SmolLM2-135M GGUF
    python benchmarks/bench_server_batching.py --model tiny-instruct --threads 1
    python benchmarks/bench_server_batching.py --quick   # tiny-instruct, 4 clients, 8 tokens
    python benchmarks/bench_server_batching.py --quick --model PATH.gguf   # with the peer

Writes ``results/bench_server_batching.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness

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
    """``llmapps serve`` on a free loopback port; its URL."""
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


def start_llama_server(gguf: str, threads: int, n_ctx: int, log: Path) -> tuple[Any, str]:
    """llama-cpp-python's own server on a free loopback port; its URL."""
    import httpx

    from llmapps.models.native_probe import check_llamacpp

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from testkit import llama_server_command  # the command tests/test_llamacpp.py starts

    check_llamacpp()  # a build that crashes on this CPU: one line, not a dead server
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with log.open("w") as fh:
        proc = subprocess.Popen(
            llama_server_command(
                gguf,
                "bench",
                port,
                n_ctx,
                "--n_threads",
                str(threads),
                "--n_threads_batch",
                str(threads),
            ),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return proc, url
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)


def stop(proc: Any) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from testkit import stop_process

    stop_process(proc, 30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default=None,
        help="a .gguf (default: the packaged SmolLM2-135M-Instruct) "
        "or a transformers model (tiny-instruct, a directory): then no llama.cpp peer",
    )
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads of each server"
    )
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.max_tokens = 4, 8
        args.model = args.model or "tiny-instruct"
    if args.model is None:
        from llmapps.models.packaged import gguf_path

        args.model = str(gguf_path("smollm2-135m-instruct"))
    gguf = args.model.endswith(".gguf")

    import httpx

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
    prompts = [b["messages"][0]["content"] for b in bodies]  # type: ignore[index]
    procs: list[Any] = []
    pool = ThreadPoolExecutor(args.clients)
    try:
        ours_proc, ours_url = start_server(
            args.model, args.threads, args.clients, args.batch_wait_ms
        )
        procs.append(ours_proc)
        servers = {"ours": (ours_proc, httpx.Client(base_url=ours_url, timeout=600))}
        if gguf:
            from llmapps.models.llamacpp import read_gguf_header
            from llmapps.settings import get_settings

            trained = read_gguf_header(args.model).context_length
            n_ctx = min(get_settings().generation.llamacpp_context, trained or 1 << 30)
            log = harness.QUICK_RESULTS / "llama_server.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            peer_proc, peer_url = start_llama_server(args.model, args.threads, n_ctx, log)
            procs.append(peer_proc)
            servers["peer"] = (peer_proc, httpx.Client(base_url=peer_url, timeout=600))

        def ask(client: httpx.Client, body: dict[str, Any]) -> tuple[str, int]:
            r = client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            doc = r.json()
            text = doc["choices"][0]["message"]["content"] or ""
            return text, int(doc["usage"]["completion_tokens"])

        def concurrent(client: httpx.Client) -> harness.Run:
            got = list(pool.map(lambda b: ask(client, b), bodies))
            return harness.Run(sum(n for _, n in got), texts=[t for t, _ in got])

        def one_by_one(client: httpx.Client) -> harness.Run:
            got = [ask(client, b) for b in bodies]
            return harness.Run(sum(n for _, n in got), texts=[t for t, _ in got])

        common = {"threads": args.threads, "inputs": prompts}
        dtype = "GGUF (llama.cpp)" if gguf else "auto (transformers)"
        ours_client = servers["ours"][1]
        sides = [
            harness.Side(
                f"ours: llmapps serve, {args.clients} concurrent clients",
                lambda: concurrent(ours_client),
                role="ours",
                dtype=dtype,
                batch_size=args.clients,
                pid=ours_proc.pid,
                **common,
            )
        ]
        if gguf:
            peer_proc, peer_client = servers["peer"]
            sides.append(
                harness.Side(
                    f"llama_cpp.server, {args.clients} concurrent clients",
                    lambda: concurrent(peer_client),
                    dtype=dtype,
                    batch_size=1,
                    pid=peer_proc.pid,
                    note="llama-cpp-python's own server as shipped (one request at a time)",
                    **common,
                )
            )
        sides.append(
            harness.Side(
                "llmapps serve, one request at a time",
                lambda: one_by_one(ours_client),
                role="reference",
                dtype=dtype,
                batch_size=1,
                pid=ours_proc.pid,
                **common,
            )
        )
        m = harness.measure_with(
            args,
            sides,
            harness.Metric("tokens/s"),
            valid=harness.nonempty,
        )
        batching = ours_client.get("/health").json().get("batching")
    finally:
        pool.shutdown()
        for proc in procs:
            stop(proc)
    harness.finish(
        "bench_server_batching",
        m,
        args,
        config={
            "model": Path(args.model).name,
            **{k: getattr(args, k) for k in ("clients", "max_tokens", "threads", "batch_wait_ms")},
        },
        what=f"{args.clients} greedy chat requests of {args.max_tokens} tokens to servers of "
        f"{Path(args.model).name} on loopback",
        argv=argv,
        extra={"ours_batching": batching},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
