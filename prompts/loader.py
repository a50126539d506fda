"""Load a task's prompts from a YAML file and check its variables.

A prompt file (``prompts/<app>/<task>.yaml``) holds the completion layout for base models, the
chat messages for instruction models, stop strings, the output budget and, optionally, a JSON
schema of the output. ``load_task("news_riddle/one_step")`` returns an ``llmapps.tasks.Task``.
Every problem in a file is reported at once, with the file's path.
"""

from __future__ import annotations

from pathlib import Path
from string import Formatter
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmapps.errors import ConfigError, format_problems
from llmapps.tasks import CompletionLayout, FieldSpec, Task

PROMPTS_DIR = Path(__file__).resolve().parent


class _Completion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix: str = ""
    example_template: str
    suffix: str
    separator: str = "\n###\n"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class _Field(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int | None = Field(None, ge=1, description="token budget of the field")
    multiline: bool = Field(False, description="the field may span lines (a riddle's verses)")
    max_lines: int = Field(
        4,
        ge=1,
        le=16,
        description="a multiline field's most lines under structured generation; they share "
        "the field's token budget",
    )


class PromptFile(BaseModel):
    """The schema of a prompt file."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    input_variables: list[str] = Field(min_length=1)
    output_variables: list[str] = Field(min_length=1)
    truncate_variable: str | None = None
    max_new_tokens: int = Field(96, ge=1)
    stop: list[str] = Field(default_factory=list)
    completion: _Completion
    chat: list[_Message] = Field(min_length=1)
    json_schema: dict[str, Any] | None = None
    chat_reply: str | None = Field(
        None,
        description="the reply layout the chat prompt asks for, with output variables (scores references)",
    )
    fields: dict[str, _Field] = Field(
        default_factory=dict,
        description="per output variable: its token budget for structured generation (the rest "
        "share max_new_tokens) and whether it spans lines",
    )


def _variables(template: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(template) if name}


def list_prompt_files() -> list[Path]:
    """Every prompt YAML shipped in this package."""
    return sorted(p for p in PROMPTS_DIR.rglob("*.yaml"))


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".yaml":
        path = path.with_suffix(".yaml")
    if not path.is_absolute() and not path.exists():
        path = PROMPTS_DIR / path
    if not path.exists():
        known = ", ".join(
            str(p.relative_to(PROMPTS_DIR).with_suffix("")) for p in list_prompt_files()
        )
        raise ConfigError(f"no prompt file {name_or_path!r}; known: {known}")
    return path


def validate_prompt_file(path: Path) -> PromptFile:
    """Parse and check one prompt file; raise ``ConfigError`` listing every problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        spec = PromptFile.model_validate(raw)
    except ValidationError as err:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfigError(format_problems(f"{path}: invalid prompt file:", problems)) from err
    inputs, outputs = set(spec.input_variables), set(spec.output_variables)
    problems = []
    c = spec.completion
    if _variables(c.suffix) != inputs:
        problems.append(
            f"completion.suffix uses {sorted(_variables(c.suffix))}, expected exactly {sorted(inputs)}"
        )
    if not _variables(c.example_template) <= inputs | outputs:
        problems.append(
            f"completion.example_template uses unknown {sorted(_variables(c.example_template) - inputs - outputs)}"
        )
    if _variables(c.prefix):
        problems.append(
            f"completion.prefix must not use variables, found {sorted(_variables(c.prefix))}"
        )
    chat_vars = set().union(*(_variables(m.content) for m in spec.chat))
    if chat_vars != inputs:
        problems.append(f"chat messages use {sorted(chat_vars)}, expected exactly {sorted(inputs)}")
    if spec.chat_reply is not None and not _variables(spec.chat_reply) <= outputs:
        problems.append(
            f"chat_reply uses {sorted(_variables(spec.chat_reply) - outputs)}, which are not output variables"
        )
    if set(spec.fields) - outputs:
        problems.append(f"fields names {sorted(set(spec.fields) - outputs)}, not output variables")
    budget = sum(f.max_tokens or 0 for f in spec.fields.values())
    if budget > spec.max_new_tokens:
        problems.append(
            f"the fields' budgets sum to {budget} tokens, more than max_new_tokens={spec.max_new_tokens}"
        )
    if spec.truncate_variable and spec.truncate_variable not in inputs:
        problems.append(f"truncate_variable {spec.truncate_variable!r} is not an input variable")
    if problems:
        raise ConfigError(format_problems(f"{path}: inconsistent prompt file:", problems))
    return spec


def load_task(name_or_path: str | Path, examples: list[dict[str, Any]] | None = None) -> Task:
    """Load ``prompts/<name>.yaml`` (or a path) as a ``Task``, with optional worked examples."""
    from langchain_core.prompts import ChatPromptTemplate

    path = _resolve(name_or_path)
    spec = validate_prompt_file(path)
    needed = set(spec.input_variables) | set(spec.output_variables)
    for i, ex in enumerate(examples or []):
        missing = needed - set(ex)
        if missing:
            raise ConfigError(f"example {i} for {spec.name} lacks {sorted(missing)}")
    c = spec.completion
    chat = ChatPromptTemplate.from_messages(
        [(m.role if m.role != "user" else "human", m.content) for m in spec.chat]
    )
    return Task(
        name=spec.name,
        input_variables=tuple(spec.input_variables),
        output_variables=tuple(spec.output_variables),
        completion=CompletionLayout(c.prefix, c.example_template, c.suffix, c.separator),
        chat=chat,
        examples=tuple(examples or ()),
        stop=tuple(spec.stop),
        max_new_tokens=spec.max_new_tokens,
        truncate_variable=spec.truncate_variable,
        json_schema=spec.json_schema,
        meta={"path": str(path), "description": spec.description},
        chat_reply=spec.chat_reply,
        fields=tuple(
            FieldSpec(n, f.max_tokens, f.multiline, f.max_lines) for n, f in spec.fields.items()
        ),
    )
