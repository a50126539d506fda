"""Applications (chains) registered by name; ``load_chain`` (in ``llmapps.compose``) builds one on a
strategy and stays importable from here.

The contract (``AppSpec``, ``MetricFields``, ``UiSpec``, ``APPS`` and the lookups) is
``llmapps.api.apps``; this module re-exports it under the old path.

To add an app: write ``chains/<name>.py`` with an ``APP = AppSpec(...)``, its prompt files under
``prompts/<name>/``, and an entry point ``<name> = "chains.<name>:APP"`` (see CONTRIBUTING.md).
"""

from __future__ import annotations

from typing import Any

from llmapps.api.apps import (  # noqa: F401  # re-export: the contract moved to llmapps.api.apps
    APPS,
    AppSpec,
    MetricFields,
    UiSpec,
    default_app,
    default_corpus,
    get_app,
)
from llmapps.options import AppOptions as AppOptions  # where users found it


def __getattr__(name: str) -> Any:
    # load_chain moved to llmapps.compose (it joins apps, strategies and settings); lazily
    # importable from here, where users wrote it
    if name == "load_chain":
        from llmapps.compose import load_chain

        return load_chain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
