"""``batch`` for a LangChain Runnable that answers a whole batch in one call: ``OneBatch`` (mix in
first) turns ``batch(inputs, config, ...)`` into one ``_batch_once(BatchCall)``. Imports only
``langchain_core``, so an app's Runnable may use it without loading a model backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list


@dataclass
class BatchCall:
    """One ``batch`` call as ``OneBatch._batch_once`` gets it: the inputs, the config as given and
    one config per input, ``return_exceptions`` and the call's keyword arguments."""

    inputs: list[Any]
    config: RunnableConfig | list[RunnableConfig] | None
    configs: list[RunnableConfig]
    return_exceptions: bool
    kwargs: dict[str, Any]


class OneBatch:
    """``batch`` for a Runnable that answers a whole batch in one call (``_batch_once``): an
    empty batch is empty (LangChain's own ``batch`` would call the model once per input)."""

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        return self._batch_once(BatchCall(inputs, config, configs, return_exceptions, kwargs))

    def _batch_once(self, call: BatchCall) -> list[Any]:
        raise NotImplementedError
