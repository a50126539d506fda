"""``few-shot``: a base (foundation) model prompted with worked examples.

The seed's first path. Examples are packed, ranked per input, into the model's context minus the
generation budget, counted with the model's own tokenizer, in the task's ``###``-separated layout.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from llmapps.errors import ConfigError
from llmapps.strategies.local import LocalModelConfig, LocalModelStrategy
from llmapps.strategies.structured import CompletionReply, completion_model

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.api.generation import Budget
    from llmapps.models.local import LocalModel
    from llmapps.settings import Settings
    from llmapps.tasks import Task

EXAMPLE_SELECTIONS = ("order", "similarity", "mmr")


class FewShotStrategyConfig(LocalModelConfig):
    """Options of the ``few-shot`` strategy."""

    kind: Literal["few-shot"] = "few-shot"
    base_model: str | None = Field(
        None,
        description="packaged name, hub id, directory or .gguf file; default: settings.base_model",
    )
    max_examples: int | None = Field(None, ge=0)
    max_prompt_tokens: int | None = Field(
        None,
        ge=16,
        description="examples are packed up to this many prompt tokens; "
        "default: settings.generation.max_prompt_tokens (the model's context is the ceiling)",
    )
    example_selection: Literal["order", "similarity", "mmr"] = Field(
        "similarity",
        description="similarity/mmr: rank the examples per input (embeddings); order: bank order",
    )

    def settings_defaults(self, settings: Settings) -> dict[str, Any]:
        return {
            "base_model": settings.base_model,
            "max_prompt_tokens": settings.generation.max_prompt_tokens,
        }


def prompt_limit(lm: Any, budget: Budget) -> int:
    """Tokens a prompt may have: the prompt budget (``budget.max_prompt_tokens``; None: none),
    within ``lm``'s context less the ``budget.max_new_tokens`` to generate. The context is the
    ceiling, never the target: packing 8 prompts to Gemma 3's 32,768 tokens was OOM-killed at
    24 GB."""
    room = int(lm.context_length) - budget.max_new_tokens
    return room if budget.max_prompt_tokens is None else min(room, budget.max_prompt_tokens)


def fit_inputs(task: Task, lm: LocalModel, budget: Budget, render: Any) -> Any:
    """A function that truncates an input so its prompt fits the prompt ``budget``."""
    from llmapps.prompting import truncate_to_fit

    limit = prompt_limit(lm, budget)

    def fit(inputs: dict[str, Any]) -> dict[str, Any]:
        return truncate_to_fit(
            inputs,
            task.truncate_variable,
            render,
            lm.count_tokens,
            limit,
            what=f"{task.name} input",
        )

    return fit


class FewShotStrategy(LocalModelStrategy):
    """Prompt a base model with as many ranked worked examples as fit its context."""

    name = "few-shot"
    config_class = FewShotStrategyConfig
    summary = "base (foundation) model + worked examples packed into its context"
    requires = "a base causal LM (default: gemma-3-270m, from the package index)"
    config: FewShotStrategyConfig

    @functools.cached_property
    def selectors(self) -> dict[str, Any]:
        """Per task name, the example selector of the prompt last built for it (its
        ``last_selection`` shows in debug output)."""
        return {}

    def ranker(self, task: Task) -> Any:
        """Orders the example bank per input; ``order`` keeps the bank's order."""
        if self.config.example_selection == "order":
            return None
        from llmapps.strategies import selection

        try:
            return selection.make_ranker(self.config.example_selection, task)
        except (ImportError, AttributeError) as err:
            raise ConfigError(
                f"example_selection={self.config.example_selection!r} needs the retrieval "
                f"extension, which is not available: {err}"
            ) from err

    def build(self, task: Task) -> Runnable[dict[str, Any], Any]:
        lm = self.local_model
        max_new = self.budget(task).max_new_tokens
        llm = completion_model(self.config, task, lm, max_new_tokens=max_new, strategy=self.name)
        chain = self.prompt(task) | CompletionReply(llm=llm, stop=list(task.stop))
        return chain.with_config(run_name=f"few-shot:{task.name}")

    def prompt(self, task: Task) -> Runnable[dict[str, Any], Any]:
        """Input dict in, the packed few-shot prompt out (what ``build`` hands the model)."""
        from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate
        from langchain_core.runnables import RunnableLambda

        from llmapps.prompting import TokenBudgetExampleSelector

        lm = self.local_model
        c = self.resolved
        budget = self.budget(task)
        layout = task.completion
        example_prompt = PromptTemplate.from_template(layout.example_template)
        sep_tokens = max(
            1, len(lm.tokenizer(layout.separator, add_special_tokens=False)["input_ids"])
        )
        limit = prompt_limit(lm, budget)

        def room(inputs: dict[str, Any]) -> int:  # tokens left for examples beside this input
            return limit - lm.count_tokens(layout.render(inputs)) - sep_tokens

        selector = TokenBudgetExampleSelector(
            task.examples,
            example_prompt,
            lm.count_tokens,
            room,
            separator_tokens=sep_tokens,
            ranker=self.ranker(task),
            max_examples=c.max_examples,
        )
        prompt = FewShotPromptTemplate(
            example_selector=selector,
            example_prompt=example_prompt,
            prefix=layout.prefix,
            suffix=layout.suffix,
            example_separator=layout.separator,
            input_variables=list(task.input_variables),
        )
        fit = fit_inputs(task, lm, budget, layout.render)
        self.selectors[task.name] = selector
        return RunnableLambda(fit, name="fit_context") | prompt
