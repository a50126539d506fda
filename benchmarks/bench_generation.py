"""Local batched generation against LangChain's own ``HuggingFacePipeline`` on the same model.

Same model object, same few-shot news-riddle prompts (from the bundled articles), same greedy
settings, ``max_new_tokens`` and stop strings, side by side in one run:

- ours: ``LocalLLM.batch`` (one ``LocalModel.generate``: length-sorted, left-padded batches,
  each prompt prefilled without padding and the caches stitched into one batch cache);
- peer (a): ``HuggingFacePipeline`` built as users usually do (no ``batch_size`` on the pipeline),
  driven by its default ``.batch()``;
- peer (b): the same with the pipeline's ``batch_size`` (and the wrapper's) set to ours.

The peers get the stop strings as ``stop_strings`` generation kwargs, so all three do the same
work. Outputs are cut at the first stop string on every side and compared token by token against
the one-by-one reference (a). Throughput is output tokens (of the cut texts) per second.

::

    python benchmarks/bench_generation.py                       # tiny-base (built on first use)
    python benchmarks/bench_generation.py --model Qwen/Qwen2.5-0.5B -n 32 --max-new-tokens 64
    python benchmarks/bench_generation.py --real -n 16 --max-new-tokens 64 --repeats 1
                                           # Gemma 3 270M, prompts packed to the default budget

Prints a table and writes ``results/bench_generation.json`` beside this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "bench_generation.json"


def build_prompts(n: int, words: int, lm: Any) -> tuple[list[str], list[str]]:
    """``n`` few-shot prompts (one worked example each) from bundled articles, and the stops."""
    from chains.news_data import examples, samples
    from prompts import load_task

    task = load_task("news_riddle/one_step")
    bank = examples("train")
    arts = samples("all")
    prompts = []
    for i in range(n):
        a = arts[i % len(arts)]
        ex = dict(bank[i % len(bank)])
        ex["text"] = " ".join(ex["text"].split()[: words // 2])
        # vary lengths, as real articles do, so padding and sorting matter
        cut = max(20, words - (i * 37) % words)
        inputs = {"title": a["title"], "text": " ".join(a["text"].split()[:cut])}
        prompts.append(task.completion.render(inputs, [ex]))
    limit = lm.context_length - 256
    prompts = [p if lm.count_tokens(p) <= limit else p[-limit * 3 :] for p in prompts]
    return prompts, list(task.stop)


def build_packed_prompts(n: int, model: str, max_new: int) -> tuple[list[str], list[str]]:
    """``n`` real few-shot prompts as the ``few-shot`` strategy packs them: test articles, worked
    examples ranked per article and packed up to the default prompt budget (``--real``)."""
    from chains.news_data import examples, samples
    from chains.news_riddle import validate_article
    from llmapps.strategies.few_shot import FewShotStrategy
    from prompts import load_task

    task = load_task("news_riddle/one_step", examples("train"))
    strategy = FewShotStrategy(base_model=model, max_new_tokens=max_new)
    render = strategy.prompt(task)
    arts = samples("test") + samples("validation")
    texts = [
        str(render.invoke(validate_article({"title": a["title"], "text": a["text"]})))
        for a in arts[:n]
    ]
    return texts, list(task.stop)


class PeakRss:
    """Peak resident memory of this process above where it stood when the block began."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._proc = psutil.Process()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.baseline = self.peak = 0

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def timed(fn: Any, repeats: int) -> tuple[float, Any, float]:
    """Median seconds, the last output, and the largest peak-RSS growth (MB) over the repeats."""
    times, out, grown = [], None, 0.0
    for _ in range(repeats):
        with PeakRss() as rss:
            started = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - started)
        grown = max(grown, rss.grown_mb)
    return statistics.median(times), out, grown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="tiny-base", help="packaged name, hub id, directory, or tiny-base"
    )
    ap.add_argument(
        "--real",
        action="store_true",
        help="the real-model run: few-shot prompts packed by the strategy to the default "
        "budget on gemma-3-270m (with -n 16 --max-new-tokens 64 --repeats 1)",
    )
    ap.add_argument("-n", type=int, default=32, help="prompts")
    ap.add_argument("--words", type=int, default=160, help="article words per prompt (at most)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="ours, and peer (b)'s (default: settings.generation.batch_size)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="median of this many timed runs")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.real:
        if args.model == "tiny-base":
            args.model = "gemma-3-270m"
        if args.out == RESULTS:
            args.out = RESULTS.with_name("bench_generation_gemma.json")

    import torch
    from langchain_huggingface import HuggingFacePipeline
    from rich.console import Console
    from rich.table import Table
    from transformers import pipeline

    from llmapps.models.langchain_local import LocalLLM
    from llmapps.models.local import load_local_model
    from llmapps.models.streaming import cut_at_stop

    console = Console(width=max(120, Console().width))
    lm = load_local_model(args.model, device=args.device, batch_size=args.batch_size)
    args.batch_size = lm.batch_size
    if args.real:
        prompts, stops = build_packed_prompts(args.n, args.model, args.max_new_tokens)
    else:
        prompts, stops = build_prompts(args.n, args.words, lm)
    tok = lm.tokenizer
    console.print(
        f"model {args.model} on {lm.device}, {args.n} prompts "
        f"({min(map(lm.count_tokens, prompts))}-{max(map(lm.count_tokens, prompts))} tokens), "
        f"max_new_tokens={args.max_new_tokens}, stops={stops}, "
        f"torch threads={torch.get_num_threads()}"
    )

    ours_llm = LocalLLM.from_local(lm, max_new_tokens=args.max_new_tokens, temperature=0.0)
    gen = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": tok.pad_token_id,
    }
    stop_kwargs = {"stop_strings": stops, "tokenizer": tok}

    def peer(batch_size: int | None) -> HuggingFacePipeline:
        extra = {"batch_size": batch_size} if batch_size else {}
        pipe = pipeline(
            "text-generation", model=lm.model, tokenizer=tok, return_full_text=False, **gen, **extra
        )
        return HuggingFacePipeline(
            pipeline=pipe, **({"batch_size": batch_size} if batch_size else {})
        )

    runs = {
        "ours: LocalLLM.batch": lambda: ours_llm.batch(prompts, stop=stops),
        "(a) HuggingFacePipeline .batch() default": (
            lambda p=peer(None): p.batch(prompts, pipeline_kwargs=stop_kwargs)
        ),
        f"(b) HuggingFacePipeline batch_size={args.batch_size}": (
            lambda p=peer(args.batch_size): p.batch(prompts, pipeline_kwargs=stop_kwargs)
        ),
    }
    ours_llm.batch(prompts[:4], stop=stops)  # warm-up (allocator, kernels) before timing

    measured: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for name, fn in runs.items():
        with console.status(f"running {name}"):
            secs, outs, grown = timed(fn, args.repeats)
        cut = [cut_at_stop(o, stops)[0] for o in outs]
        texts[name] = cut
        n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in cut)
        measured[name] = {
            "seconds": round(secs, 4),
            "output_tokens": n_tokens,
            "tokens_per_s": round(n_tokens / secs, 2),
            "peak_rss_growth_mb": round(grown, 1),
        }

    names = list(runs)
    ours, ref = names[0], names[1]
    table = Table(title=f"greedy generation, {args.n} prompts, {lm.device}")
    for col in (
        "run",
        "seconds (median)",
        "output tokens",
        "tokens/s",
        "ours is x faster",
        "peak RSS growth MB",
        "identical to (a)",
    ):
        table.add_column(col)
    ref_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts[ref]]
    for name in names:
        m = measured[name]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts[name]]
        same = sum(a == b for a, b in zip(ids, ref_ids, strict=True))
        m["identical_to_a"] = same
        ratio = (
            measured[ours]["tokens_per_s"] / m["tokens_per_s"]
            if m["tokens_per_s"]
            else float("nan")
        )
        m["ours_speedup"] = round(ratio, 2)
        table.add_row(
            name,
            f"{m['seconds']:.3f}",
            str(m["output_tokens"]),
            f"{m['tokens_per_s']:.1f}",
            "-" if name == ours else f"{ratio:.2f}x",
            f"{m['peak_rss_growth_mb']:.0f}",
            f"{same}/{len(ids)}",
        )
    console.print(table)
    vs_a = measured[names[1]]["ours_speedup"]
    vs_b = measured[names[2]]["ours_speedup"]
    mem_ok = measured[ours]["peak_rss_growth_mb"] <= measured[names[2]]["peak_rss_growth_mb"]
    console.print(f"peak memory ours <= (b): {'met' if mem_ok else 'NOT met'}")
    console.print(
        f"targets: >= 6x vs (a): {vs_a:.2f}x {'met' if vs_a >= 6 else 'NOT met'}; "
        f">= 1.5x vs (b): {vs_b:.2f}x {'met' if vs_b >= 1.5 else 'NOT met'}; "
        f"token-identical ours vs (a): {measured[ours]['identical_to_a']}/{args.n}"
    )
    result = {
        "config": {
            **vars(args),
            "out": str(args.out),
            "stops": stops,
            "device": lm.device,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "runs": measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
