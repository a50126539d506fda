"""Strategies: how an app's task reaches a model (few-shot, zero-shot, service, lora, ...).

Registered in ``STRATEGIES`` (entry-point group ``llmapps.strategies``). To add one: a config class
(pydantic, ``extra="forbid"``, ``kind: Literal["name"]``), a ``Strategy`` subclass whose ``build``
returns a LangChain Runnable, and an entry point; the conformance suite in ``tests/`` picks it up.
A strategy on one local model builds on ``local.py`` (``LocalModelStrategy``, ``LocalModelConfig``)
and loads through ``llmapps.models.loader``. The contract (``Strategy``, ``StrategyConfig``,
``STRATEGIES``, ``resolve_config``) lives in ``llmapps.api.strategies``, ``base.py`` being its old
path; settings reach a strategy from ``llmapps.compose`` and fill only the options left unset.
The registered classes are importable from here by class name (``llmapps.strategies.FewShotStrategy``).
"""

from typing import Any

from llmapps.strategies.base import STRATEGIES, Strategy, StrategyConfig, make_strategy

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "make_strategy"]


def __getattr__(name: str) -> Any:
    # the registered strategy classes by class name, imported on first use
    for registered in [] if name.startswith("_") else STRATEGIES.names():
        cls = STRATEGIES.get(registered)
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
