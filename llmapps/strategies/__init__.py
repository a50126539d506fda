"""Strategies: how an app's task reaches a model (few-shot, zero-shot, service, lora, ...).

Registered in ``STRATEGIES`` (entry-point group ``llmapps.strategies``). To add one: a config class
(pydantic, ``extra="forbid"``, ``kind: Literal["name"]``), a ``Strategy`` subclass whose ``build``
returns a LangChain Runnable, and an entry point; the conformance suite in ``tests/`` picks it up.
"""

from llmapps.strategies.base import STRATEGIES, Strategy, StrategyConfig, make_strategy

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "make_strategy"]
