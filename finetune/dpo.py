"""Preference tuning of a LoRA adapter (DPO, or reference-free SimPO) from a pairs file.

``train_dpo(recipe, adapter, pairs, out)`` continues an SFT adapter (``llmapps finetune lora``) on
preference pairs (``llmapps.evaluate.preferences``: prompt, chosen, rejected) and writes a new
adapter folder the ``lora`` strategy, the bench, ``serve`` and the llama.cpp conversion take like
any other: same base, same prompt, same PEFT layout (the parent's LoRA config, trained further).

The policy starts from the parent adapter's weights. The reference of DPO is that same SFT policy,
frozen. Disabling the adapter would give the *base* model, not the SFT policy, so the reference is
not a second model or an adapter switch: since it never changes, its log-probabilities of every
chosen and rejected reply are computed once, before the first step, with the parent's weights
(no gradient, eval mode), and stored beside the checkpoints (``<out>.checkpoints/reference.json``,
keyed by the pairs' SHA-256 and the parent's checksum). Each step then needs one policy forward
pass over the chosen and rejected rows, not two models; a resumed run reads the same numbers, so
the reference is frozen by construction (the tests check it against a fresh computation after
training). TRL's ``precompute_ref_log_probs`` makes the same trade.

Losses (``training.loss``):

- ``dpo`` (Rafailov et al. 2023): ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``
  with ``pi``/``ref`` the summed log-probabilities of the reply tokens;
- ``simpo`` (Meng et al. 2024), reference-free: ``-log sigmoid(beta * (avg_c - avg_r) - gamma)``
  with ``avg`` the mean log-probability per reply token (length-normalised), ``gamma`` a target
  margin. It needs no reference pass at all.

Either loss takes ``rpo_alpha`` (Pang et al. 2024, "Iterative Reasoning Preference Optimization";
TRL's ``DPOConfig.rpo_alpha``): ``rpo_alpha`` times the chosen replies' mean negative
log-likelihood per token is added, so the policy keeps the chosen replies likely while it pushes the
rejected ones down (plain DPO lowers both, which on few pairs shows as shorter, emptier replies).

Only the reply tokens are projected onto the vocabulary (``logits_to_keep`` with a boolean mask, as
the SFT loop does): Gemma 3's LM head is 168M of its 268M parameters and 262,144 wide, and a reply
is about a fifth of a news-riddle example. Chosen and rejected rows of a batch go through one
forward pass (right-padded, no attention mask: exact for a causal model, pads come last).

One loop, the ``Trainer``'s (``llmapps.training``: staged checkpoints that are whole or absent); a
run killed at any point continues with ``resume=True`` from its last checkpoint and ends with the
adapter an uninterrupted run writes (tests/test_dpo.py). The manifest's ``recipe`` names the
parent adapter (path, checksum, base) and the pairs (path, SHA-256, count, sources).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetune.recipe import set_dotted, validate_recipe
from finetune.train import checkpoints_dir as checkpoints_dir
from finetune.train import training_arguments
from llmapps.errors import ConfigError, InputError
from llmapps.settings import Settings, get_settings

log = logging.getLogger(__name__)

DPO_RECIPES_DIR = Path(__file__).resolve().parent / "recipes" / "dpo"
REFERENCE_FILE = "reference.json"

__all__ = [
    "DpoRecipe",
    "DpoResult",
    "DpoTraining",
    "list_dpo_recipes",
    "load_dpo_recipe",
    "pair_logps",
    "preference_loss",
    "train_dpo",
]


class DpoTraining(BaseModel):
    """The preference-tuning hyperparameters (``training:`` of a DPO recipe)."""

    model_config = ConfigDict(extra="forbid")

    loss: Literal["dpo", "simpo"] = "dpo"
    beta: float = Field(0.1, gt=0.0, description="dpo: KL strength; simpo: reward scale (~2)")
    gamma: float = Field(0.5, ge=0.0, description="simpo only: the target reward margin")
    rpo_alpha: float = Field(
        0.0,
        ge=0.0,
        description="weight of the chosen replies' mean NLL added to the loss (RPO; TRL's rpo_alpha)",
    )
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(0, ge=0, description="0: run the epochs")
    batch_size: int = Field(1, ge=1, description="pairs per batch (2x rows: chosen + rejected)")
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(5.0e-5, gt=0.0)
    lr_scheduler: str = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_length: int = Field(640, ge=32)
    seed: int = 0
    save_steps: int = Field(4, ge=1)
    save_total_limit: int = Field(1, ge=1)
    logging_steps: int = Field(1, ge=1)


class DpoRecipe(BaseModel):
    """A DPO recipe: which parent adapter and pairs (both may come from the command line instead),
    and the training settings."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    adapter: str | None = None  # the parent SFT adapter folder
    pairs: str | None = None  # the pairs file
    base_model: str | None = None  # where the base lives, if not where the parent's recipe says
    training: DpoTraining = Field(default_factory=DpoTraining)


