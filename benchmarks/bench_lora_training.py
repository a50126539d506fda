"""LoRA training throughput: finetune's trainer against a naive HF Trainer + PEFT, side by side.

Both runs use the same base (default: Gemma 3 270M, the packaged real model), data (the first
``--examples`` of the bundled train split in the news-riddle prompt layout), LoRA config (the
recipe's), optimiser settings, batch size and number of steps (``--epochs`` over the examples).
They differ only in what the issue asks to compare:

- **naive**: ``transformers.Trainer`` + PEFT, random batches, each example padded to the longest
  in its batch (``DataCollatorForSeq2Seq``), the model's own loss over full-vocabulary logits;
- **finetune**: ``finetune.train``'s ``SftTrainer`` with the recipe's batching (tiny:
  length-grouped batches, little padding, right-padded rows with no attention mask so SDPA runs
  plain causal attention) and completion-only logits (only completion positions are projected
  onto the vocabulary).

Throughput is tokens/s of real (non-pad) tokens; after training both are evaluated on the
validation split (the naive run with the model's own full-logits loss, ours with completion-only
logits: the same quantity). Each run is a fresh subprocess, so its peak RSS (sampled by a thread)
is its own. Prints a table and writes JSON beside this file::

    OMP_NUM_THREADS=2 python benchmarks/bench_lora_training.py            # Gemma 3 270M, 64 examples, 1 epoch
    python benchmarks/bench_lora_training.py --recipe tiny --base-model tiny-base --examples 95
    python benchmarks/bench_lora_training.py --device cuda                 # bf16 on a CUDA GPU
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class CountingCollator:
    """Wraps a collator and counts the real (non-pad) tokens of every batch it builds."""

    def __init__(self, inner: Any, pad_id: int) -> None:
        self.inner, self.pad_id, self.real = inner, pad_id, 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        self.real += sum(len(r["input_ids"]) for r in rows)
        return self.inner(rows)


def run(mode: str, args: argparse.Namespace, data: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from finetune.recipe import load_recipe
    from finetune.train import (
        load_base,
        make_collator,
        make_trainer_class,
        peft_model,
        sampling_strategy,
    )
    from llmapps.settings import load_settings

    recipe = load_recipe(
        args.recipe, base_model=args.base_model, **{"training.max_length": args.max_length}
    )
    set_seed(recipe.training.seed)
    base, tok, _, _ = load_base(recipe, load_settings(device=args.device), args.device)
    model = peft_model(recipe, base)
    cuda = args.device.startswith("cuda")
    targs = TrainingArguments(
        output_dir=str(tmp / mode),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=recipe.training.learning_rate,
        lr_scheduler_type=recipe.training.lr_scheduler,
        warmup_steps=recipe.training.warmup_ratio,
        seed=recipe.training.seed,
        data_seed=recipe.training.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10_000,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        dataloader_num_workers=0,
        train_sampling_strategy=sampling_strategy(recipe) if mode == "finetune" else "random",
    )
    if mode == "naive":
        inner: Any = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
        collator = CountingCollator(
            lambda rows: inner([{k: r[k] for k in ("input_ids", "labels")} for r in rows]),
            tok.pad_token_id,
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=data["train"],
            eval_dataset=data["validation"],
            data_collator=collator,
            processing_class=tok,
        )
    else:
        collator = CountingCollator(make_collator(recipe, tok), tok.pad_token_id)
        trainer = make_trainer_class()(
            model=model,
            args=targs,
            train_dataset=data["train"],
            eval_dataset=data["validation"],
            data_collator=collator,
            processing_class=tok,
            completion_only_logits=True,
        )
    from llmapps.bench.measure import PeakMemory

    if cuda:
        torch.cuda.synchronize()
    with PeakMemory() as mem:
        started = time.perf_counter()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - started
    real = collator.real
    collator.real = 0
    eval_loss = trainer.evaluate()["eval_loss"]
    return {
        "mode": mode,
        "seconds": secs,
        "steps": trainer.state.global_step,
        "real_tokens": real,
        "tokens_per_s": real / secs,
        "peak_rss_mb": mem.peak_mb,
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipe", default="gemma-3-270m")
    p.add_argument("--base-model", default="gemma-3-270m")
    p.add_argument(
        "--examples", type=int, default=64, help="the first N examples of the train split"
    )
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument(
        "--repeats", type=int, default=1, help="alternating runs of each; medians reported"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(HERE / "results" / "bench_lora_training.json"))
    p.add_argument(
        "--only", choices=("naive", "finetune"), help=argparse.SUPPRESS
    )  # one run, in a child
    args = p.parse_args()
    args.steps = max(1, math.ceil(args.examples * args.epochs / args.batch_size))

    import subprocess
    import sys
    import tempfile

    import torch
    from rich.console import Console
    from rich.table import Table

    if args.only:
        from transformers import AutoTokenizer

        from finetune.data import build_dataset, read_examples
        from llmapps.models.local import resolve_model_path
        from prompts import load_task

        task = load_task("news_riddle/one_step")
        tok = AutoTokenizer.from_pretrained(resolve_model_path(args.base_model))
        rows = {
            "train": read_examples("train", task)[: args.examples],
            "validation": read_examples("validation", task),
        }
        data = {s: build_dataset(task, r, tok, args.max_length) for s, r in rows.items()}
        with tempfile.TemporaryDirectory() as tmp:
            Path(args.out).write_text(json.dumps(run(args.only, args, data, Path(tmp))))
        return 0

    results: dict[str, list[dict[str, Any]]] = {"naive": [], "finetune": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for mode in ("naive", "finetune"):  # each in a fresh process: its peak RSS is its own
                child = Path(tmp) / f"{mode}.json"
                argv = [
                    f"--{k.replace('_', '-')}={v}"
                    for k, v in vars(args).items()
                    if k not in ("out", "only", "steps", "repeats")
                ]
                subprocess.run(
                    [sys.executable, __file__, *argv, "--only", mode, "--out", str(child)],
                    check=True,
                )
                results[mode].append(json.loads(child.read_text()))
    keys = ("tokens_per_s", "seconds", "eval_loss", "real_tokens", "peak_rss_mb")
    med = {m: {k: statistics.median(r[k] for r in rs) for k in keys} for m, rs in results.items()}
    speedup = med["finetune"]["tokens_per_s"] / med["naive"]["tokens_per_s"]
    loss_gap = (
        abs(med["finetune"]["eval_loss"] - med["naive"]["eval_loss"]) / med["naive"]["eval_loss"]
    )
    table = Table(
        title=f"LoRA training, {args.steps} steps x {args.batch_size} rows ({args.examples} examples, "
        f"{args.epochs:g} epoch), {args.base_model} on {args.device}"
    )
    for col in (
        "run",
        "real tokens",
        "seconds",
        "real tokens/s",
        "peak RSS MB",
        "validation loss",
        "ratio",
    ):
        table.add_column(col)
    for m in ("naive", "finetune"):
        r = med[m]
        ratio = r["tokens_per_s"] / med["naive"]["tokens_per_s"]
        table.add_row(
            m,
            f"{r['real_tokens']:.0f}",
            f"{r['seconds']:.1f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['eval_loss']:.4f}",
            f"{ratio:.2f}x",
        )
    console = Console()
    console.print(table)
    console.print(
        f"speed-up {speedup:.2f}x (target >= 2x); validation loss gap {100 * loss_gap:.2f}% (target <= 2%)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "config": {**vars(args), "torch_threads": torch.get_num_threads()},
                "runs": results,
                "median": med,
                "speedup": speedup,
                "eval_loss_gap": loss_gap,
                "meets_targets": speedup >= 2.0 and loss_gap <= 0.02,
            },
            indent=2,
        )
    )
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
