"""What constrained decoding costs: tokens/s with and without a constraint, and compile times.

For each model (SmolLM2-135M-Instruct, Gemma 3 270M) on each local backend (transformers: our
batched ``LocalModel.generate``; llama.cpp: ``GGUFModel.generate``), the first ``-n`` (16) bundled
test articles, greedy, ``--max-new-tokens`` (96): the same prompts are generated without a
constraint (``off``) and with the news-riddle JSON schema (``on``; chat prompt, fields capped by
``maxLength``) or, for a model without a chat template, the few-shot layout. The two sides are
interleaved (off, on, on, off, ...) and repeated ``--rounds`` (3) times; each side's tokens/s is
reported as median and min-max, with its quality (replies that parse with all three fields, out
of ``n``). Then the engine's compile times on each vocabulary: building llguidance's tokenizer
model (cold, once per process) and compiling the schema with it (warm: the tokenizer cached, the
grammar not).

``--engines`` measures the three candidate engines instead (llguidance, xgrammar,
outlines-core): tokenizer info and schema compile time on both vocabularies, and mask + advance
time per decoding step for a batch of 16 matchers walking a real reply
(``results/bench_structured_engines.json``).

``--quick`` runs the tiny built-in models (seconds, for CI smoke).

::

    nice -n 5 python benchmarks/bench_structured.py              # results/bench_structured.json
    python benchmarks/bench_structured.py --engines
    python benchmarks/bench_structured.py --quick --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
FIELDS = ("summary", "riddle", "answer")
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


def schema(max_length: int) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load((ROOT / "prompts/news_riddle/one_step.yaml").read_text())
    base = doc["json_schema"]
    props = {k: {**v, "maxLength": max_length} for k, v in base["properties"].items()}
    return {**base, "properties": props}


def layout(budget: int) -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    from testkit import riddle_layout  # the layout tests/test_structured.py checks

    return riddle_layout(budget)


def prompts_for(lm: Any, n: int, chars: int = 800) -> tuple[list[str], bool]:
    sys.path.insert(0, str(ROOT / "tests"))
    from testkit import riddle_prompts  # the prompts tests/test_structured.py checks, longer

    from chains.news_data import samples

    chat = bool(lm.has_chat_template)
    ask = "as JSON with keys summary, riddle, answer"
    return riddle_prompts(lm, samples("test")[:n], chars=chars, chat=chat, json_ask=ask), chat


def valid(text: str, chat: bool) -> bool:
    import re

    if not chat:
        return bool(re.fullmatch(r"[^\n]+\n\[Riddle\]:[^\n]+\n\[Answer\]:[^\n]+", text.strip()))
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and all(isinstance(obj.get(k), str) for k in FIELDS)


def load(name: str, backend: str) -> Any:
    if backend == "llama.cpp":
        from llmapps.models.llamacpp import load_gguf_model

        return load_gguf_model(name)
    from llmapps.models.local import load_local_model

    return load_local_model(name)


def run_pair(name: str, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    from llmapps.models.local import GenerationParams
    from llmapps.models.structured import OutputConstraint

    lm = load(name, backend)
    prompts, chat = prompts_for(lm, args.n, args.article_chars)
    per_field = (args.max_new_tokens - 24) // 3
    constraint = (
        OutputConstraint("json_schema", schema(per_field * 3))  # ~3 characters a token
        if chat
        else OutputConstraint("layout", layout(per_field))
    )
    t = time.perf_counter()
    lm.compile(constraint)  # the tokenizer model and the grammar, once (reported apart)
    first_compile = time.perf_counter() - t
    sides: dict[str, dict[str, list[Any]]] = {
        s: {"tok_s": [], "seconds": [], "valid": [], "closed": []} for s in ("off", "on")
    }
    generate: Any = lm.generate
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for side in order:
            params = GenerationParams(
                max_new_tokens=args.max_new_tokens,
                constraint=constraint if side == "on" else None,
            )
            t = time.perf_counter()
            kw = {"batch_size": args.batch} if backend == "transformers" else {}
            outs = generate(prompts, params, **kw)
            dt = time.perf_counter() - t
            tokens = sum(o.completion_tokens for o in outs)
            sides[side]["tok_s"].append(tokens / dt)
            sides[side]["seconds"].append(dt)
            sides[side]["valid"].append(sum(valid(o.text, chat) for o in outs))
            sides[side]["closed"].append(sum(o.constraint_error is None for o in outs))
            sides[side].setdefault("tokens", []).append(tokens)
            print(f"{name} {backend} {side} round {r}: {tokens / dt:.1f} tok/s", file=sys.stderr)
    summary: dict[str, Any] = {
        "prompt": "chat + json_schema" if chat else "completion + layout",
        "first_compile_s": round(first_compile, 3),
    }
    for side, rec in sides.items():
        summary[side] = {
            "tok_s_median": round(statistics.median(rec["tok_s"]), 2),
            "tok_s_min_max": [round(min(rec["tok_s"]), 2), round(max(rec["tok_s"]), 2)],
            "seconds": [round(x, 2) for x in rec["seconds"]],
            "valid_of_n": rec["valid"],
            "closed_of_n": rec["closed"],
            "tokens": rec["tokens"],
        }
    off, on = summary["off"]["tok_s_median"], summary["on"]["tok_s_median"]
    summary["cost_pct_tok_s"] = round(100 * (1 - on / off), 1) if off else None
    # A constrained row that closes early stops adding tokens while the batch runs on for its
    # longest row, so tokens/s understates a batched side that closes rows: the wall time of the
    # same prompts and budget is the fair cost on transformers.
    wall_off = statistics.median(sides["off"]["seconds"])
    wall_on = statistics.median(sides["on"]["seconds"])
    summary["cost_pct_wall"] = round(100 * (wall_on / wall_off - 1), 1)
    if backend == "transformers":
        import torch

        summary["dtype"] = str(lm.model.dtype)
        summary["threads"] = torch.get_num_threads()
    else:
        summary["dtype"] = "GGUF (its own quantization)"
        summary["threads"] = int(lm.llama.context_params.n_threads)
    return summary


def compile_times(name: str, repeats: int = 5) -> dict[str, Any]:
    """Cold: building llguidance's tokenizer model; warm: compiling the schema with it."""
    from llmapps.models import structured
    from llmapps.models.local import load_local_model
    from llmapps.models.structured import OutputConstraint

    lm = load_local_model(name)
    constraint = OutputConstraint("json_schema", schema(120))
    structured._TOKENIZERS.pop(lm.tokenizer, None)
    structured._COMPILED.clear()
    t = time.perf_counter()
    lm.compile(constraint)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        structured._COMPILED.clear()
        t = time.perf_counter()
        lm.compile(constraint)
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    lm.compile(constraint)
    cached = time.perf_counter() - t
    return {
        "vocab": len(lm.tokenizer),
        "cold_s (tokenizer model + compile)": round(cold, 3),
        "warm_compile_s_median": round(statistics.median(warm), 4),
        "warm_compile_s_min_max": [round(min(warm), 4), round(max(warm), 4)],
        "cached_s": round(cached, 6),
    }


