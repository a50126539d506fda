"""An app's rows for augmentation: its train split (the only split a transform reads) and its
fields (every input and reference key, the body sentence transforms rewrite, the references)."""

from __future__ import annotations

from typing import Any

from llmapps.errors import ConfigError

SPLIT = "train"


def fields_of(spec: Any, body: str | None = None) -> Any:
    """The ``AugmentFields`` of an app: every input and reference key, its body, its references."""
    from llmapps.data.augment import AugmentFields

    inputs, refs = tuple(spec.input_keys), tuple(spec.reference_keys)
    if not inputs or not refs:
        raise ConfigError(
            f"app {spec.name!r} declares no input_keys or reference_keys; augmentation needs both"
        )
    if body is None:
        long = tuple(spec.ui.long_inputs) if spec.ui is not None else ()
        body = long[0] if long else inputs[-1]
    if body not in inputs:
        raise ConfigError(f"--body {body!r} is not an input of {spec.name} ({', '.join(inputs)})")
    return AugmentFields(fields=(*inputs, *refs), body=body, references=refs)


def train_rows(spec: Any) -> list[dict[str, Any]]:
    """The app's train split, the only split augmentation reads."""
    if spec.training_examples is None:
        raise ConfigError(f"app {spec.name!r} offers no training examples to augment")
    return list(spec.training_examples(SPLIT))
