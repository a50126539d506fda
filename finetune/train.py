"""Supervised fine-tuning with PEFT (LoRA or prompt tuning) through the Hugging Face ``Trainer``.

``train(recipe, out)`` formats the recipe's data with the prompt the ``lora`` strategy uses (see
``finetune.data``), wraps the base in a PEFT model, trains seeded, evaluates on the validation
split every epoch (loss and perplexity), keeps checkpoints, and writes the adapter folder: PEFT's
files plus the manifest the ``lora`` strategy checks (``llmapps.adapters``, the contract both
sides share). ``train_recipe`` is the same run behind the ``AdapterTrainer`` signature, registered
as the ``peft`` trainer (entry point ``llmapps.trainers``) so the core can train a demo adapter
without importing this package.

Throughput, beyond the ``Trainer`` defaults:

- ``length-grouped`` batching (the ``Trainer``'s length-grouped sampler): little padding, and
  right-padded rows sent without an attention mask (exact for a causal model: pads come after
  every real token), so attention runs as plain causal SDPA; the fastest mode on CPU;
- ``padding-free`` batching: each batch packed into one row with restarting position ids (for
  varlen flash attention on a GPU; on CPU SDPA gets a dense block-diagonal mask: about 2x slower);
- ``completion_only_logits``: the loss is on completion tokens only, so only those positions are
  projected onto the vocabulary (``logits_to_keep`` with a boolean mask: the hidden states where
  the next label is not ignored), the same loss for less work. It matters most for Gemma 3, whose
  262,144-token LM head is 168M of its 268M parameters: about 20% of a news-riddle example is
  completion, so the head runs on a fifth of the positions, in training and in evaluation.

One training loop for every job, the ``Trainer``'s with ``llmapps.training``'s subclass and
checkpoint callback (the tiny models are pretrained by the same one). TRL's ``SFTTrainer`` does not
serve, so the dependency is gone: in trl 1.16 its fused LM head scores only labelled positions on
Triton (GPU) devices, but on CPU it projects every position onto the vocabulary (in chunks) and
computes entropy and top-1 accuracy on top, the very work completion-only logits avoid.

Durability: checkpoints are written into ``<out>.checkpoints/.staging`` and renamed into place, and
the adapter into a staging folder renamed to ``out``, so a folder that looks complete is complete.
A run killed at any point continues with ``resume=True`` from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.recipe import Recipe
from llmapps.errors import ConfigError, ModelNotFoundError
from llmapps.settings import Settings, get_settings
from llmapps.training import STAGING, last_checkpoint, make_trainer_class, staged_checkpoints

__all__ = [
    "TrainResult",
    "checkpoints_dir",
    "last_checkpoint",
    "load_base",
    "make_collator",
    "make_trainer_class",
    "peft_model",
    "sampling_strategy",
    "train",
    "train_recipe",
]

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from typing_extensions import Unpack

    from llmapps.adapters import TrainOptions

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced."""

    adapter: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def training_arguments(
    t: Any, output_dir: Path, *, device: str, progress: bool, **extra: Any
) -> Any:
    """The ``TrainingArguments`` of a recipe's ``training`` section ``t`` (SFT's and DPO's alike):
    its budget, optimiser, schedule and seeds, checkpoints every ``save_steps`` into
    ``output_dir`` (``staged_checkpoints`` keeps the newest ``t.save_total_limit``), no reporting;
    ``extra`` adds or replaces arguments (evaluation, precision, warm-up, sampling)."""
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "weight_decay": t.weight_decay,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": None,
        "logging_steps": t.logging_steps,
        "seed": t.seed,
        "data_seed": t.seed,
        "use_cpu": device == "cpu",
        "remove_unused_columns": False,
        "report_to": [],
        "disable_tqdm": not progress,
        "dataloader_num_workers": 0,
    }
    return TrainingArguments(**{**kwargs, **extra})


