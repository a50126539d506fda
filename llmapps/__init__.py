"""llmapps: build LLM applications on LangChain, and decide with numbers how to build them.

Quick start::

    from llmapps import load_chain
    chain = load_chain("news-riddle", strategy="few-shot")   # a LangChain Runnable
    chain.invoke({"title": "...", "text": "..."})

Heavy libraries (torch, transformers) load only when a model is first used.

The map, top to bottom (imports run one way; ``tests/test_layering.py`` checks it): ``cli`` (the
command line; nothing imports it) -> ``compose`` (joins apps, strategies, models and settings:
``load_chain``) -> the surfaces ``bench`` (with its engines), ``serving``, ``ui``, ``demo`` ->
``strategies``, ``evaluate`` (generic metrics), ``retrieval``, ``audit``, ``data``, ``ingest`` ->
``models`` (backends, one loader), ``adapters``, ``service`` (the API client) -> ``api`` (the
contracts: apps, metrics, backends, generation) and ``tasks`` -> the foundation (``settings``,
``options``, ``registry``, ``errors``, files and locks). Apps live outside (``chains/``) and
register through entry points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "get_app", "load_chain", "make_strategy"]

if TYPE_CHECKING:
    from llmapps.api.apps import get_app
    from llmapps.compose import load_chain
    from llmapps.strategies.base import make_strategy


def __getattr__(name: str) -> Any:
    if name == "load_chain":
        from llmapps.compose import load_chain

        return load_chain
    if name == "get_app":
        from llmapps.api.apps import get_app

        return get_app
    if name == "make_strategy":
        from llmapps.strategies.base import make_strategy

        return make_strategy
    raise AttributeError(f"module 'llmapps' has no attribute {name!r}")
