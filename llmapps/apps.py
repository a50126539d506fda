"""Applications (chains) registered by name, and ``load_chain`` to build one on a strategy.

The contract (``AppSpec``, ``MetricFields``, ``UiSpec``, ``APPS`` and the lookups) is
``llmapps.api.apps``; this module re-exports it under the old path.

To add an app: write ``chains/<name>.py`` with an ``APP = AppSpec(...)``, its prompt files under
``prompts/<name>/``, and an entry point ``<name> = "chains.<name>:APP"`` (see CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmapps.api.apps import (  # noqa: F401  # re-export: the contract moved to llmapps.api.apps
    APPS,
    AppSpec,
    MetricFields,
    UiSpec,
    default_app,
    default_corpus,
    get_app,
)
from llmapps.options import AppOptions, as_kwargs

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.strategies.base import Strategy


def load_chain(
    app: str,
    strategy: str | Strategy = "few-shot",
    *,
    app_options: Mapping[str, Any] | AppOptions | None = None,
    **strategy_options: Any,
) -> Runnable[Any, Any]:
    """Build the app ``app`` on ``strategy`` and return it as a LangChain ``Runnable``.

    Example:
        >>> chain = load_chain("news-riddle", strategy="few-shot")  # doctest: +SKIP
        >>> chain.invoke({"title": "...", "text": "..."})           # doctest: +SKIP

    Args:
        app: a registered app name (``llmapps apps`` lists them).
        strategy: a registered strategy name or a ``Strategy`` instance.
        app_options: options for the app itself, validated by its ``AppSpec.options`` model
            (unknown names and bad values are a ``ConfigError`` naming the valid ones).
        **strategy_options: fields of the strategy's config (e.g. ``base_model=...``).
    """
    from llmapps.strategies.base import Strategy, make_strategy

    spec = get_app(app)
    options = spec.parse_options(app_options)  # before any model is loaded
    strat = (
        strategy if isinstance(strategy, Strategy) else make_strategy(strategy, **strategy_options)
    )
    return spec.build(strat, **as_kwargs(options))
