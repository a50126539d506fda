"""The metric registry, with the generic built-in metrics registered (``builtin_metrics``).

The contract (``Metric``, ``Batch``, ``METRICS`` and the lookups) is ``llmapps.api.metrics``;
this module re-exports it, and importing it registers the generic metrics, so whatever scores or
tabulates imports the registry from here.
"""

from llmapps.api.metrics import *  # noqa: F403  # re-export: the contract moved to llmapps.api
from llmapps.evaluate import builtin_metrics as _builtins  # noqa: F401  # registers them
