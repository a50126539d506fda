"""Structured generation: the contract every backend honours.

An ``OutputConstraint`` says what shape a reply must take; ``GenerationParams.constraint`` carries
it to a backend, which constrains decoding to it (token masks: the model can only write what the
grammar allows). Kinds, with the servers users compare us with:

- ``json_schema``: a JSON schema (dict) — OpenAI ``response_format: json_schema``, vLLM
  ``structured_outputs.json``, llama-server ``json_schema``; ``{}`` or ``True`` means any JSON object
  (``response_format: json_object`` without a schema).
- ``regex``: a regular expression the whole reply matches (vLLM ``structured_outputs.regex``).
- ``choice``: a list of strings, the reply is exactly one of them (vLLM ``structured_outputs.choice``).
- ``grammar``: a grammar text (Lark, or GBNF as llama.cpp writes it) (vLLM ``grammar``, llama-server
  ``grammar``).
- ``layout``: a completion layout — literal text and fields in order, each field with a token
  budget (``Layout``), derived from a task's example template (``[Summary]: …\\n[Riddle]: …``).

A constraint that cannot be compiled raises ``ConstraintError`` (an ``InputError``) naming the
field at fault (``param``), before any token is generated: the server answers it with 400.
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


@dataclass(frozen=True)
class Layout:
    """Literal pieces and fields in order, ending with ``after`` (then end of reply)."""

    fields: tuple[LayoutField, ...]
    after: str = ""


@dataclass(frozen=True)
class OutputConstraint:
    """What a reply must look like (see the module docstring for ``kind`` and ``value``)."""

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
