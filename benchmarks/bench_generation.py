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
    python benchmarks/bench_generation.py --real -n 16 --max-new-tokens 64
                                           # Gemma 3 270M, prompts packed to the default budget
    python benchmarks/bench_generation.py --quick               # 3 short prompts, 6 tokens: does it run

Runs on ``benchmarks/harness.py`` (sides interleaved, repeats, spread, dtype, quality: valid =
the output parses as a news riddle, identical = the same text as (a)) and writes
``results/bench_generation.json`` (``--real``: ``bench_generation_gemma.json``).
"""

from __future__ import annotations

import argparse
from typing import Any

import harness


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="tiny-base", help="packaged name, hub id, directory, or tiny-base"
    )
    ap.add_argument(
        "--real",
        action="store_true",
        help="the real-model run: few-shot prompts packed by the strategy to the default "
        "budget on gemma-3-270m (with -n 16 --max-new-tokens 64)",
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
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--dtype", default=None, help="float32, bfloat16, ... (default: the settings' auto)"
    )
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    name = "bench_generation"
    if args.quick:
        args.model, args.n, args.words, args.max_new_tokens = "tiny-base", 3, 20, 6
    if args.real:
        if args.model == "tiny-base":
            args.model = "gemma-3-270m"
        name = "bench_generation_gemma"

    import torch
    from langchain_huggingface import HuggingFacePipeline
    from transformers import pipeline

    from chains.news_riddle import parse_fields
    from llmapps.models.langchain_local import LocalLLM
    from llmapps.models.local import load_local_model
    from llmapps.models.streaming import cut_at_stop

    lm = load_local_model(
        args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size
    )
    args.batch_size = lm.batch_size
    if args.real:
        prompts, stops = build_packed_prompts(args.n, args.model, args.max_new_tokens)
    else:
        prompts, stops = build_prompts(args.n, args.words, lm)
    tok = lm.tokenizer
    dtype = str(lm.model.dtype).removeprefix("torch.")
    threads = torch.get_num_threads()
    print(
        f"model {args.model} on {lm.device} ({dtype}), {args.n} prompts "
        f"({min(map(lm.count_tokens, prompts))}-{max(map(lm.count_tokens, prompts))} tokens), "
        f"max_new_tokens={args.max_new_tokens}, stops={stops}, torch threads={threads}"
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

    def run(outs: list[str]) -> harness.Run:
        """Texts cut at the first stop (as every side's user sees them); work = their tokens."""
        cut = [cut_at_stop(o, stops)[0] for o in outs]
        n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in cut)
        return harness.Run(work=n_tokens, texts=cut)

    peer_a, peer_b = peer(None), peer(args.batch_size)
    common = {"dtype": dtype, "threads": threads, "inputs": prompts}
    sides = [
        harness.Side(
            "ours: LocalLLM.batch",
            lambda: run(ours_llm.batch(prompts, stop=stops)),
            role="ours",
            batch_size=args.batch_size,
            **common,
        ),
        harness.Side(
            "(a) HuggingFacePipeline .batch() default",
            lambda: run(peer_a.batch(prompts, pipeline_kwargs=stop_kwargs)),
            batch_size=1,
            note="as users usually build it: no batch_size on the pipeline",
            **common,
        ),
        harness.Side(
            f"(b) HuggingFacePipeline batch_size={args.batch_size}",
            lambda: run(peer_b.batch(prompts, pipeline_kwargs=stop_kwargs)),
            batch_size=args.batch_size,
            note="tuned: the pipeline's and the wrapper's batch_size set to ours",
            **common,
        ),
    ]
    m = harness.measure_with(
        args,
        sides,
        harness.Metric("tokens/s"),
        valid=lambda t: bool(parse_fields(t)["valid"]),
        reference=sides[1].name,
    )
    config = {
        "model": args.model,
        "real": args.real,
        "n": args.n,
        "words": args.words,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "device": lm.device,
        "dtype": dtype,
        "stops": stops,
    }
    what = (
        f"greedy generation of {args.n} few-shot news-riddle prompts on {args.model} "
        f"({dtype}, {lm.device}), {args.max_new_tokens} new tokens: ours vs LangChain's "
        "HuggingFacePipeline default and tuned, same model object"
    )
    harness.finish(name, m, args, config=config, what=what, argv=argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