def checkpoints_dir(out: Path) -> Path:
    """Where a run writing the adapter ``out`` keeps its checkpoints (``<out>.checkpoints``)."""
    return out.with_name(out.name + ".checkpoints")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on (recorded in the manifest)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "peft",
        "datasets",
        "accelerate",
        "bitsandbytes",
        "llmapps",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _wants_4bit(recipe: Recipe, device: str) -> bool:
    import importlib.util

    q = recipe.quantization.load_in_4bit
    available = device.startswith("cuda") and importlib.util.find_spec("bitsandbytes") is not None
    if q is True and not available:
        raise ConfigError(
            "quantization.load_in_4bit: true needs a CUDA GPU and bitsandbytes "
            "(pip install 'llmapps[gpu]'); set it to auto or false to train unquantized"
        )
    return bool(q is True or (q == "auto" and available))


def _precision(recipe: Recipe, device: str) -> str:
    import torch

    p = recipe.training.precision
    # CPU: float32. Measured on Gemma 3 270M (LoRA r=16 on all linear layers, one batch of 2 x ~430
    # tokens, the settings interleaved step by step on a shared 2-core machine): float32 106.6 s a
    # step, bf16 autocast 142.0 s (1.33x slower; the quieter run: 61-65 against 89 tokens/s),
    # gradient checkpointing 221.2 s (2.1x slower: it recomputes every layer's forward, and the
    # 7.6 GB peak of a batch of 4 fits in RAM), full-vocabulary logits 199.2 s (1.87x slower than
    # completion-only). Threads: torch's default (one per core); not measured apart, the machine
    # was too loaded for a fair figure.
    if p == "auto":
        return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    if p in ("bf16", "fp16") and not device.startswith("cuda"):
        raise ConfigError(f"training.precision: {p} needs a CUDA GPU here; use auto or float32")
    return p


def load_base(recipe: Recipe, settings: Settings, device: str) -> tuple[Any, Any, str, bool]:
    """The base model (4-bit when QLoRA applies), its tokenizer, its path and whether it is 4-bit."""
    from llmapps.models.local import load_pretrained, resolve_model_path

    name = recipe.base_model
    looks_like_path = name.startswith((".", "~", "/")) or name.count("/") > 1
    if looks_like_path and not Path(name).expanduser().exists():
        raise ModelNotFoundError(
            f"base_model {name!r} is neither a folder on this machine nor a hub id: point it to a "
            "folder written by save_pretrained, or download the model where you have network "
            "(`hf download ORG/NAME`) and name it by its hub id"
        )
    path = resolve_model_path(name, settings)
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    if _wants_4bit(recipe, device):
        import torch
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=recipe.quantization.quant_type,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=settings.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=quant,
            device_map={"": 0},
            trust_remote_code=settings.trust_remote_code,
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.training.gradient_checkpointing
        )
        return model, tokenizer, path, True
    dtype = "bfloat16" if _precision(recipe, device) == "bf16" else "float32"
    model, tokenizer = load_pretrained(path, device, dtype, settings)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, path, False


def peft_model(recipe: Recipe, base: Any) -> Any:
    """Wrap ``base`` in the recipe's PEFT method."""
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

    if recipe.method == "lora":
        lc = recipe.lora
        config: Any = LoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,  # type: ignore[arg-type]  # peft says int but only divides by it
            lora_dropout=lc.dropout,
            target_modules=lc.target_modules,
            task_type=TaskType.CAUSAL_LM,
        )
    else:
        config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=recipe.prompt_tuning.num_virtual_tokens
        )
    try:
        return get_peft_model(base, config)
    except ValueError as err:  # e.g. target modules this architecture does not have
        raise ConfigError(f"lora.target_modules: {err}") from err


def sampling_strategy(recipe: Recipe) -> str:
    """The ``Trainer``'s ``train_sampling_strategy`` for the recipe's ``training.batching``."""
    return "group_by_length" if recipe.training.batching == "length-grouped" else "random"


