"""``zero-shot``: an instruction-tuned model, asked through its chat template, with no examples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from llmapps.strategies.few_shot import fit_inputs
from llmapps.strategies.local import LocalModelConfig, LocalModelStrategy
from llmapps.strategies.structured import resolve_constraint

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.settings import Settings
    from llmapps.tasks import Task


class ZeroShotStrategyConfig(LocalModelConfig):
    """Options of the ``zero-shot`` strategy."""

    kind: Literal["zero-shot"] = "zero-shot"
    instruct_model: str | None = Field(
        None,
        description="packaged name, hub id, directory or .gguf file; default: settings.instruct_model",
    )
    max_prompt_tokens: int | None = Field(
        None,
        ge=16,
        description="longer inputs are truncated; default: settings.generation.max_prompt_tokens",
    )

    def settings_defaults(self, settings: Settings) -> dict[str, Any]:
        return {
            "instruct_model": settings.instruct_model,
            "max_prompt_tokens": settings.generation.max_prompt_tokens,
        }


class ZeroShotStrategy(LocalModelStrategy):
    """Describe the task to an instruction model and hand it the input; no worked examples."""

    name = "zero-shot"
    config_class = ZeroShotStrategyConfig
    summary = "instruction-tuned model, task described zero-shot through its chat template"
    requires = "an instruct/chat causal LM (default: smollm2-135m-instruct, from the package index)"
    config: ZeroShotStrategyConfig

    model_field = "instruct_model"

    def build(self, task: Task) -> Runnable[dict[str, Any], Any]:
        from langchain_core.runnables import RunnableLambda

        from llmapps.models.loader import chat_llm

        lm = self.local_model
        c = self.resolved
        budget = self.budget(task)
        max_new = budget.max_new_tokens
        # structured: the reply is the task's JSON object (its json_schema), which the app parses
        constraint = resolve_constraint(
            c.structured, task, lm, chat=True, max_new_tokens=max_new, strategy=self.name
        )
        # the task's stop strings end a chat reply too (e.g. one line for a one-sentence summary)
        chat = chat_llm(
            lm,
            max_new_tokens=max_new,
            temperature=c.temperature,
            top_p=c.top_p,
            stop=list(task.stop),
            constraint=constraint,
            **c.generation_kwargs(),
        )

        def render(inputs: dict[str, Any]) -> str:
            msgs = task.chat.format_messages(**{k: inputs[k] for k in task.input_variables})
            return chat._prompt(msgs)

        fit = fit_inputs(task, lm, budget, render)
        return (RunnableLambda(fit, name="fit_context") | task.chat | chat).with_config(
            run_name=f"zero-shot:{task.name}"
        )
