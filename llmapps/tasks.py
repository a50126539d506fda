"""A ``Task``: what an app hands a strategy, independent of how the strategy prompts a model.

A task carries both prompt shapes, so any strategy can serve any app: a completion layout for base
models (instruction prefix, worked-example template, separator, suffix the model continues) and a
chat prompt for instruction models, plus the worked examples, stop strings and output budget.
Apps load tasks from prompt files (see ``prompts/``); the core never hard-codes one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_core.prompts import ChatPromptTemplate


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

    def with_examples(self, examples: list[dict[str, Any]]) -> Task:
        from dataclasses import replace

        return replace(self, examples=tuple(examples))