@dataclass
class DpoResult:
    adapter: Path
    metrics: dict[str, Any]


def list_dpo_recipes() -> list[Path]:
    """The shipped DPO recipes (``finetune/recipes/dpo/*.yaml``)."""
    return sorted(DPO_RECIPES_DIR.glob("*.yaml"))


def load_dpo_recipe(name_or_path: str | Path, **overrides: Any) -> DpoRecipe:
    """Load and validate a DPO recipe (a path or a shipped name such as ``dpo-gemma-3-270m``);
    ``overrides`` are dotted fields (``training.max_steps=4``)."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        shipped = DPO_RECIPES_DIR / f"{name_or_path}.yaml"
        if not shipped.exists():
            known = ", ".join(p.stem for p in list_dpo_recipes())
            raise ConfigError(
                f"no DPO recipe {str(name_or_path)!r}: give a YAML path or one of: {known}"
            )
        path = shipped
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a DPO recipe must be a YAML mapping")
    set_dotted(raw, overrides)
    return validate_recipe(DpoRecipe, raw, str(path), "DPO recipe")


# ---------------------------------------------------------------- log-probabilities and losses


def pair_logps(
    model: Any, input_ids: Any, labels: Any, *, full_logits: bool = False
) -> tuple[Any, Any]:
    """Summed log-probability of each row's labelled tokens, and their count (two 1-D tensors).

    Only the positions whose next label is not ignored are projected onto the vocabulary;
    ``full_logits=True`` projects every position and selects afterwards (the same numbers, the
    way TRL's ``DPOTrainer`` computes them on CPU: for the training benchmark only).
    """
    import torch
    import torch.nn.functional as F

    from llmapps.training import IGNORE

    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE
    if full_logits:
        logits = model(input_ids=input_ids).logits[keep]
    else:
        logits = model(input_ids=input_ids, logits_to_keep=keep).logits
    logits = logits.reshape(-1, logits.shape[-1]).float()
    wanted = targets[targets != IGNORE]
    token_logp = -F.cross_entropy(logits, wanted, reduction="none")
    rows = keep.nonzero()[:, 0]
    n = input_ids.shape[0]
    sums = torch.zeros(n, dtype=token_logp.dtype, device=token_logp.device).index_add(
        0, rows, token_logp
    )
    counts = torch.bincount(rows, minlength=n).to(token_logp.dtype)
    return sums, counts


def preference_loss(
    training: DpoTraining,
    chosen: Any,
    rejected: Any,
    n_chosen: Any,
    n_rejected: Any,
    ref_chosen: Any,
    ref_rejected: Any,
) -> tuple[Any, dict[str, float]]:
    """The batch's mean loss and its figures (rewards, margin, accuracy)."""
    import torch.nn.functional as F

    if training.loss == "simpo":
        rc = training.beta * chosen / n_chosen.clamp(min=1)
        rr = training.beta * rejected / n_rejected.clamp(min=1)
        logits = rc - rr - training.gamma
    else:
        rc = training.beta * (chosen - ref_chosen)
        rr = training.beta * (rejected - ref_rejected)
        logits = rc - rr
    loss = -F.logsigmoid(logits).mean()
    nll_chosen = -(chosen / n_chosen.clamp(min=1)).mean()
    if training.rpo_alpha:
        loss = loss + training.rpo_alpha * nll_chosen
    stats = {
        "nll_chosen": float(nll_chosen.detach()),
        "rewards_chosen": float(rc.detach().mean()),
        "rewards_rejected": float(rr.detach().mean()),
        "reward_margin": float((rc - rr).detach().mean()),
        "reward_accuracy": float((rc > rr).float().mean()),
    }
    return loss, stats


# ---------------------------------------------------------------- data


def _tokenize_pairs(task: Any, pairs: list[Any], tokenizer: Any, max_length: int) -> list[dict]:
    from finetune.data import tokenize_example

    rows = []
    for p in pairs:
        try:
            c = tokenize_example(task, {**p.prompt, **p.chosen}, tokenizer, max_length)
            r = tokenize_example(task, {**p.prompt, **p.rejected}, tokenizer, max_length)
        except KeyError as err:
            raise InputError(
                f"pair {p.id!r} lacks the field {err} the prompt {task.name!r} needs"
            ) from err
        rows.append(
            {
                "pair_id": p.id,
                "chosen_input_ids": c["input_ids"],
                "chosen_labels": c["labels"],
                "rejected_input_ids": r["input_ids"],
                "rejected_labels": r["labels"],
                "length": max(c["length"], r["length"]),
            }
        )
    return rows


@dataclass
class PairCollator:
    """Batches pairs as one block of rows: the chosen rows, then the rejected ones, right-padded
    (no attention mask: a causal model's real tokens never see the pads after them); the
    reference log-probabilities travel with them."""

    pad_token_id: int
    reference: dict[str, tuple[float, float]]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from llmapps.training import IGNORE, REAL_TOKENS

        seqs = [r["chosen_input_ids"] for r in rows] + [r["rejected_input_ids"] for r in rows]
        labs = [r["chosen_labels"] for r in rows] + [r["rejected_labels"] for r in rows]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labs, strict=True)):
            ids[i, : len(s)] = torch.as_tensor(s)
            labels[i, : len(lab)] = torch.as_tensor(lab)
        ref = [self.reference.get(r["pair_id"], (0.0, 0.0)) for r in rows]
        return {
            "input_ids": ids,
            "labels": labels,
            "ref_logps": torch.tensor(
                [x[0] for x in ref] + [x[1] for x in ref], dtype=torch.float64
            ),
            REAL_TOKENS: sum(len(s) for s in seqs),
        }