def make_collator(recipe: Recipe, tokenizer: Any) -> Any:
    """The batch collator for the recipe's ``training.batching`` (see ``llmapps.training.CompletionCollator``)."""
    from llmapps.training import CompletionCollator

    return CompletionCollator(
        tokenizer.pad_token_id, padding_free=recipe.training.batching == "padding-free"
    )


def train(
    recipe: Recipe,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    settings: Settings | None = None,
) -> TrainResult:
    """Train the recipe's adapter into ``out``.

    Args:
        recipe: a validated recipe (``load_recipe``).
        out: the adapter folder to write (checkpoints go to ``<out>.checkpoints``).
        resume: continue from the last checkpoint of an interrupted run of the same recipe.
        overwrite: start afresh even if ``<out>.checkpoints`` holds an earlier run's checkpoints.
        progress: show a progress bar with loss, tokens/s and eta.
        settings: resolved settings (device, home); read from the environment when omitted.

    Raises:
        ConfigError: bad recipe combination, nothing to resume, or a different recipe's checkpoints.
        InputError: malformed data rows (file and line numbers named).
        ModelNotFoundError: the base model cannot be found (says how to get one).
    """
    from transformers import set_seed

    from finetune.data import build_dataset, read_examples, read_train_rows
    from llmapps.adapters import (
        AdapterManifest,
        layout_hash,
        model_fingerprint,
        write_adapter_folder,
    )
    from llmapps.models.device import pick_device
    from prompts import load_task

    settings = settings or get_settings()
    out = Path(out).expanduser().resolve()
    ckpt_root = checkpoints_dir(out)
    recipe_json = recipe.model_dump(mode="json")
    resume_from = _prepare_checkpoints(ckpt_root, recipe_json, resume=resume, overwrite=overwrite)

    t = recipe.training
    task = load_task(recipe.prompt)
    train_rows = read_train_rows(recipe.data, task)
    val_rows = read_examples(recipe.data.validation, task)
    device = pick_device(settings.device)
    set_seed(t.seed)
    base, tokenizer, base_path, four_bit = load_base(recipe, settings, device)
    base_hash = model_fingerprint(base_path)
    train_ds = build_dataset(task, train_rows, tokenizer, t.max_length)
    val_ds = build_dataset(task, val_rows, tokenizer, t.max_length)
    model = peft_model(recipe, base)
    if t.gradient_checkpointing and not four_bit:
        model.gradient_checkpointing_enable()
    precision = "bf16" if four_bit else _precision(recipe, device)
    args = training_arguments(
        t,
        ckpt_root / STAGING,  # staged_checkpoints renames each whole one into ckpt_root
        device=device,
        progress=progress,
        per_device_eval_batch_size=t.batch_size,
        warmup_steps=t.warmup_ratio,
        eval_strategy="epoch",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy=sampling_strategy(recipe),
    )
    collator = make_collator(recipe, tokenizer)
    trainer_cls = make_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        processing_class=tokenizer,
        completion_only_logits=t.completion_only_logits and recipe.method == "lora",
        callbacks=[staged_checkpoints(ckpt_root, t.save_total_limit)],
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_secs = time.perf_counter() - started
    final_eval = trainer.evaluate()
    by_epoch = {
        h["epoch"]: h["eval_loss"] for h in trainer.state.log_history[:-1] if "eval_loss" in h
    }
    epochs = [
        {"epoch": e, "eval_loss": v, "eval_perplexity": math.exp(min(50.0, v))}
        for e, v in by_epoch.items()
    ]
    train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "eval_loss": final_eval["eval_loss"],
        "eval_perplexity": math.exp(min(50.0, final_eval["eval_loss"])),
        "train_loss": train_losses[-1] if train_losses else None,
        "steps": trainer.state.global_step,
        "epochs": epochs,
        "train_seconds_this_session": round(train_secs, 2),
        "real_tokens_this_session": trainer.real_tokens,
        "tokens_per_s": round(trainer.real_tokens / train_secs, 1) if train_secs else None,
        "resumed_from": resume_from.name if resume_from else None,
        "train_examples": len(train_rows),
        "validation_examples": len(val_rows),
        "device": device,
        "precision": precision,
        "quantized_4bit": four_bit,
    }
    manifest = AdapterManifest(
        method=recipe.method,
        base_model=recipe.base_model,
        base_model_sha256=base_hash,
        task=task.name,
        prompt=recipe.prompt,
        prompt_sha256=layout_hash(task.completion),
        recipe=recipe_json,
        metrics=metrics,
        versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_adapter_folder(trainer.model, tokenizer, out, manifest)
    log.info("adapter written to %s (eval loss %.4f)", out, metrics["eval_loss"])
    return TrainResult(adapter=out, metrics=metrics)


# The demo recipe of each base the project ships one for (``llmapps demo`` trains it on first use
# into $LLMAPPS_HOME/adapters/<the recipe's name>): the short Gemma recipe keeps the first run
# within 5 minutes on 2 CPU cores.
DEMO_RECIPES = {"tiny-base": "tiny", "gemma-3-270m": "gemma-3-270m-demo"}
# The full run of a base, trained by hand (`llmapps finetune lora --recipe NAME --out
# $LLMAPPS_HOME/adapters/<its name>`): where it is, the demo and the bench use it.
FULL_RECIPES = {"gemma-3-270m": "gemma-3-270m"}


class PeftTrainer:
    """The ``peft`` adapter trainer (``llmapps.adapters.AdapterTrainer``), registered by entry
    point as ``finetune.train:train_recipe``: the core trains through it without importing
    this package."""

    def __call__(self, recipe: str, out: Path, **options: Unpack[TrainOptions]) -> Path:
        """Train the recipe named ``recipe`` (a shipped name or a YAML path, its own ``method:``)
        into ``out`` (``options``: ``train``'s keywords); return ``out``."""
        from finetune.recipe import load_recipe

        return train(load_recipe(recipe), out, **options).adapter

    def demo_recipe(self, base_model: str) -> Any:
        """The ``DemoRecipe`` of ``base_model`` (``DEMO_RECIPES``), or None."""
        from finetune.recipe import load_recipe
        from llmapps.adapters import DemoRecipe

        name = DEMO_RECIPES.get(base_model)
        if not name:
            return None
        full = FULL_RECIPES.get(base_model)
        return DemoRecipe(
            recipe=name,
            adapter=load_recipe(name).name,
            full_adapter=load_recipe(full).name if full else None,
        )

    def demo_bases(self) -> list[str]:
        return sorted(DEMO_RECIPES)


train_recipe = PeftTrainer()


def _prepare_checkpoints(
    root: Path,
    recipe_json: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    record: str = "recipe.json",
    made_with: str = "a different recipe; resume with the same recipe",
) -> Path | None:
    """Check the checkpoint folder against the request (``recipe_json``, kept in ``record``);
    return the checkpoint to resume from. ``made_with`` says what differs when it does not
    match (the DPO trainer's identity also holds its parent adapter and pairs)."""
    saved = root / record
    last = last_checkpoint(root)
    if resume:
        if last is None:
            raise ConfigError(
                f"--resume: {root} holds no checkpoint to continue from; run without --resume"
            )
        if saved.exists() and json.loads(saved.read_text()) != recipe_json:
            raise ConfigError(
                f"--resume: the checkpoints in {root} were made with {made_with}, or start "
                "afresh with --overwrite"
            )
        return last
    if last is not None and not overwrite:
        raise ConfigError(
            f"{root} holds checkpoints of an earlier run (last: {last.name}): pass --resume to "
            "continue it or --overwrite to start afresh"
        )
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(recipe_json, indent=2))
    return None
