"""Local backends side by side: our transformers path, our llama.cpp backend, plain llama-cpp-python.

news-riddle few-shot on Gemma 3 270M (the packaged GGUF, Q4_K_M; transformers runs the same file
dequantized to float32), the first ``-n`` (16) bundled test articles, greedy, 64 new tokens, the
task's stop strings, the same prompts and budget on every side:

- ``ours-transformers``: ``load_chain("news-riddle", "few-shot", backend="transformers")``,
  one ``chain.batch`` (``LocalModel.generate``: batched, stitched prefill);
- ``ours-llama.cpp``: the same chain with ``backend="llama.cpp"`` (prompts ordered so shared
  prefixes follow each other; the KV cache of the shared part is reused);
- ``plain-llama.cpp``: the peer, ``llama_cpp.Llama.create_completion`` called directly, one prompt
  at a time in input order with its own prefix cache, on the prompts our llama.cpp run sent
  (captured from its callbacks), with the same ``Llama`` settings (context, threads).

Each side runs in its own child process (so peak RSS is its own) one after the other; results go
to ``results/bench_local_backends.json`` as each side finishes, and a rerun skips the sides
already there (``--fresh`` starts over). Our llama.cpp texts are compared with plain llama.cpp's;
where they differ, plain llama.cpp is asked again on a fresh context (``reset()``), which is the
text a prompt gives on its own: plain's cached run depends on which prompt ran before it, ours does
not (see ``llmapps/models/llamacpp.py``).

``--strategy lora`` runs the ``lora`` strategy instead (the adapter of ``--adapter``, default
the full-recipe adapter in ``$LLMAPPS_HOME/adapters/news-riddle-gemma-3-270m``): transformers
with PEFT, our llama.cpp backend with the adapter converted to a llama.cpp LoRA file, and plain
llama-cpp-python given the same file (``Llama(lora_path=)``). Its prompts share no prefix.

::

    python benchmarks/bench_local_backends.py                    # example_selection=order
    python benchmarks/bench_local_backends.py --selection similarity --out /tmp/sim.json
    python benchmarks/bench_local_backends.py --strategy lora --out benchmarks/results/bench_local_backends_lora.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "bench_local_backends.json"
SIDES = ("ours-llama.cpp", "plain-llama.cpp", "ours-transformers")
MODEL = "gemma-3-270m"


def _articles(n: int) -> list[dict[str, Any]]:
    from chains.news_data import samples

    return [{k: a[k] for k in ("id", "title", "text")} for a in samples("test")[:n]]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Prompts:
    """A callback handler that keeps the completion prompts a chain sends, in call order."""

    def __new__(cls) -> Any:
        from langchain_core.callbacks import BaseCallbackHandler

        class Handler(BaseCallbackHandler):
            def __init__(self) -> None:
                self.prompts: list[str] = []
                self.tokens = 0

            def on_llm_start(self, serialized: Any, prompts: list[str], **kw: Any) -> None:
                self.prompts.extend(prompts)

            def on_llm_end(self, response: Any, **kw: Any) -> None:
                usage = (response.llm_output or {}).get("token_usage") or {}
                self.tokens += int(usage.get("completion_tokens", 0))

        return Handler()


def run_ours(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    from llmapps.apps import load_chain
    from llmapps.models.llamacpp import load_gguf_model

    lora = _lora_file(args) if args.strategy == "lora" else None
    if backend == "llama.cpp":
        # cached: the chain gets this one (the lora strategy names its model base+adapter)
        load_gguf_model(MODEL, n_threads=args.threads, lora_path=lora)
    else:
        import torch

        torch.set_num_threads(args.threads)
    opts: dict[str, Any] = {
        "backend": backend,
        "max_new_tokens": args.max_new_tokens,
        "temperature": 0.0,
    }
    if args.strategy == "lora":
        opts["adapter"] = str(args.adapter)
    else:
        opts.update(base_model=MODEL, example_selection=args.selection)
    chain = load_chain("news-riddle", args.strategy, **opts)
    arts = _articles(args.n)
    warm = chain.invoke(arts[0])  # load and warm up outside the clock (both backends alike)
    del warm
    if backend == "llama.cpp":
        load_gguf_model(MODEL, lora_path=lora).llama.reset()  # no head start from the warm-up
    handler = _Prompts()
    started = time.perf_counter()
    rows = chain.batch(arts, config={"callbacks": [handler]})
    wall = time.perf_counter() - started
    out: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "articles_per_s": round(len(arts) / wall, 4),
        "completion_tokens": handler.tokens,
        "tokens_per_s": round(handler.tokens / wall, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "texts": [r["raw"] for r in rows],
        "valid": sum(bool(r["valid"]) for r in rows),
        "prompt_tokens_mean": None,
    }
    if backend == "llama.cpp":
        lm = load_gguf_model(MODEL, lora_path=lora)
        counts = [lm.count_tokens(p) for p in handler.prompts]
        out["prompt_tokens_mean"] = round(sum(counts) / len(counts), 1)
        out["prompts"] = handler.prompts
        out["stop"] = _stop()
    return out


def _lora_file(args: argparse.Namespace) -> Path:
    """The llama.cpp LoRA file of ``--adapter`` for the packaged base (converted once)."""
    from llmapps.models.gguf_lora import lora_gguf_for
    from llmapps.models.packaged import gguf_path

    return lora_gguf_for(args.adapter, gguf_path(MODEL))


def _stop() -> list[str]:
    from prompts import load_task

    return list(load_task("news_riddle/one_step").stop)


def run_plain(args: argparse.Namespace, prompts: list[str], stop: list[str]) -> dict[str, Any]:
    import llama_cpp

    from llmapps.models.llamacpp import read_gguf_header
    from llmapps.models.native_probe import check_llamacpp
    from llmapps.models.packaged import gguf_path
    from llmapps.settings import get_settings

    check_llamacpp()  # the peer runs in this process: probe the build first, as our backend does
    path = str(gguf_path(MODEL))
    trained = read_gguf_header(path).context_length  # the context our backend allocates
    n_ctx = min(get_settings().generation.llamacpp_context, trained or 1 << 30)
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
        lora_path=str(_lora_file(args)) if args.strategy == "lora" else None,
    )

    def complete(p: str) -> dict[str, Any]:
        return llm.create_completion(p, max_tokens=args.max_new_tokens, temperature=0.0, stop=stop)

    complete(prompts[0])  # warm-up, as ours had
    llm.reset()
    texts, tokens = [], 0
    started = time.perf_counter()
    for p in prompts:
        r = complete(p)
        texts.append(r["choices"][0]["text"])
        tokens += int(r["usage"]["completion_tokens"])
    wall = time.perf_counter() - started
    return {
        "wall_s": round(wall, 2),
        "articles_per_s": round(len(prompts) / wall, 4),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "texts": texts,
        "_fresh": {},
        "_llm": llm,
        "_complete": complete,
    }


def child(args: argparse.Namespace) -> int:
    if args.side == "plain-llama.cpp":
        spec = json.loads(Path(args.prompts_from).read_text())
        out = run_plain(args, spec["prompts"], spec["stop"])
        llm, complete = out.pop("_llm"), out.pop("_complete")
        out.pop("_fresh")
        # where plain's cached run differs from ours, plain on a fresh context decides
        fresh = {}
        for i, (a, b) in enumerate(zip(spec["texts"], out["texts"], strict=True)):
            if a != b:
                llm.reset()
                fresh[str(i)] = complete(spec["prompts"][i])["choices"][0]["text"]
        out["fresh_texts_where_different"] = fresh
    else:
        out = run_ours(args.side.removeprefix("ours-"), args)
    Path(args.child_out).write_text(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=16, help="bundled test articles")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--selection", choices=["order", "similarity"], default="order")
    ap.add_argument("--strategy", choices=["few-shot", "lora"], default="few-shot")
    ap.add_argument("--adapter", type=Path, help="lora: the adapter folder (default: full recipe)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-from", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.strategy == "lora" and args.adapter is None:
        from llmapps.settings import get_settings

        args.adapter = get_settings().home / "adapters" / "news-riddle-gemma-3-270m"
    if args.side:
        return child(args)

    config = {
        "model": MODEL,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "example_selection": args.selection if args.strategy == "few-shot" else None,
        "greedy": True,
        **({"strategy": "lora", "adapter": str(args.adapter)} if args.strategy == "lora" else {}),
    }
    results: dict[str, Any] = {}
    if args.out.exists() and not args.fresh:
        old = json.loads(args.out.read_text())
        if old.get("config") == config:
            results = old.get("sides", {})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = args.out.with_suffix(".work")
    work.mkdir(exist_ok=True)

    def save(summary: dict[str, Any] | None = None) -> None:
        doc = {
            "config": config,
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_avg_at_end": os.getloadavg(),
            },
            "sides": results,
            **({"summary": summary} if summary else {}),
        }
        args.out.write_text(json.dumps(doc, indent=2))

    for side in SIDES:
        if side in results:
            print(f"{side}: already measured ({results[side]['articles_per_s']} articles/s)")
            continue
        out_file = work / f"{side}.json"
        cmd = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--child-out",
            str(out_file),
            "-n",
            str(args.n),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--threads",
            str(args.threads),
            "--selection",
            args.selection,
            "--strategy",
            args.strategy,
            *(["--adapter", str(args.adapter)] if args.adapter else []),
        ]
        if side == "plain-llama.cpp":
            spec = work / "prompts.json"
            ours = results["ours-llama.cpp"]
            spec.write_text(
                json.dumps(
                    {"prompts": ours["prompts"], "stop": ours["stop"], "texts": ours["texts"]}
                )
            )
            cmd += ["--prompts-from", str(spec)]
        print(f"{side}: running ...", flush=True)
        load0 = os.getloadavg()[0]
        subprocess.run(cmd, check=True, cwd=ROOT)
        results[side] = json.loads(out_file.read_text())
        results[side]["load_avg_1m_before"] = round(load0, 2)
        print(
            f"{side}: {results[side]['wall_s']} s, {results[side]['articles_per_s']} articles/s, "
            f"{results[side]['tokens_per_s']} tokens/s, peak RSS {results[side]['peak_rss_mb']} MB",
            flush=True,
        )
        save()

    ours, plain, hf = (results[s] for s in SIDES)
    same = sum(a == b for a, b in zip(ours["texts"], plain["texts"], strict=True))
    fresh = plain.get("fresh_texts_where_different", {})
    same_fresh = sum(ours["texts"][int(i)] == t for i, t in fresh.items())
    best = max(ours["articles_per_s"], hf["articles_per_s"])
    summary = {
        "ours_llamacpp_vs_plain_articles_per_s": round(
            ours["articles_per_s"] / plain["articles_per_s"], 3
        ),
        "ours_transformers_vs_plain_articles_per_s": round(
            hf["articles_per_s"] / plain["articles_per_s"], 3
        ),
        "best_ours_vs_plain": round(best / plain["articles_per_s"], 3),
        "texts_equal_to_plain_cached": f"{same}/{len(ours['texts'])}",
        "differing_texts_equal_to_plain_fresh_context": f"{same_fresh}/{len(fresh)}",
        "transformers_texts_equal_to_llamacpp": sum(
            a == b for a, b in zip(hf["texts"], ours["texts"], strict=True)
        ),
        "prompt_tokens_mean": ours.get("prompt_tokens_mean"),
    }
    save(summary)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
