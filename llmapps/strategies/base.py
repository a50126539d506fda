"""The strategy contract's old path: it lives in ``llmapps.api.strategies`` (apps import it from
there); these names stay importable from here."""

from llmapps.api.strategies import (
    STRATEGIES,
    Strategy,
    StrategyConfig,
    make_strategy,
    resolve_config,
    strategy_from_config,
)

__all__ = [
    "STRATEGIES",
    "Strategy",
    "StrategyConfig",
    "make_strategy",
    "resolve_config",
    "strategy_from_config",
]
