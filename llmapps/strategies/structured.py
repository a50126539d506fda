"""What the local strategies share for structured generation and repetition control.

- ``GenerationControls``: the options ``structured`` (``auto | on | off``), ``repetition_penalty``
  and ``no_repeat_ngram_size``, one declaration for ``few-shot``, ``zero-shot`` and ``lora``.
- ``resolve_constraint``: the task's reply shape (``Task.output_constraint``: its JSON schema
  after a chat prompt, its layout after a completion prompt) when ``structured`` asks for it and
  the model's backend can honour it; ``on`` where it cannot is a one-line ``ConfigError``.
- ``CompletionReply``: a completion model's replies as ``AIMessage``s, so that what the backend
  says about a reply (``finish_reason``, ``constraint_error``: the reason a constrained reply did
  not close) reaches the app beside the text, as a chat model's ``response_metadata`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import ensure_config
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmapps.errors import ConfigError
from llmapps.models.batching import BatchCall, OneBatch

if TYPE_CHECKING:
    from langchain_core.language_models import BaseLLM

    from llmapps.models.local import LocalModel
    from llmapps.models.structured import OutputConstraint
    from llmapps.tasks import Task

log = logging.getLogger(__name__)

Structured = Literal["auto", "on", "off"]


class GenerationControls(BaseModel):
    """Options of a local strategy that shape what its model may write."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    structured: Structured = Field(
        "auto",
        description="constrain decoding to the task's reply shape (its JSON schema after a chat "
        "prompt, its layout after a completion prompt): auto = where the backend can, on = "
        "required (an error where it cannot), off = free text and the tolerant parser",
    )
    # Off by default, chosen on the validation split (zero-shot, SmolLM2-135M, structured=on, the
    # first 4 articles; benchmarks/results/bench_news_riddle_structured.md): 1.0 / 0 gave
    # format_valid 4/4, answer F1 0.21, ROUGE-L riddle 0.115; repetition_penalty=1.2 gave 0/4
    # (the penalty drove the summary off the article's words, to a copied "<title>"), and
    # no_repeat_ngram_size=4 2/4 (2 replies did not close; F1 0.05). With structured on, the
    # field budgets already end the loops these were meant to stop. Not measured on Gemma.
    repetition_penalty: float = Field(
        1.0, ge=1.0, le=2.0, description="penalise tokens already written (1.0: off)"
    )
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=16, description="never write an n-gram of this size twice (0: off)"
    )

    @field_validator("structured", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        # `--set structured=on` arrives as YAML's True (and off as False)
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    def generation_kwargs(self) -> dict[str, Any]:
        """The repetition settings as the LangChain local models' fields."""
        return {
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }


def backend_refusal(lm: Any, constraint: OutputConstraint) -> str | None:
    """Why ``lm``'s backend cannot constrain decoding to ``constraint``; None when it can.

    A model class says so with ``constraint_refusal(constraint) -> str | None``; one without that
    method cannot constrain at all.
    """
    check = getattr(lm, "constraint_refusal", None)
    if check is None:
        return f"the {type(lm).__name__} backend does not constrain decoding"
    reason: str | None = check(constraint)
    return reason


def resolve_constraint(
    structured: str, task: Task, lm: LocalModel, *, chat: bool, max_new_tokens: int, strategy: str
) -> OutputConstraint | None:
    """The constraint ``strategy`` hands its model for ``task``, or None for free text.

    Raises:
        ConfigError: ``structured="on"`` and the task declares no reply shape for this prompt,
            or the backend cannot honour it.
    """
    if structured == "off":
        return None

    def count(text: str) -> int:
        return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    constraint = task.output_constraint(
        chat=chat, max_new_tokens=max_new_tokens, count_tokens=count
    )
    if constraint is None:
        if structured == "on":
            shape = "json_schema" if chat else "completion layout (reply fields after the suffix)"
            raise ConfigError(
                f"structured=on: the task {task.name!r} declares no {shape} for the {strategy} "
                "strategy's prompt; use structured=auto or off"
            )
        return None
    reason = backend_refusal(lm, constraint)
    if reason is not None:
        if structured == "on":
            raise ConfigError(
                f"structured=on: {reason} (model {getattr(lm, 'name', '?')!r}); use structured=auto "
                "or off, or another backend"
            )
        log.info("%s: generating %s without a constraint: %s", strategy, task.name, reason)
        return None
    return constraint


def completion_model(
    controls: Any, task: Task, lm: LocalModel, *, max_new_tokens: int, strategy: str
) -> Any:
    """The LangChain completion model a completion strategy (few-shot, lora) generates with:
    ``lm`` on its backend, the strategy's sampling and repetition options, and the task's
    constraint as ``controls.structured`` resolves it (``resolve_constraint``)."""
    from llmapps.models.loader import completion_llm

    constraint = resolve_constraint(
        controls.structured, task, lm, chat=False, max_new_tokens=max_new_tokens, strategy=strategy
    )
    return completion_llm(
        lm,
        max_new_tokens=max_new_tokens,
        temperature=controls.temperature,
        top_p=controls.top_p,
        constraint=constraint,
        **controls.generation_kwargs(),
    )


class CompletionReply(OneBatch, RunnableSerializable[Any, AIMessage]):
    """A completion model whose replies come back as ``AIMessage``s carrying what the backend said
    (``response_metadata``: ``finish_reason``, ``constraint_error``, token counts): LangChain's
    ``BaseLLM`` returns bare strings. ``batch`` is still one batched ``generate``."""

    llm: Any  # a BaseLLM (LocalLLM or LlamaCppLLM)
    stop: list[str] = Field(default_factory=list)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @staticmethod
    def _message(generation: Any) -> AIMessage:
        info = dict(generation.generation_info or {})
        return AIMessage(content=generation.text, response_metadata=info)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        return self.batch([input], [ensure_config(config)], **kwargs)[0]

    def _batch_once(self, call: BatchCall) -> list[Any]:
        llm: BaseLLM = self.llm
        inputs, configs, kwargs = call.inputs, call.configs, call.kwargs
        try:
            result = llm.generate_prompt(
                [llm._convert_input(x) for x in inputs],
                stop=self.stop or None,
                callbacks=[c.get("callbacks") for c in configs],
                tags=[c.get("tags") for c in configs],
                metadata=[c.get("metadata") for c in configs],
                run_name=[c.get("run_name") for c in configs],
                **kwargs,
            )
        except Exception as err:
            if call.return_exceptions:
                return [err] * len(inputs)
            raise
        return [self._message(g[0]) for g in result.generations]

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        for piece in self.llm.stream(input, config, stop=self.stop or None, **kwargs):
            yield AIMessageChunk(content=piece)
