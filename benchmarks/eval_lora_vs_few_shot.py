"""Evidence for the ``lora`` strategy: the LoRA-tuned base against the same base with ``few-shot``.

On the bundled test split of news-riddle, for each strategy:

- **perplexity of the reference riddles**: the model is given its own prompt (lora: the
  zero-example layout; few-shot: the layout with as many train examples as fit, in bank order, as
  the few-shot strategy packs them) followed by the reference summary and ``[Riddle]:``; the
  perplexity is over the reference riddle's tokens. Also over the whole reference completion.
- **ROUGE-L** (rouge-score, F-measure, stemmed) of the generated riddle and summary against the
  references, from the real chains (``load_chain("news-riddle", strategy=...)``), greedy.

Small and local on purpose (the general evaluation module lives in ``llmapps/evaluate``)::

    python benchmarks/eval_lora_vs_few_shot.py      # tiny-base + tiny adapter (trained if missing)
    python benchmarks/eval_lora_vs_few_shot.py --adapter DIR --base-model DIR
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def nll(lm: Any, context: str, target: str) -> tuple[float, int]:
    """Summed negative log-likelihood of ``target``'s tokens after ``context``, and their count."""
    import torch

    tok = lm.tokenizer
    c_ids = tok(context, add_special_tokens=True)["input_ids"]
    t_ids = tok(target, add_special_tokens=False)["input_ids"]
    ids = (c_ids + t_ids)[-lm.context_length :]
    n = len(t_ids)
    x = torch.tensor([ids], device=lm.model.device)
    with torch.inference_mode():
        logits = lm.model(input_ids=x).logits[0, -len(ids) :].float()
    logp = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
    return float(-logp.gather(1, x[0, -n:, None]).sum()), n


def few_shot_prompt(task: Any, lm: Any, inputs: dict[str, Any], reserve: int) -> str:
    """The few-shot prompt: train examples in bank order while they fit beside ``reserve`` tokens."""
    chosen: list[dict[str, Any]] = []
    for ex in task.examples:
        trial = task.completion.render(inputs, [*chosen, ex])
        if lm.count_tokens(trial) + reserve > lm.context_length:
            break
        chosen.append(ex)
    return task.completion.render(inputs, chosen)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--adapter", help="adapter folder (default: the demo adapter, trained if missing)"
    )
    p.add_argument("--base-model", default="tiny-base")
    p.add_argument("--limit", type=int, default=None, help="first N test samples")
    p.add_argument("--out", default=str(HERE / "results" / "lora_vs_few_shot.json"))
    args = p.parse_args()

    from rich.console import Console
    from rich.table import Table
    from rouge_score import rouge_scorer

    from chains.news_data import examples, samples
    from llmapps.apps import load_chain
    from llmapps.models.local import load_local_model
    from llmapps.settings import get_settings
    from llmapps.strategies.lora import LoraStrategy, ensure_demo_adapter
    from prompts import load_task

    console = Console()
    settings = get_settings()
    adapter = args.adapter or str(ensure_demo_adapter(settings))
    test = samples("test")[: args.limit]
    task = load_task("news_riddle/one_step", examples("train"))
    lora = LoraStrategy(adapter=adapter, base_model=args.base_model if args.adapter else None)
    lora_lm = lora.scoring_model()
    base_lm = load_local_model(args.base_model)

    ppl: dict[str, dict[str, list[float]]] = {
        m: {"riddle": [], "completion": []} for m in ("lora", "few-shot")
    }
    for s in test:
        inputs = {"title": s["title"], "text": s["text"]}
        head = f" {s['reference_summary']}\n[Riddle]:"
        riddle = f" {s['reference_riddle']}"
        completion = f"{head}{riddle}\n[Answer]: {s['reference_answer']}"
        reserve = base_lm.count_tokens(completion) + 8
        prompts = {
            "lora": LoraStrategy.prompt_for(task, inputs),
            "few-shot": few_shot_prompt(task, base_lm, inputs, reserve),
        }
        for mode, lm in (("lora", lora_lm), ("few-shot", base_lm)):
            ppl[mode]["riddle"].append(nll(lm, prompts[mode] + head, riddle))  # type: ignore[arg-type]
            ppl[mode]["completion"].append(nll(lm, prompts[mode], completion))  # type: ignore[arg-type]

    def corpus_ppl(pairs: list[Any]) -> float:
        return math.exp(sum(a for a, _ in pairs) / sum(n for _, n in pairs))

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    inputs = [{"id": s["id"], "title": s["title"], "text": s["text"]} for s in test]
    outputs = {
        "lora": load_chain("news-riddle", strategy="lora", adapter=adapter).batch(inputs),
        "few-shot": load_chain(
            "news-riddle", strategy="few-shot", base_model=args.base_model
        ).batch(inputs),
    }
    report: dict[str, Any] = {
        "adapter": adapter,
        "base_model": args.base_model,
        "samples": len(test),
        "strategies": {},
    }
    table = Table(
        title=f"news-riddle test split ({len(test)} articles): lora vs few-shot on {args.base_model}"
    )
    for col in (
        "strategy",
        "riddle ppl (ref)",
        "completion ppl (ref)",
        "ROUGE-L riddle",
        "ROUGE-L summary",
        "valid",
    ):
        table.add_column(col)
    for mode in ("lora", "few-shot"):
        outs = outputs[mode]
        rl_r = [
            scorer.score(s["reference_riddle"], o.get("riddle", ""))["rougeL"].fmeasure
            for s, o in zip(test, outs, strict=True)
        ]
        rl_s = [
            scorer.score(s["reference_summary"], o.get("summary", ""))["rougeL"].fmeasure
            for s, o in zip(test, outs, strict=True)
        ]
        row = {
            "riddle_perplexity": corpus_ppl(ppl[mode]["riddle"]),
            "completion_perplexity": corpus_ppl(ppl[mode]["completion"]),
            "rougeL_riddle": statistics.mean(rl_r),
            "rougeL_summary": statistics.mean(rl_s),
            "valid": sum(1 for o in outs if o.get("valid")) / len(outs),
            "examples": [
                {"id": s["id"], "riddle": o.get("riddle", ""), "summary": o.get("summary", "")}
                for s, o in zip(test[:3], outs[:3], strict=False)
            ],
        }
        report["strategies"][mode] = row
        table.add_row(
            mode,
            f"{row['riddle_perplexity']:.1f}",
            f"{row['completion_perplexity']:.1f}",
            f"{row['rougeL_riddle']:.3f}",
            f"{row['rougeL_summary']:.3f}",
            f"{row['valid']:.0%}",
        )
    console.print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
