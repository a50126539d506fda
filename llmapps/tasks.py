"""A ``Task``: what an app hands a strategy, independent of how the strategy prompts a model.

A task carries both prompt shapes, so any strategy can serve any app: a completion layout for base
models (instruction prefix, worked-example template, separator, suffix the model continues) and a
chat prompt for instruction models, plus the worked examples, stop strings and output budget.
Apps load tasks from prompt files (see ``prompts/``); the core never hard-codes one.

A task also says what shape its reply takes, once, for structured generation
(``Task.output_constraint``): after the chat prompt, its ``json_schema``; after the completion
prompt, a ``layout`` derived from the example template (what the template writes after the
suffix: ``[Summary]: {summary}`` ... becomes the literals and fields of a ``Layout``), never
written a second time. Every field gets a token budget (``FieldSpec.max_tokens`` from the prompt
file, the rest split from ``max_new_tokens``) so that the fields and the literal text between
them fit ``max_new_tokens`` together: the backend closes the reply within it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

from langchain_core.prompts import ChatPromptTemplate

from llmapps.api.generation import Layout, LayoutField, OutputConstraint

log = logging.getLogger(__name__)

# Characters a field may hold per token of its budget, for JSON schemas (``maxLength`` counts
# characters): the reference fields of news-riddle average 4.0-4.3 characters a token under the
# Gemma 3 and SmolLM2 tokenizers; 4 keeps a field near its token budget.
CHARS_PER_TOKEN = 4
# Tokens kept back per field besides the literal text's own count: a field's text and the literal
# after it are tokenized apart while generating (a quote, a newline), where one string counts
# fewer. Without it 2 of 8 SmolLM2 JSON replies on the test split ran out of max_new_tokens=128
# (fields overran their 44 / 52-token budgets by 3-5 tokens as re-tokenized).
FIELD_SLACK = 3


@dataclass(frozen=True)
class CompletionLayout:
    """The completion-prompt layout: ``prefix + sep.join(examples + [suffix])``."""

    prefix: str
    example_template: str
    suffix: str
    separator: str = "\n###\n"

    def render(self, inputs: dict[str, Any], examples: list[dict[str, Any]] = ()) -> str:  # type: ignore[assignment]
        """The prompt text for ``inputs`` with ``examples`` (the same text FewShotPromptTemplate builds)."""
        from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate

        tmpl = FewShotPromptTemplate(
            examples=list(examples),
            example_prompt=PromptTemplate.from_template(self.example_template),
            prefix=self.prefix,
            suffix=self.suffix,
            example_separator=self.separator,
            input_variables=sorted(PromptTemplate.from_template(self.suffix).input_variables),
        )
        return tmpl.format(**inputs)


# one JSON string's characters: no quote, backslash or control character unescaped
_JSON_CHARS = r'/([^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})+/'


def json_object_lark(schema: dict[str, Any], budgets: dict[str, FieldSpec]) -> str | None:
    """A JSON object of ``schema`` as a grammar with a token budget per field, or None when the
    schema is not a flat object of required strings.

    The engine's JSON-schema mode caps a string in characters only (``maxLength``), which a
    model writing short tokens overruns in tokens (the tiny test model did, at 128 tokens); as a
    grammar each string is a rule of at most its budget in tokens (llguidance's
    ``rule[max_tokens=N]``), so the object always closes inside ``max_new_tokens``. What it
    accepts is JSON that validates against ``schema``: its keys in order, ``json.dumps``'s
    spacing, every string non-empty.
    """
    import json

    props = schema.get("properties")
    if (
        schema.get("type") != "object"
        or not isinstance(props, dict)
        or not props
        or set(schema.get("required") or ()) != set(props)
        or any(not isinstance(p, dict) or p.get("type") != "string" for p in props.values())
        or any(n not in budgets for n in props)
    ):
        return None
    seq, rules = [json.dumps("{")], []
    for i, name in enumerate(props):
        key = ("" if i == 0 else ", ") + json.dumps(name) + ": "
        seq += [json.dumps(key + '"'), f"s{i}", json.dumps('"')]
        rules.append(f"s{i}[max_tokens={budgets[name].max_tokens or 1}]: {_JSON_CHARS}")
    seq.append(json.dumps("}"))
    return "start: " + " ".join(seq) + "\n" + "\n".join(rules) + "\n"


@dataclass(frozen=True)
class FieldSpec:
    """An output field's budget: at most ``max_tokens`` tokens (None: a share of what is left),
    on several lines when ``multiline``."""

    name: str
    max_tokens: int | None = None
    multiline: bool = False
    max_lines: int = 4


@dataclass(frozen=True)
class Task:
    """One generation task of an app.

    Attributes:
        name: identifies the task in logs, caches and adapter manifests.
        input_variables: keys the input dict must carry.
        output_variables: keys a worked example carries beyond the inputs.
        completion: the layout for base (completion) models.
        chat: the prompt for instruction (chat) models.
        examples: worked examples (input and output variables filled in).
        stop: strings that end a generation.
        max_new_tokens: generation budget.
        truncate_variable: the input that is shortened (with a warning) when a prompt is too long.
        json_schema: the output as a JSON schema, for endpoints with structured output.
        chat_reply: the reply the chat prompt asks for, with output variables (``"Summary:
            {summary}..."``); None when the prompt asks for no fixed layout.
        fields: per output variable, its token budget and whether it spans lines (those not
            listed get a share of ``max_new_tokens``).
    """

    name: str
    input_variables: tuple[str, ...]
    output_variables: tuple[str, ...]
    completion: CompletionLayout
    chat: ChatPromptTemplate
    examples: tuple[dict[str, Any], ...] = ()
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 96
    truncate_variable: str | None = None
    json_schema: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    chat_reply: str | None = None
    fields: tuple[FieldSpec, ...] = ()

    def reference_reply(self, values: dict[str, Any], chat: bool) -> str | None:
        """The text a model should write for the reference ``values`` (inputs and outputs), after
        this task's chat prompt (``chat``) or its completion prompt; None when it cannot be said.

        The completion reply is what a worked example adds after the suffix (the text training
        targets, see ``finetune.data``); the chat reply is ``chat_reply`` filled in.
        """
        try:
            if chat:
                return self.chat_reply.format(**values) if self.chat_reply else None
            layout = self.completion
            full = layout.example_template.format(**values)
            suffix = layout.suffix.format(**{k: values[k] for k in self.input_variables})
        except KeyError:  # a value the reference does not have
            return None
        return full[len(suffix) :] if full.startswith(suffix) else None

    def reply_pieces(self) -> tuple[list[tuple[str, str]], str] | None:
        """The completion reply as ``([(literal before, field), ...], literal after)``: what the
        example template writes after the suffix, parsed; None when the template does not start
        with the suffix or its reply is not the output variables, each once."""
        layout = self.completion
        if not layout.example_template.startswith(layout.suffix):
            return None
        reply = layout.example_template[len(layout.suffix) :]
        pieces: list[tuple[str, str]] = []
        text = ""
        for literal, name, spec, conv in Formatter().parse(reply):
            text += literal
            if name is None:
                continue
            if spec or conv or name not in self.output_variables:
                return None
            pieces.append((text, name))
            text = ""
        names = [n for _, n in pieces]
        if sorted(names) != sorted(self.output_variables):  # each output once, nothing else
            return None
        return pieces, text

    def field_budgets(self, available: int) -> dict[str, FieldSpec]:
        """Every output field with its token budget, all of them together within ``available``
        tokens: declared budgets are kept while they fit (scaled down together when not), the
        fields without one share what is left; at least 1 token each."""
        declared = {f.name: f for f in self.fields}
        names = list(self.output_variables)
        fixed = {n: declared[n].max_tokens for n in names if n in declared}
        budgets = {n: int(v) for n, v in fixed.items() if v is not None}
        free = [n for n in names if n not in budgets]
        total = sum(budgets.values())
        if total > available or (free and total + len(free) > available):
            room = max(available - len(free), 0)
            budgets = {n: max(1, v * room // max(total, 1)) for n, v in budgets.items()}
        rest = max(available - sum(budgets.values()), 0)
        for n in free:
            budgets[n] = max(1, rest // len(free))
        return {
            n: FieldSpec(
                n,
                budgets[n],
                declared[n].multiline if n in declared else False,
                declared[n].max_lines if n in declared else 4,
            )
            for n in names
        }

    def output_constraint(
        self,
        chat: bool,
        max_new_tokens: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> OutputConstraint | None:
        """The shape of this task's reply for structured generation; None when it has none.

        ``chat``: the ``json_schema`` as a grammar with each field's token budget
        (``json_object_lark``; a schema that is not a flat object of strings as itself, each
        string's ``maxLength`` from its budget at ``CHARS_PER_TOKEN``), else the completion
        ``layout`` derived from the example template.
        ``count_tokens`` counts the literal text (keys, labels) the reply needs besides its fields,
        which comes off ``max_new_tokens`` (default: the task's) before the fields share the rest;
        without it a literal counts as one token per 2 characters.
        """
        import json

        max_new = max_new_tokens or self.max_new_tokens
        count = count_tokens or (lambda text: (len(text) + 1) // 2)
        if chat:
            if not self.json_schema:
                return None
            props = self.json_schema.get("properties") or {}
            names = [n for n in self.output_variables if n in props]
            literals = [json.dumps({n: ""})[:-2] for n in names]  # '{"summary": "' ...
            overhead = sum(count(lit) for lit in literals) + count('"}') + FIELD_SLACK * len(names)
            budgets = self.field_budgets(max_new - overhead)
            grammar = json_object_lark(self.json_schema, budgets)
            if grammar is not None:
                return OutputConstraint("grammar", grammar)
            schema = {  # not flat strings: the schema itself, its strings capped in characters
                **self.json_schema,
                "properties": {
                    n: (
                        {**p, "maxLength": (budgets[n].max_tokens or 1) * CHARS_PER_TOKEN}
                        if n in budgets and isinstance(p, dict) and p.get("type") == "string"
                        else p
                    )
                    for n, p in props.items()
                },
            }
            return OutputConstraint("json_schema", schema)
        parsed = self.reply_pieces()
        if parsed is None:
            return None
        pieces, after = parsed
        overhead = sum(count(lit) for lit, _ in pieces if lit) + (count(after) if after else 0)
        budgets = self.field_budgets(max_new - overhead - FIELD_SLACK * len(pieces))
        fields = tuple(
            LayoutField(
                name,
                before,
                budgets[name].max_tokens or 1,
                budgets[name].multiline,
                budgets[name].max_lines,
            )
            for before, name in pieces
        )
        if sum(f.max_tokens for f in fields) + overhead > max_new:
            log.warning(
                "max_new_tokens=%d cannot hold the %s layout (%d literal tokens, %d fields): "
                "replies will not close and are marked invalid",
                max_new,
                self.name,
                overhead,
                len(fields),
            )
        return OutputConstraint(
            "layout", Layout(fields=fields, after=after, forbid=tuple(s for s in self.stop if s))
        )

    def with_examples(self, examples: list[dict[str, Any]]) -> Task:
        from dataclasses import replace

        return replace(self, examples=tuple(examples))
