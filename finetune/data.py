"""Dataset formatting for supervised fine-tuning, from the same prompt the ``lora`` strategy uses.

Each example becomes ``prompt + completion``:

- ``prompt`` = ``task.completion.render(inputs, [])``: the task's completion layout with zero
  worked examples, exactly what ``LoraStrategy.build`` sends to the model at inference;
- ``completion`` = what the layout's ``example_template`` adds after its ``suffix`` (for
  news-riddle: `` summary\\n[Riddle]: ...\\n[Answer]: ...``), then the end-of-sequence token.

Prompt and completion are tokenised separately, as at inference (the prompt alone is encoded and
the model continues it), and the labels mask the prompt: the loss is on completion tokens only.
Too long an example has its ``truncate_variable`` (the article text) shortened to fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmapps.errors import ConfigError, InputError
from llmapps.jsonl import read_jsonl
from llmapps.training import IGNORE, REAL_TOKENS, CompletionCollator

__all__ = [
    "IGNORE",
    "REAL_TOKENS",
    "CompletionCollator",
    "build_dataset",
    "mix_augmented",
    "read_examples",
    "read_train_rows",
    "split_example",
    "tokenize_example",
]

if TYPE_CHECKING:
    from llmapps.tasks import Task


def split_example(task: Task, example: dict[str, Any]) -> tuple[str, str]:
    """The (prompt, completion) texts of one worked example."""
    layout = task.completion
    inputs = {k: example[k] for k in task.input_variables}
    prompt = layout.render(inputs, [])
    suffix = layout.suffix.format(**inputs)
    full = layout.example_template.format(
        **{k: example[k] for k in (*task.input_variables, *task.output_variables)}
    )
    if not full.startswith(suffix):
        raise ConfigError(
            f"the prompt {task.name!r} cannot train a completion model: its example_template does "
            "not begin with its suffix, so a worked example is not 'prompt + completion'"
        )
    return prompt, full[len(suffix) :]


def read_examples(source: str, task: Task) -> list[dict[str, Any]]:
    """Examples from a bundled split name or a JSONL file (every bad line named with its number)."""
    needed = (*task.input_variables, *task.output_variables)
    path = Path(source).expanduser()
    if ":" in source and not path.exists():  # "<app>:<split>": the app's own training examples
        return _app_examples(source, needed)
    if not path.suffix and not path.exists():  # a bare split: of the app the prompt belongs to
        return _app_examples(f"{task.name}:{source}", needed, given=source)
    if not path.exists():
        raise InputError(f"data file {path} does not exist")

    def example(row: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in needed if not isinstance(row.get(k), str) or not row[k].strip()]
        if bad:
            raise InputError(
                f"missing or empty {', '.join(bad)} (each row needs {', '.join(needed)})"
            )
        return row

    rows = read_jsonl(path, example, what="malformed row")
    if not rows:
        raise InputError(f"{path} holds no examples")
    return rows


def mix_augmented(
    train_rows: list[dict[str, Any]],
    augmented: list[dict[str, Any]],
    *,
    transforms: list[str] | None = None,
    per_row: int | None = None,
    source: str = "augmented rows",
) -> list[dict[str, Any]]:
    """``train_rows`` followed by the ``augmented`` rows made from them.

    Every augmented row must name its ``source_id`` and ``transform`` (as ``llmapps data augment``
    writes them) and come from one of ``train_rows``: a row made from any other article (a
    validation or test one) is an ``InputError``, so augmentation can never leak the test split
    into training. ``transforms`` keeps only those transforms; ``per_row`` caps the rows per source
    (in file order, so a cap keeps the same rows on every run).
    """
    ids = {str(r.get("id")) for r in train_rows}
    bad = [
        str(r.get("id", n))
        for n, r in enumerate(augmented, 1)
        if not r.get("transform") or str(r.get("source_id")) not in ids
    ]
    if bad:
        raise InputError(
            f"{source}: {len(bad)} row(s) ({', '.join(bad[:5])}) have no transform or were not made "
            "from a train row (source_id); augment the same train split the recipe trains on"
        )
    wanted = set(transforms or ())
    per_source: dict[str, int] = {}
    mixed = list(train_rows)
    for row in augmented:
        if wanted and row["transform"] not in wanted:
            continue
        sid = str(row["source_id"])
        if per_row is not None and per_source.get(sid, 0) >= per_row:
            continue
        per_source[sid] = per_source.get(sid, 0) + 1
        mixed.append(row)
    return mixed


def read_train_rows(data: Any, task: Task) -> list[dict[str, Any]]:
    """The training rows of a recipe's ``data`` section: ``train``, plus ``augmented`` mixed in."""
    rows = read_examples(data.train, task)
    if not data.augmented:
        return rows
    extra = read_examples(data.augmented, task)
    return mix_augmented(
        rows,
        extra,
        transforms=list(data.augment_transforms),
        per_row=data.augment_per_row,
        source=str(data.augmented),
    )


