"""The one training loop: the Hugging Face ``Trainer`` with completion-only logits, real-token
throughput and checkpoints that are complete or absent.

Every training job of the project runs through ``make_trainer_class()`` and ``CompletionCollator``:
the tiny models' pretraining and instruction tuning (``llmapps.models.tiny``) and the adapters'
LoRA and prompt tuning (``finetune.train``). Nothing here overrides a private ``Trainer`` method:

- ``compute_loss`` projects only the positions whose next label is not ignored onto the
  vocabulary (``logits_to_keep`` with a boolean mask), the same loss for less work; it matters
  most for Gemma 3, whose 262,144-token LM head is 168M of its 268M parameters (about 20% of a
  news-riddle example is completion). For pretraining every position is labelled, so it is the
  plain causal LM loss;
- ``log`` adds real (non-pad) tokens per second and validation perplexity;
- ``StagedCheckpoints`` (a ``TrainerCallback``): the ``Trainer`` saves into ``<root>/.staging``
  and the callback renames each finished checkpoint into ``<root>``, then keeps the newest
  ``limit``; a kill at any point leaves only whole checkpoints in ``<root>``;
- ``reporting_progress(report)``: inside the block, every trainer made here calls
  ``report(steps_done, total_steps)`` at the start and after each optimizer step, whatever its
  own progress bar does (a surface that trains an adapter on first use shows it training).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IGNORE = -100
REAL_TOKENS = (
    "num_real_tokens"  # batch key: the real (non-pad) tokens, read by the trainer, never the model
)
STAGING = ".staging"
# (steps done, total steps) for whoever shows a training run's progress (``reporting_progress``)
StepReport = Callable[[int, int], None]
_REPORT: contextvars.ContextVar[StepReport | None] = contextvars.ContextVar(
    "llmapps_training_report", default=None
)


@contextlib.contextmanager
def reporting_progress(report: StepReport | None) -> Iterator[None]:
    """Trainers made in this block (this thread) call ``report(done, total)`` as they train."""
    token = _REPORT.set(report)
    try:
        yield
    finally:
        _REPORT.reset(token)


@dataclass
class CompletionCollator:
    """Batches tokenised rows (``input_ids``, ``labels`` with ``IGNORE`` where there is no loss).

    ``padding_free=False``: right-pad to the batch's longest row (labels padded with -100). No
    attention mask is sent unless ``attention_mask=True``: in a causal model a right-padded row's
    real tokens only attend to earlier positions, so pads (all after them) cannot change them, and
    pad positions are neither in the loss nor projected onto the vocabulary. Without a mask the
    attention runs as a plain causal one (SDPA's fast path) instead of materialising a mask:
    identical loss, less work.

    ``padding_free=True``: concatenate the batch into one row with ``position_ids`` restarting at
    every example and no attention mask, so no pad token is computed; transformers turns the
    position ids into varlen flash attention on a GPU, but on CPU into a dense block-diagonal mask
    over the whole row (about twice the time of a padded batch of short rows here), so use it with
    flash attention only.

    Every batch carries ``num_real_tokens`` (an int), which the trainer removes before the
    forward pass.
    """

    pad_token_id: int
    padding_free: bool = False
    attention_mask: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        real = sum(len(r["input_ids"]) for r in rows)
        if self.padding_free:
            ids = [t for r in rows for t in r["input_ids"]]
            labels: list[int] = []
            for r in rows:  # the first token of each example has no predecessor in it
                labels += [IGNORE, *r["labels"][1:]]
            pos = [i for r in rows for i in range(len(r["input_ids"]))]
            return {
                "input_ids": torch.tensor([ids]),
                "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([pos]),
                REAL_TOKENS: real,
            }
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels_t = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r["input_ids"])] = torch.as_tensor(r["input_ids"])
            labels_t[i, : len(r["labels"])] = torch.as_tensor(r["labels"])
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels_t, REAL_TOKENS: real}
        if self.attention_mask:
            lengths = torch.tensor([len(r["input_ids"]) for r in rows])
            batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return batch


def last_checkpoint(folder: Path) -> Path | None:
    """The highest-step checkpoint in ``folder`` (only whole ones are ever renamed there)."""
    if not folder.is_dir():
        return None
    steps = [
        (int(p.name.split("-")[1]), p)
        for p in folder.iterdir()
        if p.is_dir()
        and p.name.startswith("checkpoint-")
        and p.name.split("-")[1].isdigit()
        and (p / "trainer_state.json").exists()
    ]
    return max(steps)[1] if steps else None


def make_trainer_class() -> type:
    """The ``Trainer`` subclass (built lazily so importing this module stays light)."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class CompletionTrainer(Trainer):  # type: ignore[misc]
        """``Trainer`` with completion-only logits and real-token throughput."""

        def __init__(self, *args: Any, completion_only_logits: bool = True, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.completion_only_logits = completion_only_logits
            self.model_accepts_loss_kwargs = False  # we return a mean loss; Trainer scales for GA
            self.real_tokens = 0
            self.started = time.perf_counter()
            report = _REPORT.get()
            if report is not None:
                self.add_callback(_step_reports(report))

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            real = inputs.pop(REAL_TOKENS, None)  # a count for us, not a model input
            if model.training:
                if real is None:  # another collator: its mask, or every position
                    mask = inputs.get("attention_mask")
                    real = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
                self.real_tokens += int(real)
            if not self.completion_only_logits:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # Evaluation asks for outputs too (return_outputs=True) and gets the kept logits only:
            # Trainer.evaluate reads the loss, and full logits of Gemma 3's 262k-token vocabulary
            # would be 1 GB a batch of 4 x 500 tokens.
            labels = inputs["labels"]
            targets = labels[:, 1:]
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = targets != IGNORE
            forward = {k: v for k, v in inputs.items() if k != "labels"}
            logits = model(**forward, logits_to_keep=keep).logits
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets[targets != IGNORE]
            )
            return (loss, {"loss": loss, "logits": logits}) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                secs = time.perf_counter() - self.started
                logs["tokens_per_s"] = round(self.real_tokens / secs, 1) if secs > 0 else 0.0
            if "eval_loss" in logs:
                logs["eval_perplexity"] = round(math.exp(min(50.0, logs["eval_loss"])), 3)
            super().log(
                {k: round(v, 5) if isinstance(v, float) else v for k, v in logs.items()}, start_time
            )

    return CompletionTrainer


def staged_checkpoints(root: Path, limit: int) -> Any:
    """A ``TrainerCallback`` that moves each checkpoint the ``Trainer`` saved into
    ``root / ".staging"`` (its ``output_dir``) to ``root`` once whole, keeping the newest ``limit``."""
    from transformers import TrainerCallback

    class StagedCheckpoints(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            shutil.rmtree(root / STAGING, ignore_errors=True)  # a checkpoint a kill cut short

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            name = f"checkpoint-{state.global_step}"
            staged, final = Path(args.output_dir) / name, root / name
            if not staged.is_dir():
                return
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)  # complete or absent, never half
            done = sorted(
                (int(p.name.split("-")[1]), p)
                for p in root.glob("checkpoint-*")
                if p.name.split("-")[1].isdigit()
            )
            for _, old in done[:-limit]:
                shutil.rmtree(old, ignore_errors=True)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            shutil.rmtree(root / STAGING, ignore_errors=True)  # empty: every checkpoint moved out

    return StagedCheckpoints()


def _step_reports(report: StepReport) -> Any:
    """A ``TrainerCallback`` calling ``report(done, total)``; a failing display never stops
    training."""
    from transformers import TrainerCallback

    def call(state: Any) -> None:
        try:
            report(int(state.global_step), int(state.max_steps or 0))
        except Exception:
            log.debug("training progress report failed", exc_info=True)

    class StepReports(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            call(state)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            call(state)

    return StepReports()
