"""Fit prompts to a model's context: worked examples under a token budget, long inputs truncated.

``TokenBudgetExampleSelector`` is a LangChain example selector that, unlike LangChain's
length-based one (which counts words in list order), counts with the model's own tokenizer and can
rank examples per input (similarity, MMR) before packing as many as fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.example_selectors import BaseExampleSelector
from langchain_core.prompts import PromptTemplate

from llmapps.errors import InputError

log = logging.getLogger(__name__)

Ranker = Callable[[dict[str, Any], Sequence[dict[str, Any]]], list[int]]


class TokenBudgetExampleSelector(BaseExampleSelector):
    """Pack ranked examples while their tokens fit ``budget(input)``.

    Args:
        examples: the example bank.
        example_prompt: the template each example is rendered with.
        count_tokens: the model tokenizer's counter.
        budget: tokens available for examples, given the input (context minus prompt minus output).
        separator_tokens: tokens each separator costs.
        ranker: orders example indices for an input (default: bank order).
        max_examples: upper bound on how many are packed.
    """

    def __init__(
        self,
        examples: Sequence[dict[str, Any]],
        example_prompt: PromptTemplate,
        count_tokens: Callable[[str], int],
        budget: Callable[[dict[str, Any]], int],
        *,
        separator_tokens: int = 2,
        ranker: Ranker | None = None,
        max_examples: int | None = None,
    ) -> None:
        self.examples = list(examples)
        self.example_prompt = example_prompt
        self.count_tokens = count_tokens
        self.budget = budget
        self.separator_tokens = separator_tokens
        self.ranker = ranker
        self.max_examples = max_examples
        self._lengths: dict[int, int] = {}
        self.last_selection: list[int] = []

    def add_example(self, example: dict[str, str]) -> None:
        self.examples.append(example)

    def _length(self, i: int) -> int:
        if i not in self._lengths:
            text = self.example_prompt.format(**self.examples[i])
            self._lengths[i] = self.count_tokens(text) + self.separator_tokens
        return self._lengths[i]

    def select_examples(self, input_variables: dict[str, Any]) -> list[dict[str, Any]]:
        remaining = self.budget(input_variables)
        order = (
            self.ranker(input_variables, self.examples)
            if self.ranker
            else range(len(self.examples))
        )
        chosen: list[int] = []
        for i in order:
            if self.max_examples is not None and len(chosen) >= self.max_examples:
                break
            cost = self._length(i)
            if cost <= remaining:
                chosen.append(i)
                remaining -= cost
        self.last_selection = chosen
        log.debug("selected examples %s (%d tokens left)", chosen, remaining)
        return [self.examples[i] for i in chosen]


def truncate_to_fit(
    inputs: dict[str, Any],
    variable: str | None,
    render: Callable[[dict[str, Any]], str],
    count_tokens: Callable[[str], int],
    limit: int,
    *,
    what: str = "input",
) -> dict[str, Any]:
    """Shorten ``inputs[variable]`` (by words, from the end) until ``render(inputs)`` fits ``limit``.

    Raises ``InputError`` when even an empty ``variable`` does not fit.
    """
    if count_tokens(render(inputs)) <= limit:
        return inputs
    if not variable or variable not in inputs:
        raise InputError(
            f"the {what} is longer than the model's context ({limit} tokens) and cannot be truncated"
        )
    words = str(inputs[variable]).split()
    lo, hi = 0, len(words)
    while lo < hi:  # largest prefix that fits
        mid = (lo + hi + 1) // 2
        if count_tokens(render({**inputs, variable: " ".join(words[:mid])})) <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        raise InputError(
            f"the {what} does not fit the model's context ({limit} tokens) even without its {variable!r}"
        )
    log.warning(
        "%s %r: %s truncated from %d to %d words to fit the model's context (%d tokens)",
        what,
        inputs.get("id") or inputs.get("title", "")[:40],
        variable,
        len(words),
        lo,
        limit,
    )
    return {**inputs, variable: " ".join(words[:lo]), "_truncated": True}
