"""Which CPU training settings are fastest for LoRA on Gemma 3 270M: step time, same batches.

Settings, each one training step (forward + backward) on the same length-grouped batches of the
bundled train split, **interleaved step by step** so each sees the same machine load (a shared
machine's load swings within minutes; one setting after the other would measure the load):

- ``ours``: float32, completion-only logits (what ``finetune.train`` does);
- ``full``: the model's own loss over full-vocabulary logits;
- ``ours+bf16``: bf16 autocast; ``ours+gc``: gradient checkpointing; ``ours+t1``: one thread.

Round 0 warms up and is not counted. ``finetune/train.py`` (``_precision``) quotes the result::

    OMP_NUM_THREADS=2 python benchmarks/bench_lora_settings.py --configs ours,full,ours+bf16,ours+gc --rounds 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base-model", default="gemma-3-270m")
    p.add_argument("--configs", default="ours,full,ours+bf16,ours+gc")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "bench_lora_settings.json"))
    args = p.parse_args()

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.data import CompletionCollator, build_dataset, read_examples
    from llmapps.models.local import resolve_model_path
    from prompts import load_task

    path = resolve_model_path(args.base_model)
    task = load_task("news_riddle/one_step")
    tok = AutoTokenizer.from_pretrained(path)
    rows = sorted(
        build_dataset(task, read_examples("train", task), tok, 1024), key=lambda r: r["length"]
    )
    collate = CompletionCollator(tok.pad_token_id)
    batches = [collate(rows[i * 20 : i * 20 + args.batch_size]) for i in range(1, 4)]
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        ),
    )
    model.train()

    def loss_of(b: dict, completion_only: bool) -> torch.Tensor:
        if not completion_only:
            return model(input_ids=b["input_ids"], labels=b["labels"]).loss
        targets = b["labels"][:, 1:]
        keep = torch.zeros_like(b["labels"], dtype=torch.bool)
        keep[:, :-1] = targets != -100
        logits = model(input_ids=b["input_ids"], logits_to_keep=keep).logits
        return F.cross_entropy(logits.float(), targets[targets != -100])

    configs = args.configs.split(",")
    res: dict[str, dict] = {c: {"seconds": [], "tokens": 0} for c in configs}
    threads = torch.get_num_threads()
    for r in range(args.rounds + 1):
        for c in configs:
            opts = set(c.split("+"))
            torch.set_num_threads(1 if "t1" in opts else threads)
            if "gc" in opts:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
                model.enable_input_require_grads()
            b = batches[r % len(batches)]
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in opts):
                loss = loss_of(b, "full" not in opts)
            loss.backward()
            model.zero_grad(set_to_none=True)
            secs = time.perf_counter() - started
            if "gc" in opts:
                model.gradient_checkpointing_disable()
            print(f"round {r} {c}: {secs:.1f} s, loss {loss.item():.4f}", flush=True)
            if r:
                res[c]["seconds"].append(round(secs, 2))
                res[c]["tokens"] += int(b["input_ids"].numel())
    for c in configs:
        res[c]["tokens_per_s"] = round(res[c]["tokens"] / sum(res[c]["seconds"]), 1)
        res[c]["slowdown_vs_" + configs[0]] = round(
            sum(res[c]["seconds"]) / sum(res[configs[0]]["seconds"]), 3
        )
    print(json.dumps(res, indent=1))
    Path(args.out).write_text(
        json.dumps({"config": vars(args), "threads": threads, "results": res}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