def disable_dropout(model: Any) -> int:
    """Set every dropout module's probability to 0; returns how many there were."""
    import torch

    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
            n += 1
    return n


def _reference_logps(
    model: Any, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int
) -> dict[str, tuple[float, float]]:
    import torch

    collate = PairCollator(pad_token_id, {})
    out: dict[str, tuple[float, float]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            b = collate(chunk)
            sums, _ = pair_logps(model, b["input_ids"], b["labels"])
            k = len(chunk)
            for j, r in enumerate(chunk):
                out[r["pair_id"]] = (float(sums[j]), float(sums[k + j]))
    model.train(was_training)
    return out


# ---------------------------------------------------------------- the trainer


def make_dpo_trainer_class(training: DpoTraining) -> type:
    """The project's ``Trainer`` subclass with the preference loss as its ``compute_loss``."""
    import torch

    from llmapps.training import REAL_TOKENS, make_trainer_class

    base: Any = make_trainer_class()

    class DpoTrainer(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, completion_only_logits=True, **kwargs)
            self._figures: dict[str, list[float]] = {}

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            real = inputs.pop(REAL_TOKENS, 0)
            if model.training:
                self.real_tokens += int(real)
            ref = inputs["ref_logps"].to(torch.float32)
            sums, counts = pair_logps(model, inputs["input_ids"], inputs["labels"])
            k = sums.shape[0] // 2
            loss, stats = preference_loss(
                training, sums[:k], sums[k:], counts[:k], counts[k:], ref[:k], ref[k:]
            )
            for name, value in stats.items():
                self._figures.setdefault(name, []).append(value)
            return (loss, {"loss": loss}) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            for name, values in self._figures.items():
                if values and "loss" in logs:
                    logs[name] = sum(values) / len(values)
            if "loss" in logs:
                self._figures = {}
            super().log(logs, start_time)

    return DpoTrainer


def train_dpo(
    recipe: DpoRecipe,
    out: str | Path,
    *,
    adapter: str | Path | None = None,
    pairs: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    settings: Settings | None = None,
) -> DpoResult:
    """Preference-tune the parent adapter on the pairs into the adapter folder ``out``.

    Args:
        recipe: a validated DPO recipe (``load_dpo_recipe``).
        out: the adapter folder to write (checkpoints go to ``<out>.checkpoints``).
        adapter: the parent SFT adapter (default: the recipe's ``adapter``).
        pairs: the pairs file (default: the recipe's ``pairs``).
        resume: continue from the last checkpoint of an interrupted run of the same inputs.
        overwrite: start afresh even if ``<out>.checkpoints`` holds an earlier run's checkpoints.

    Raises:
        ConfigError: no parent or pairs named; a parent that is not a LoRA adapter or fails its
            manifest; nothing to resume; another run's checkpoints.
        InputError: a pairs file that is missing, malformed or lacks the prompt's fields.
    """
    from peft import PeftModel
    from transformers import set_seed

    from finetune.recipe import Recipe
    from finetune.train import _prepare_checkpoints, library_versions, load_base
    from llmapps.adapters import (
        AdapterManifest,
        check_base,
        layout_hash,
        read_manifest,
        write_adapter_folder,
    )
    from llmapps.evaluate.preferences import pairs_sha256, read_pairs
    from llmapps.jsonl import atomic_write
    from llmapps.models.device import pick_device
    from llmapps.training import STAGING, staged_checkpoints
    from prompts import load_task

    settings = settings or get_settings()
    parent_dir = adapter or recipe.adapter
    pairs_path = pairs or recipe.pairs
    if not parent_dir:
        raise ConfigError(
            "no parent adapter: pass --adapter SFT_DIR (or set adapter: in the recipe)"
        )
    if not pairs_path:
        raise ConfigError(
            "no pairs: pass --pairs PAIRS.jsonl (build them with `llmapps finetune pairs`)"
        )
    parent_dir = Path(parent_dir).expanduser().resolve()
    pairs_path = Path(pairs_path).expanduser().resolve()
    parent = read_manifest(parent_dir)
    if parent.method != "lora":
        raise ConfigError(
            f"{parent_dir} is a {parent.method} adapter; preference tuning continues a LoRA adapter"
        )
    the_pairs = read_pairs(pairs_path)
    digest = pairs_sha256(pairs_path)
    t = recipe.training
    out = Path(out).expanduser().resolve()
    root = checkpoints_dir(out)
    recipe_json = recipe.model_dump(mode="json")
    identity = {
        "recipe": {**recipe_json, "adapter": None, "pairs": None},
        "parent_checksum": parent.checksum,
        "pairs_sha256": digest,
    }
    resume_from = _prepare_checkpoints(
        root,
        identity,
        resume=resume,
        overwrite=overwrite,
        record="run.json",
        made_with="another recipe, parent adapter or pairs file; resume with the same ones",
    )

    # a parent that is itself preference-tuned (iterative DPO: sample from it, pair, tune again)
    # carries its own parent's SFT recipe: the prompt layout and LoRA shape come from there
    sft_recipe: Any = parent.recipe
    while isinstance(sft_recipe, dict) and sft_recipe.get("kind") == "preference":
        sft_recipe = sft_recipe.get("parent_recipe")
    try:
        sft = Recipe.model_validate(sft_recipe)
    except ValidationError as err:
        raise ConfigError(
            f"{parent_dir}: its manifest's recipe is not an SFT recipe this version reads ({err.error_count()} "
            "problem(s)); preference-tune an adapter written by `llmapps finetune lora` or "
            "`llmapps finetune dpo`"
        ) from err
    if recipe.base_model:
        sft = sft.model_copy(update={"base_model": recipe.base_model})
    task = load_task(parent.prompt)
    if layout_hash(task.completion) != parent.prompt_sha256:
        raise ConfigError(
            f"the prompt {parent.prompt!r} changed since {parent_dir} was trained; retrain the "
            "SFT adapter first"
        )
    device = pick_device(settings.device)
    set_seed(t.seed)
    base, tokenizer, base_path, four_bit = load_base(sft, settings, device)
    check_base(parent, base_path, adapter=parent_dir)
    model = PeftModel.from_pretrained(base, str(parent_dir), is_trainable=True)
    # dropout off, as TRL's DPOConfig(disable_dropout=True) does: with the SFT recipe's LoRA
    # dropout (0.05 in the full recipe) the policy's log-probs in train mode would differ from the
    # reference's (computed in eval mode), so step 1 would not start at ln 2 and every step's
    # log-ratio would carry dropout noise
    disable_dropout(model)
    rows = _tokenize_pairs(task, the_pairs, tokenizer, t.max_length)

    ref_path = root / REFERENCE_FILE
    reference: dict[str, tuple[float, float]] = {}
    ref_secs = 0.0
    if t.loss == "dpo":
        if ref_path.exists():
            saved = json.loads(ref_path.read_text())
            if saved.get("pairs_sha256") == digest and saved.get("parent") == parent.checksum:
                reference = {k: (v[0], v[1]) for k, v in saved["logps"].items()}
        if len(reference) != len(rows):
            started = time.perf_counter()
            reference = _reference_logps(model, rows, tokenizer.pad_token_id, t.batch_size)
            ref_secs = time.perf_counter() - started
            atomic_write(
                ref_path,
                json.dumps(
                    {
                        "pairs_sha256": digest,
                        "parent": parent.checksum,
                        "logps": {k: list(v) for k, v in reference.items()},
                    }
                ),
            )

    from datasets import Dataset

    train_ds = Dataset.from_list(rows)
    args = training_arguments(
        t,
        root / STAGING,
        device=device,
        progress=progress,
        warmup_steps=t.warmup_steps,
        eval_strategy="no",
    )
    trainer_cls = make_dpo_trainer_class(t)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=PairCollator(tokenizer.pad_token_id, reference),
        processing_class=tokenizer,
        callbacks=[staged_checkpoints(root, t.save_total_limit)],
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    secs = time.perf_counter() - started
    logged = [h for h in trainer.state.log_history if "loss" in h]
    first, last = (logged[0], logged[-1]) if logged else ({}, {})
    steps_now = trainer.state.global_step - (
        int(resume_from.name.split("-")[1]) if resume_from else 0
    )
    pairs_done = steps_now * t.batch_size * t.gradient_accumulation
    sources: dict[str, int] = {}
    for p in the_pairs:
        sources[p.source] = sources.get(p.source, 0) + 1
    metrics = {
        "loss_type": t.loss,
        "steps": trainer.state.global_step,
        "first_logged": {k: v for k, v in first.items() if isinstance(v, (int, float))},
        "last_logged": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "train_seconds_this_session": round(secs, 2),
        "reference_seconds": round(ref_secs, 2),
        "pairs_per_s": round(pairs_done / secs, 4) if secs else None,
        "tokens_per_s": round(trainer.real_tokens / secs, 1) if secs else None,
        "resumed_from": resume_from.name if resume_from else None,
        "pairs": len(the_pairs),
        "device": device,
        "quantized_4bit": four_bit,
    }
    manifest = AdapterManifest(
        method="lora",
        base_model=parent.base_model,
        base_model_sha256=parent.base_model_sha256,
        task=parent.task,
        prompt=parent.prompt,
        prompt_sha256=parent.prompt_sha256,
        recipe={
            "kind": "preference",
            "preference": recipe_json,
            "parent_adapter": {
                "path": str(parent_dir),
                "checksum": parent.checksum,
                "recipe": parent.recipe.get("name")
                or (parent.recipe.get("preference") or {}).get("name"),
            },
            "pairs": {
                "path": str(pairs_path),
                "sha256": digest,
                "count": len(the_pairs),
                "sources": sources,
            },
            "parent_recipe": parent.recipe,
        },
        metrics=metrics,
        versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_adapter_folder(trainer.model, tokenizer, out, manifest)
    last_loss = last.get("loss")
    log.info(
        "adapter written to %s (%s loss %s)",
        out,
        t.loss,
        f"{last_loss:.4f}" if isinstance(last_loss, float) and math.isfinite(last_loss) else "-",
    )
    return DpoResult(adapter=out, metrics=metrics)