def engines(names: list[str]) -> dict[str, Any]:
    """The three candidate engines on each vocabulary (see the module docstring)."""
    import torch
    from transformers import AutoTokenizer

    from llmapps.models.local import resolve_model_path

    reply = json.dumps(
        {
            "summary": "The city council approved a new budget for public parks on Monday.",
            "riddle": "I am green and open to all, where children play and old trees grow tall.",
            "answer": "public parks",
        }
    )
    sch = schema(200)
    out: dict[str, Any] = {}
    for name in names:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(name))
        ids = tok(reply, add_special_tokens=False)["input_ids"]
        r: dict[str, Any] = out.setdefault(name, {"vocab": len(tok), "reply_tokens": len(ids)})
        import llguidance
        import llguidance.hf
        import llguidance.torch as lt

        t = time.perf_counter()
        llt = llguidance.hf.from_tokenizer(tok)
        r["llguidance_tokenizer_s"] = round(time.perf_counter() - t, 3)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(sch)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            m = llguidance.LLMatcher(llt, grammar)
            mask = lt.allocate_token_bitmask(1, llt.vocab_size)
            lt.fill_next_token_bitmask(m, mask, 0)
            times.append(round(time.perf_counter() - t, 4))
        r["llguidance_compile_s_cold_then_warm"] = times
        ex = llguidance.LLExecutor()
        ms = [llguidance.LLMatcher(llt, grammar) for _ in range(16)]
        mask = lt.allocate_token_bitmask(16, llt.vocab_size)
        t = time.perf_counter()
        for tid in ids:
            lt.fill_next_token_bitmask_par(ex, [(m, i) for i, m in enumerate(ms)], mask)
            for m in ms:
                m.consume_token(tid)
        r["llguidance_ms_per_step_b16"] = round((time.perf_counter() - t) / len(ids) * 1000, 3)
        try:
            import xgrammar as xgr

            t = time.perf_counter()
            info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
            r["xgrammar_tokenizer_s"] = round(time.perf_counter() - t, 3)
            times = []
            for _ in range(2):
                comp = xgr.GrammarCompiler(info, cache_enabled=False)
                t = time.perf_counter()
                cg = comp.compile_json_schema(json.dumps(sch))
                times.append(round(time.perf_counter() - t, 4))
            r["xgrammar_compile_s_cold_then_warm"] = times
            xms = [xgr.GrammarMatcher(cg) for _ in range(16)]
            bm = xgr.allocate_token_bitmask(16, info.vocab_size)
            t = time.perf_counter()
            for tid in ids:
                for i, xm in enumerate(xms):
                    xm.fill_next_token_bitmask(bm, i)
                for xm in xms:
                    xm.accept_token(tid)
            r["xgrammar_ms_per_step_b16"] = round((time.perf_counter() - t) / len(ids) * 1000, 3)
        except ImportError as err:
            r["xgrammar"] = f"not installed: {err}"
        try:
            from outlines_core import Guide, Index, Vocabulary
            from outlines_core.json_schema import build_regex_from_schema
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            t = time.perf_counter()
            dec = {v: k for k, v in bytes_to_unicode().items()}
            vocab: dict[bytes, list[int]] = {}
            for s, i in tok.get_vocab().items():
                if i == tok.eos_token_id or s in tok.all_special_tokens:
                    continue
                if s.startswith("<0x") and len(s) == 6:
                    b = bytes([int(s[3:5], 16)])
                elif "▁" in s or name.startswith("gemma"):
                    b = s.replace("▁", " ").encode()
                else:
                    b = bytes(dec[c] for c in s) if all(c in dec for c in s) else s.encode()
                vocab.setdefault(b, []).append(i)
            voc = Vocabulary(tok.eos_token_id, vocab)
            r["outlines_core_vocabulary_s"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            idx = Index(build_regex_from_schema(json.dumps(sch)), voc)
            r["outlines_core_index_s"] = round(time.perf_counter() - t, 3)
            guides = [Guide(idx) for _ in range(16)]
            buf = torch.zeros((16, (len(tok) + 31) // 32), dtype=torch.int32)
            t = time.perf_counter()
            for tid in ids:
                for i, g in enumerate(guides):
                    g.write_mask_into(buf[i].data_ptr(), buf[i].numel(), 4)
                for g in guides:
                    g.advance(tid, return_tokens=False)
            r["outlines_core_ms_per_step_b16"] = round(
                (time.perf_counter() - t) / len(ids) * 1000, 3
            )
        except Exception as err:  # a bench records what failed and goes on
            r["outlines_core"] = f"{type(err).__name__}: {err}"[:200]
        print(json.dumps({name: r}), file=sys.stderr)
    return out


def llamacpp_grammars(name: str, rounds: int = 3, max_new: int = 64) -> dict[str, Any]:
    """On llama.cpp: no constraint, llama.cpp's own GBNF sampler (``LlamaGrammar`` from the same
    schema) and llguidance through our logits processor, one chat prompt, interleaved."""
    from llama_cpp import LlamaGrammar

    from llmapps.models.llamacpp import load_gguf_model
    from llmapps.models.local import GenerationParams
    from llmapps.models.structured import OutputConstraint

    lm = load_gguf_model(name)
    prompt, _ = prompts_for(lm, 1)
    sch = schema(60)
    t = time.perf_counter()
    grammar = LlamaGrammar.from_json_schema(json.dumps(sch), verbose=False)
    gbnf_compile = time.perf_counter() - t
    compiled = lm.compile(OutputConstraint("json_schema", sch))
    ids = lm.tokenize(prompt[0])
    rec: dict[str, list[float]] = {"none": [], "llama.cpp GBNF": [], "llguidance": []}
    texts: dict[str, str] = {}
    for _ in range(rounds):
        for side in rec:
            kw = lm._kwargs(
                GenerationParams(max_new_tokens=max_new),
                max_new,
                compiled if side == "llguidance" else None,
            )
            if side == "llama.cpp GBNF":
                kw["grammar"] = grammar
            lm.llama.reset()
            t = time.perf_counter()
            out = lm.llama.create_completion(ids, **kw)
            dt = time.perf_counter() - t
            rec[side].append(out["usage"]["completion_tokens"] / dt)
            texts[side] = out["choices"][0]["text"]
    return {
        "gbnf_compile_s": round(gbnf_compile, 3),
        "tok_s_median": {k: round(statistics.median(v), 2) for k, v in rec.items()},
        "tok_s_min_max": {k: [round(min(v), 2), round(max(v), 2)] for k, v in rec.items()},
        "texts": texts,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, 1 round")
    ap.add_argument("--engines", action="store_true", help="compare the candidate engines")
    ap.add_argument("-n", type=int, default=16, help="test articles (default 16)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--article-chars", type=int, default=800, help="article text kept per prompt")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--backends", nargs="+", default=["transformers", "llama.cpp"])
    ap.add_argument(
        "--compile-models", nargs="*", help="models to time compiles on (default: --models)"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_at_start": os.getloadavg(),
        "nice": os.nice(0),
    }
    if args.engines:
        doc = {
            "environment": env,
            "engines": engines(args.models),
            "llama.cpp": {n: llamacpp_grammars(n) for n in args.models},
        }
        out = args.out or RESULTS / "bench_structured_engines.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc, indent=2))
        return 0
    if args.quick:
        args.models, args.backends, args.rounds = ["tiny-instruct"], ["transformers"], 1
        args.n, args.max_new_tokens = 4, 32
    doc: dict[str, Any] = {
        "environment": env,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": {},
        "compile": {},
    }
    out = args.out or RESULTS / (
        "bench_structured_quick.json" if args.quick else "bench_structured.json"
    )
    for name in args.models if args.compile_models is None else args.compile_models:
        doc["compile"][name] = compile_times(name)
        out.write_text(json.dumps(doc, indent=2) + "\n")  # incrementally
    for name in args.models:
        for backend in args.backends:
            if backend == "llama.cpp" and not name.startswith(("gemma", "smollm2")):
                continue
            doc["runs"][f"{name} / {backend}"] = run_pair(name, backend, args)
            out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
