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
logits: the same quantity). On ``benchmarks/harness.py``: each side lives in its own process
(``harness.ChildSide``: its peak RSS is its own), the two interleaved over the repeats, each run
training a fresh base; the figure is real tokens/s of ``trainer.train()`` alone, quality the
validation loss. Writes ``results/bench_lora_training.json``::

    OMP_NUM_THREADS=2 python benchmarks/bench_lora_training.py            # Gemma 3 270M, 64 examples, 1 epoch
    python benchmarks/bench_lora_training.py --recipe tiny --base-model tiny-base --examples 95
    python benchmarks/bench_lora_training.py --device cuda                 # bf16 on a CUDA GPU
    python benchmarks/bench_lora_training.py --quick     # tiny-base, 8 examples, 2 steps
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

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
        trainer_cls: Any = Trainer
        extra: dict[str, Any] = {}
    else:
        collator = CountingCollator(make_collator(recipe, tok), tok.pad_token_id)
        trainer_cls, extra = make_trainer_class(), {"completion_only_logits": True}
    trainer = trainer_cls(
        model=model,
        args=targs,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        processing_class=tok,
        **extra,
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
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss),
    }


def make_side(mode: str, args: argparse.Namespace) -> Callable[[], harness.Run]:
    """The data, built once; a function training ``mode`` from a fresh base each call."""
    import tempfile

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

    def one() -> harness.Run:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(mode, args, data, Path(tmp))
        return harness.Run(
            work=r["real_tokens"],
            seconds=r["seconds"],  # trainer.train() only: not the load, not the evaluation
            info={
                "quality": {"validation loss": round(r["eval_loss"], 4)},
                "dtype": r["dtype"],
                "steps": r["steps"],
                "peak_rss_sampled_mb": r["peak_rss_mb"],
            },
        )

    return one


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--device", default="cpu")
    p.add_argument("--side", choices=("naive", "finetune"), help=argparse.SUPPRESS)
    harness.add_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        args.recipe, args.base_model, args.examples, args.max_length = "tiny", "tiny-base", 8, 512
    args.steps = max(1, math.ceil(args.examples * args.epochs / args.batch_size))
    if args.side:
        return harness.serve_side(make_side(args.side, args))

    import sys

    import torch

    flags = [
        f"--{k}={getattr(args, k.replace('-', '_'))}"
        for k in ("recipe", "base-model", "examples", "epochs", "batch-size", "max-length")
    ] + [f"--device={args.device}"]
    ours = harness.ChildSide([sys.executable, __file__, *flags, "--side", "finetune"])
    naive = harness.ChildSide([sys.executable, __file__, *flags, "--side", "naive"])
    common = {"threads": torch.get_num_threads(), "batch_size": args.batch_size}
    try:
        m = harness.measure(
            [
                harness.Side(
                    "ours: finetune SftTrainer",
                    ours,
                    role="ours",
                    note="length-grouped batches, completion-only logits",
                    **common,
                ),
                harness.Side(
                    "HF Trainer + PEFT",
                    naive,
                    note="random batches padded to the longest, full-vocabulary logits",
                    **common,
                ),
            ],
            harness.Metric("real tokens/s"),
            repeats=args.repeats,
            warmup=args.warmup,
            progress=print,
        )
    finally:
        ours.close()
        naive.close()
    config = {
        k: getattr(args, k)
        for k in ("recipe", "base_model", "examples", "epochs", "batch_size", "max_length")
    } | {"device": args.device, "steps": args.steps}
    harness.finish(
        "bench_lora_training",
        m,
        args,
        config=config,
        what=f"LoRA training on {args.base_model}, {args.steps} steps of {args.batch_size} "
        f"({args.examples} examples), each run from a fresh base in the side's own process",
        argv=argv,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
