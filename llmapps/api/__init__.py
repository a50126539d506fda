"""Contracts: the small typed interfaces the rest of llmapps and the apps build on.

One module per contract (e.g. ``llmapps.api.metrics`` holds ``Metric`` and the ``METRICS``
registry). This package sits at the bottom of the import graph: its modules import only the
foundation modules (errors, registry, settings, options, tasks), never a layer above them.
This file imports nothing on purpose.
"""