def _app_examples(
    source: str, needed: tuple[str, ...], given: str | None = None
) -> list[dict[str, Any]]:
    """Rows of ``<app>:<split>`` through the app registry (``AppSpec.training_examples``).

    ``given``: the bare split the recipe named, when ``source`` was derived from the task's name.
    """
    from llmapps.apps import APPS, get_app

    app, _, split = source.partition(":")
    if given is not None and app not in APPS:
        raise ConfigError(
            f"data source {given!r}: not a file, and the prompt's task {app!r} is no registered "
            f"app to take the split from; name a JSONL file or APP:SPLIT ({', '.join(APPS.names())})"
        )
    spec = get_app(app)
    if spec.training_examples is None:
        raise ConfigError(f"data source {source!r}: the app {app!r} offers no training examples")
    try:
        rows = spec.training_examples(split)
    except (InputError, KeyError) as err:  # an unknown split
        raise ConfigError(
            f"data source {given or source!r}: the app {app!r} has no split {split!r} ({err})"
        ) from err
    if not rows:
        raise InputError(f"data source {source!r} holds no examples")
    lacking = sorted({k for r in rows for k in needed if not isinstance(r.get(k), str)})
    if lacking:
        raise ConfigError(
            f"data source {source!r}: its examples lack {', '.join(lacking)}, which the prompt needs"
        )
    return rows


def tokenize_example(
    task: Task, example: dict[str, Any], tokenizer: Any, max_length: int
) -> dict[str, Any]:
    """``input_ids`` and ``labels`` (prompt masked) of one example, cut to ``max_length`` tokens."""
    prompt, completion = fitted_example(task, example, tokenizer, max_length)
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = p_ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids.append(tokenizer.eos_token_id)
    return {
        "input_ids": ids,
        "labels": [IGNORE] * len(p_ids) + ids[len(p_ids) :],
        "length": len(ids),
    }


def fitted_example(
    task: Task, example: dict[str, Any], tokenizer: Any, max_length: int
) -> tuple[str, str]:
    """The prompt and completion texts of one example, the prompt's article shortened so that
    both (and an end token) fit in ``max_length`` tokens: what ``tokenize_example`` trains on."""
    from llmapps.prompting import truncate_to_fit

    prompt, completion = split_example(task, example)
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    limit = max_length - len(c_ids)
    if limit < 8:
        raise InputError(
            f"training.max_length={max_length} leaves no room for a prompt before a "
            f"{len(c_ids)}-token completion; raise max_length"
        )

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    if count(prompt) > limit:
        inputs = {k: example[k] for k in task.input_variables}
        fitted = truncate_to_fit(
            inputs,
            task.truncate_variable,
            lambda x: task.completion.render(x, []),
            count,
            limit,
            what=f"{task.name} example",
        )
        prompt = task.completion.render(fitted, [])
    return prompt, completion


def build_dataset(
    task: Task, examples: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> Any:
    """A ``datasets.Dataset`` of tokenised examples (with a ``length`` column for grouping)."""
    from datasets import Dataset

    return Dataset.from_list([tokenize_example(task, ex, tokenizer, max_length) for ex in examples])
