"""The generation contract every model backend honours: a request (``GenerationParams``), a reply
(``GenerationOutput``) and the shape a reply must take (``OutputConstraint``, with ``Layout`` and
``LayoutField`` for completion layouts).

Plain data, no model code: tasks build constraints from their prompt files, strategies build
params, backends (``llmapps.models``) compile and apply them. The kinds of constraint and how the
engine compiles them are described in ``llmapps.models.structured``, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmapps.errors import InputError

ConstraintKind = Literal["json_schema", "regex", "choice", "grammar", "layout"]
CONSTRAINT_KINDS: tuple[str, ...] = ("json_schema", "regex", "choice", "grammar", "layout")


class ConstraintError(InputError):
    """A structured-output request that cannot be honoured (invalid schema, regex or grammar)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class LayoutField:
    """One field of a completion layout: its name, the text before it, and its token budget."""

    name: str
    before: str
    max_tokens: int
    multiline: bool = False
    max_lines: int = 4


@dataclass(frozen=True)
class Layout:
    """Literal pieces and fields in order, ending with ``after`` (then end of reply). No field
    may contain a string of ``forbid`` (the prompt's stop strings: a field that wrote one would
    be cut there by the stop and never close)."""

    fields: tuple[LayoutField, ...]
    after: str = ""
    forbid: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputConstraint:
    """What a reply must look like (see ``llmapps.models.structured`` for ``kind`` and ``value``)."""

    kind: ConstraintKind
    value: Any = field(default=None, hash=False, compare=False)
    # a stable key for compiled-grammar caches (set by the constructors below)
    key: str = ""

    def __post_init__(self) -> None:
        if self.kind not in CONSTRAINT_KINDS:
            raise ConstraintError(
                f"unknown constraint kind {self.kind!r}; one of {', '.join(CONSTRAINT_KINDS)}",
                param="kind",
            )
        if not self.key:
            import hashlib
            import json

            blob = json.dumps([self.kind, _plain(self.value)], sort_keys=True, default=str)
            object.__setattr__(self, "key", hashlib.sha256(blob.encode()).hexdigest()[:16])


def _plain(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


@dataclass(frozen=True)
class Budget:
    """What one generation of a task may spend: ``max_new_tokens`` to generate and
    ``max_prompt_tokens`` of prompt (None: only the model's context, less ``max_new_tokens``,
    bounds it). Built by ``Strategy.budget(task)`` from the strategy's options, its settings and
    the task's own budget."""

    max_new_tokens: int
    max_prompt_tokens: int | None = None


@dataclass
class GenerationParams:
    """Sampling settings for one generate call; greedy when ``temperature`` is 0."""

    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Structured generation: the reply is constrained to this grammar (see llmapps.models.structured)
    constraint: OutputConstraint | None = None
    # Repetition control for small models that loop (1.0 / 0: off)
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


@dataclass
class GenerationOutput:
    """One completion: text without the prompt, cut before the first stop string."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or stop string) or "length"
    truncated_prompt: bool = False
    # set when a constrained reply did not complete its grammar (e.g. it ran out of tokens): the
    # reason, so the row is marked invalid with it instead of being cut silently
    constraint_error: str | None = None
