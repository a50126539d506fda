"""Training recipes: one pydantic model validates every YAML in ``finetune/recipes/``.

A recipe names the base model, the prompt file the data is formatted with, the data, the PEFT
method and its settings, and the training budget. Every problem in a file is reported at once with
its field names. ``load_recipe("tiny")`` finds ``finetune/recipes/tiny.yaml``; a path works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmapps.errors import ConfigError, format_problems

_M = TypeVar("_M", bound=BaseModel)

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Where the examples come from: a bundled split name or a JSONL file."""

    train: str = Field(
        "train", description="bundled split (train, validation, test) or a JSONL path"
    )
    validation: str = Field("validation", description="bundled split or a JSONL path")
    augmented: str | None = Field(
        None,
        description="JSONL of `llmapps data augment` rows mixed into train (each row's source_id "
        "must be a train row's id, so no validation or test article gets in)",
    )
    augment_transforms: list[str] = Field(
        default_factory=list, description="keep only rows of these transforms (empty: all)"
    )
    augment_per_row: int | None = Field(
        None, ge=0, description="at most this many augmented rows per train row (None: all)"
    )


class LoraConfig(_Strict):
    """LoRA settings (PEFT ``LoraConfig``)."""

    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class PromptTuningConfig(_Strict):
    """Prompt-tuning settings (PEFT ``PromptTuningConfig``)."""

    num_virtual_tokens: int = Field(16, ge=1, le=512)


class TrainingConfig(_Strict):
    """The training budget and loop settings (HF ``TrainingArguments``)."""

    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(8, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(
        1024, ge=16, description="tokens per example; the article is cut to fit"
    )
    batching: Literal["length-grouped", "padding-free", "padded"] = Field(
        "length-grouped",
        description="length-grouped: batches of similar length, little padding (best on CPU); "
        "padding-free: each batch packed into one row with position ids (best with flash "
        "attention); padded: random batches padded to their longest (the naive baseline)",
    )
    completion_only_logits: bool = Field(
        True,
        description="project only completion positions onto the vocabulary (faster, same loss)",
    )
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    seed: int = 0
    precision: Literal["auto", "float32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False


class QuantizationConfig(_Strict):
    """QLoRA: load the base in 4 bits (needs a CUDA GPU and bitsandbytes)."""

    load_in_4bit: bool | Literal["auto"] = Field(
        "auto", description="auto: 4-bit when a CUDA GPU and bitsandbytes are present"
    )
    quant_type: Literal["nf4", "fp4"] = "nf4"


class Recipe(_Strict):
    """A fine-tuning recipe (the schema of ``finetune/recipes/*.yaml``)."""

    name: str = Field(min_length=1)
    description: str = ""
    method: Literal["lora", "prompt-tuning"] = "lora"
    base_model: str = Field(min_length=1, description="hub id, directory, or tiny-base")
    prompt: str = Field(
        "news_riddle/one_step", description="prompt file the data is formatted with"
    )
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    lora: LoraConfig = Field(default_factory=LoraConfig)  # type: ignore[arg-type]
    prompt_tuning: PromptTuningConfig = Field(default_factory=PromptTuningConfig)  # type: ignore[arg-type]
    training: TrainingConfig = Field(default_factory=TrainingConfig)  # type: ignore[arg-type]
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.method == "prompt-tuning" and self.training.batching == "padding-free":
            raise ValueError(
                "training.batching: padding-free cannot be used with prompt-tuning "
                "(virtual tokens are prepended to every row)"
            )
        return self


def list_recipes() -> list[Path]:
    """Every recipe shipped in ``finetune/recipes``."""
    return sorted(RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe path from a path or a shipped recipe name (``tiny``)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(p.stem for p in list_recipes())
    raise ConfigError(f"no recipe {str(name_or_path)!r}: give a YAML path or one of: {known}")


def recipe_from_dict(raw: Any, where: str = "recipe") -> Recipe:
    """Validate a mapping as a ``Recipe``, listing every field at fault."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    return validate_recipe(Recipe, raw, where)


def validate_recipe(cls: type[_M], raw: Any, where: str, what: str = "recipe") -> _M:
    """``cls.model_validate(raw)``, a failure one ``ConfigError`` listing every field at fault."""
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        problems = [f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(
            format_problems(f"{where}: {len(problems)} problem(s) in the {what}:", problems)
        ) from err


def set_dotted(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Apply ``--set`` overrides, dotted fields (``training.max_steps=5``), to a recipe mapping."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {part} is not a section of the recipe")
        node[leaf] = value


def load_recipe(name_or_path: str | Path, **overrides: Any) -> Recipe:
    """Load and validate a recipe; ``overrides`` are dotted fields (``training.max_steps=5``)."""
    path = resolve_recipe(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if isinstance(raw, dict):  # else recipe_from_dict says it is no mapping
        set_dotted(raw, overrides)
    return recipe_from_dict(raw, str(path))
