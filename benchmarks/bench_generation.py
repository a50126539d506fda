"""Local batched generation against LangChain's own ``HuggingFacePipeline`` on the same model.

Same model object (so the same dtype and attention implementation, ``sdpa``), same tokenizer
(left padding), same few-shot news-riddle prompts, same greedy settings, ``max_new_tokens`` and
stop strings, same torch threads, side by side in one run:

- ours: ``LocalLLM.batch`` (one ``LocalModel.generate``: length-sorted batches, each prompt
  prefilled without padding and the caches stitched into one batch cache);
- peer (a): ``HuggingFacePipeline`` built as users usually do (no ``batch_size`` on the pipeline),
  driven by its default ``.batch()``; left out of ``--real`` runs (one prompt at a time on Gemma
  takes over two minutes a run) unless ``--default-peer``;
- peer (b), tuned: the pipeline's and the wrapper's ``batch_size`` set (``--peer-batch-size``:
  the best of the sweep below on ``--real``, else ours), and ``--peer-cache`` where it helps.

``--sweep-peer`` times the peer once per setting (batch size 4, 8, 16; ``static`` cache;
generate's ``prefill_chunk_size``) after one warm-up and writes ``<name>_peer_sweep.json``: how the tuned
peer's settings were chosen (one run each: a choice, not a claim).

The peers get the stop strings as ``stop_strings`` generation kwargs, so all sides do the same
work. Outputs are cut at the first stop string on every side. Throughput is output tokens (of
the cut texts) per second.

::

    python benchmarks/bench_generation.py                       # tiny-base (built on first use)
    python benchmarks/bench_generation.py --model Qwen/Qwen2.5-0.5B -n 32 --max-new-tokens 64
    python benchmarks/bench_generation.py --real -n 16 --max-new-tokens 64
                                           # Gemma 3 270M, prompts packed to the default budget
    python benchmarks/bench_generation.py --real -n 16 --max-new-tokens 64 --sweep-peer
    python benchmarks/bench_generation.py --quick               # 3 short prompts, 6 tokens: does it run

Runs on ``benchmarks/harness.py`` (sides interleaved, repeats, spread, dtype, quality: valid =
the output parses as a news riddle, identical = the same text as the reference side: (a) where it
runs, else the tuned peer) and writes ``results/bench_generation.json`` (``--real``:
``bench_generation_gemma.json``).
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


# The tuned peer's batch size on ``--real``: the best of ``--sweep-peer`` (results/
# bench_generation_gemma_peer_sweep.json); elsewhere the peer gets ours.
REAL_PEER_BATCH = 16
SWEEP: tuple[tuple[str, int, dict[str, Any], str], ...] = (
    # (label, batch_size, generate kwargs, attention implementation)
    ("batch_size=4", 4, {}, "sdpa"),
    ("batch_size=8", 8, {}, "sdpa"),
    ("batch_size=16", 16, {}, "sdpa"),
    ("batch_size=16, static cache", 16, {"cache_implementation": "static"}, "sdpa"),
    ("batch_size=16, prefill_chunk_size=512", 16, {"prefill_chunk_size": 512}, "sdpa"),
    # not swept: eager attention (it materialises every layer's batch x 4 heads x 2,048^2 fp32
    # scores, 1 GiB at batch 16, and is the slower kernel on long prompts)
)


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
        help="ours (default: settings.generation.batch_size)",
    )
    ap.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="ours: tokens per prefill pass on sliding-window models, 0 for one pass "
        "(default: settings.generation.prefill_chunk_tokens)",
    )
    ap.add_argument(
        "--also-chunk",
        type=int,
        default=None,
        help="a second ours side with this prefill chunk (interleaved with the first)",
    )
    ap.add_argument(
        "--peer-batch-size",
        type=int,
        default=None,
        help=f"the tuned peer's (default: {REAL_PEER_BATCH} on --real, else ours)",
    )
    ap.add_argument(
        "--peer-cache", default=None, help="the tuned peer's cache_implementation (e.g. static)"
    )
    ap.add_argument(
        "--peer-prefill-chunk",
        type=int,
        default=None,
        help="the tuned peer's prefill_chunk_size (generate's chunked prefill)",
    )
    ap.add_argument(
        "--default-peer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run peer (a), the pipeline's defaults (default: yes, but not on --real)",
    )
    ap.add_argument(
        "--sweep-peer",
        action="store_true",
        help="time the peer once per setting and write <name>_peer_sweep.json instead",
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
    if args.default_peer is None:
        args.default_peer = not args.real

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
    if args.prefill_chunk is not None:
        lm.prefill_chunk = args.prefill_chunk or None  # this process's model: ours only reads it
    args.prefill_chunk = lm.prefill_chunk
    if args.peer_batch_size is None:
        args.peer_batch_size = REAL_PEER_BATCH if args.real else args.batch_size
    if args.real:
        prompts, stops = build_packed_prompts(args.n, args.model, args.max_new_tokens)
    else:
        prompts, stops = build_prompts(args.n, args.words, lm)
    tok = lm.tokenizer
    dtype = str(lm.model.dtype).removeprefix("torch.")
    threads = torch.get_num_threads()
    attn = str(lm.model.config._attn_implementation)
    lengths = [lm.count_tokens(p) for p in prompts]
    print(
        f"model {args.model} on {lm.device} ({dtype}, {attn} attention), {args.n} prompts "
        f"({min(lengths)}-{max(lengths)} tokens, {sum(lengths)} in all), "
        f"max_new_tokens={args.max_new_tokens}, stops={stops}, torch threads={threads}"
    )

    inputs: list[Any] = list(prompts)  # LangChain's batch() takes any LanguageModelInput
    ours_llm = LocalLLM.from_local(lm, max_new_tokens=args.max_new_tokens, temperature=0.0)
    gen = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": tok.pad_token_id,
    }

    def peer(batch_size: int | None, **generate: Any) -> HuggingFacePipeline:
        extra: dict[str, Any] = {"batch_size": batch_size} if batch_size else {}
        extra.update({k: v for k, v in generate.items() if v is not None})
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

    def peer_run(p: HuggingFacePipeline) -> harness.Run:
        # the stop strings through transformers' own criterion: the same work as ours
        return run(p.batch(inputs, pipeline_kwargs={"stop_strings": stops, "tokenizer": tok}))

    config = {
        "model": args.model,
        "real": args.real,
        "n": args.n,
        "words": args.words,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "prefill_chunk": args.prefill_chunk,
        "peer_batch_size": args.peer_batch_size,
        "peer_cache": args.peer_cache,
        "peer_prefill_chunk": args.peer_prefill_chunk,
        "device": lm.device,
        "dtype": dtype,
        "attn_implementation": attn,
        "stops": stops,
        "prompt_tokens": lengths,
    }
    if args.sweep_peer:
        return sweep_peer(args, name, config, lm, peer, peer_run)

    peer_generate = {
        "cache_implementation": args.peer_cache,
        "prefill_chunk_size": args.peer_prefill_chunk,
    }
    tuned_with = ", ".join(f"{k}={v}" for k, v in peer_generate.items() if v is not None)
    tuned = f"(b) HuggingFacePipeline batch_size={args.peer_batch_size}" + (
        f", {tuned_with}" if tuned_with else ""
    )
    peer_b = peer(args.peer_batch_size, **peer_generate)
    common: dict[str, Any] = {"dtype": dtype, "threads": threads, "inputs": prompts}
    settings = {"attn_implementation": attn, "padding_side": tok.padding_side}
    sides = [
        harness.Side(
            "ours: LocalLLM.batch",
            lambda: run(ours_llm.batch(inputs, stop=stops)),
            role="ours",
            batch_size=args.batch_size,
            settings=settings | {"prefill_chunk": args.prefill_chunk},
            **common,
        )
    ]
    if args.also_chunk:
        import copy

        chunked = copy.copy(lm)  # a view: same weights, tokenizer and lock
        chunked.prefill_chunk = args.also_chunk
        chunked_llm = LocalLLM.from_local(
            chunked, max_new_tokens=args.max_new_tokens, temperature=0.0
        )
        sides.append(
            harness.Side(
                f"ours: LocalLLM.batch, prefill_chunk={args.also_chunk}",
                lambda: run(chunked_llm.batch(inputs, stop=stops)),
                role="ours",
                batch_size=args.batch_size,
                settings=settings | {"prefill_chunk": args.also_chunk},
                **common,
            )
        )
    if args.default_peer:
        peer_a = peer(None)
        sides.append(
            harness.Side(
                "(a) HuggingFacePipeline .batch() default",
                lambda: peer_run(peer_a),
                batch_size=1,
                note="as users usually build it: no batch_size on the pipeline",
                settings=settings,
                **common,
            )
        )
    sides.append(
        harness.Side(
            tuned,
            lambda: peer_run(peer_b),
            batch_size=args.peer_batch_size,
            note="tuned: the pipeline's and the wrapper's batch_size"
            + (" (the best of --sweep-peer)" if args.real else " set to ours")
            + (f", {tuned_with}" if tuned_with else "")
            + "; same model object (dtype, sdpa), tokenizer padding left, same threads",
            settings=settings | peer_generate,
            **common,
        )
    )
    m = harness.measure_with(
        args,
        sides,
        harness.Metric("tokens/s"),
        valid=lambda t: bool(parse_fields(t)["valid"]),
        reference=next(s.name for s in sides if s.role != "ours"),
    )
    what = (
        f"greedy generation of {args.n} few-shot news-riddle prompts on {args.model} "
        f"({dtype}, {lm.device}), {args.max_new_tokens} new tokens: ours vs LangChain's "
        "HuggingFacePipeline "
        + ("default and tuned" if args.default_peer else "tuned")
        + ", same model object"
    )
    harness.finish(name, m, args, config=config, what=what, argv=argv)
    return 0


def sweep_peer(
    args: argparse.Namespace,
    name: str,
    config: dict[str, Any],
    lm: Any,
    peer: Any,
    peer_run: Any,
) -> int:
    """One timed run of the peer per setting in ``SWEEP`` (after one warm-up), written to
    ``<name>_peer_sweep.json``: the evidence for the tuned peer's settings."""
    import time

    rows: list[dict[str, Any]] = []
    path = harness.out_path(f"{name}_peer_sweep", args)
    sweep = SWEEP[:2] if args.quick else SWEEP

    def save() -> None:  # after every setting: a killed sweep keeps its rows
        doc = {
            "name": f"{name}_peer_sweep",
            "what": "the tuned peer's settings: one run each after one warm-up (a choice of "
            "settings, not a speed claim)",
            "command": " ".join(["python", "benchmarks/bench_generation.py", *(argv_of(args))]),
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": harness.machine(),
            "versions": harness.versions(),
            "config": config,
            "rows": rows,
        }
        harness.write_result(path, doc)

    peer_run(peer(sweep[0][1]))  # warm-up, not counted
    for label, batch_size, generate, attn in sweep:
        lm.model.set_attn_implementation(attn)
        row: dict[str, Any] = {
            "setting": label,
            "batch_size": batch_size,
            "generate": generate,
            "attn_implementation": attn,
            "load_1m_before": round(harness._load_1m(), 2),
        }
        try:
            p = peer(batch_size, **generate)
            started = time.perf_counter()
            r = peer_run(p)
            secs = time.perf_counter() - started
        except Exception as err:  # a setting the pipeline refuses is recorded, not fatal
            rows.append(row | {"error": f"{type(err).__name__}: {err}"})
            print(f"  {label:<34} refused: {err}", flush=True)
            save()
            continue
        finally:
            lm.model.set_attn_implementation(config["attn_implementation"])
        rows.append(
            row
            | {
                "seconds": round(secs, 3),
                "tokens_per_s": round(r.work / secs, 3),
                "texts": r.texts,
            }
        )
        print(f"  {label:<34} {secs:8.2f} s  {r.work / secs:8.2f} tokens/s", flush=True)
        save()
    best = max(rows, key=lambda r: r.get("tokens_per_s", 0.0))
    print(f"best: {best['setting']}; wrote {path}")
    return 0


def argv_of(args: argparse.Namespace) -> list[str]:
    return ["--real"] * bool(args.real) + [
        "-n",
        str(args.n),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--sweep-peer",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
