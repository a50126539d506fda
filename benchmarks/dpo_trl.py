"""TRL's ``DPOTrainer`` as a side of ``bench_dpo_training.py``, called the way its users call it.

The policy is the parent SFT adapter loaded trainable (``PeftModel.from_pretrained``); TRL then
copies it into a frozen ``ref`` adapter, so its reference is the SFT policy, as ours is. Pairs go
in as TRL's standard preference rows (``prompt``, ``chosen``, ``rejected`` strings), rendered by
the same prompt file our trainer reads (``finetune.data.split_example``); TRL tokenizes them and
appends the end token, as ours does. To do the same work as our loop, the settings match it:
fp32 on the CPU, one pair per step, AdamW at a constant learning rate, no weight decay, no
gradient clipping, sigmoid (DPO) loss with the same beta, the pairs in order
(``train_sampling_strategy="sequential"``), and the reference log-probabilities computed once
before training (``precompute_ref_log_probs=True``; our loop does the same). Only the optimizer
steps are timed (``on_train_begin`` to ``on_train_end``); the trainer is rebuilt from the parent's
weights before every run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import harness


def preference_rows(adapter: Path, pairs: Path, tokenizer: Any, max_length: int) -> list[dict]:
    """TRL's standard (non-conversational) rows for the pairs, in our prompt's layout, the
    article shortened as our trainer shortens it to fit ``max_length``."""
    from finetune.data import fitted_example
    from llmapps.adapters import read_manifest
    from llmapps.evaluate.preferences import read_pairs
    from prompts import load_task

    task = load_task(read_manifest(adapter).prompt)
    rows = []
    for p in read_pairs(pairs):
        prompt, chosen = fitted_example(task, {**p.prompt, **p.chosen}, tokenizer, max_length)
        again, rejected = fitted_example(task, {**p.prompt, **p.rejected}, tokenizer, max_length)
        prompt = min(prompt, again, key=len)  # the shorter fit serves both replies
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


class TrlSide:
    """One side: a fresh ``DPOTrainer`` on the parent adapter per run, ``steps`` optimizer steps."""

    def __init__(self, adapter: Path, pairs: Path, *, steps: int, max_length: int, beta: float):
        from datasets import Dataset
        from transformers import AutoTokenizer

        from llmapps.adapters import read_manifest
        from llmapps.models.local import resolve_model_path
        from llmapps.settings import get_settings

        self.adapter, self.steps, self.max_length, self.beta = adapter, steps, max_length, beta
        path = resolve_model_path(read_manifest(adapter).base_model, get_settings())
        tok = AutoTokenizer.from_pretrained(path)
        self.dataset = Dataset.from_list(preference_rows(adapter, pairs, tok, max_length))
        self.out = Path(tempfile.mkdtemp(prefix="bench-dpo-trl-"))

    def _trainer(self) -> Any:
        from peft import PeftModel
        from transformers import TrainerCallback
        from trl import DPOConfig, DPOTrainer

        from llmapps.adapters import read_manifest
        from llmapps.models.local import load_pretrained, resolve_model_path
        from llmapps.settings import get_settings

        settings = get_settings()
        base, tok = load_pretrained(
            resolve_model_path(read_manifest(self.adapter).base_model, settings),
            "cpu",
            "float32",
            settings,
        )
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = PeftModel.from_pretrained(base, str(self.adapter), is_trainable=True)
        config = DPOConfig(
            output_dir=str(self.out),
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=1,
            max_steps=self.steps,
            learning_rate=2e-4,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=0.0,
            beta=self.beta,
            loss_type=["sigmoid"],
            max_length=self.max_length,
            precompute_ref_log_probs=True,
            train_sampling_strategy="sequential",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            disable_tqdm=True,
        )
        clock: dict[str, float] = {}

        class Clock(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
                clock["begin"] = time.perf_counter()

            def on_train_end(self, *args: Any, **kwargs: Any) -> None:
                clock["end"] = time.perf_counter()

        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=self.dataset,
            processing_class=tok,
            callbacks=[Clock()],
        )
        return trainer, clock

    def __call__(self) -> harness.Run:
        import torch

        torch.manual_seed(0)
        trainer, clock = self._trainer()
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return harness.Run(
            work=float(self.steps),
            seconds=clock["end"] - clock["begin"],
            info={"quality": {"final_loss": round(float(losses[-1]), 5)}},
        )
