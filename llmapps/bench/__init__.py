"""The bench: run an app on every strategy over the same samples and compare quality, speed, cost
and memory. ``run_bench(BenchConfig(app=...), out)`` or ``llmapps bench APP``; see ``run`` for the
folder layout, ``engine`` for who answers (``LocalEngine``, ``ray_engine.RayEngine``) and
``report`` for the summary.

Names are imported lazily (PEP 562): ``llmapps.settings`` imports this package's ``settings``
section, which must not pull in the bench (that imports the settings back). ``run_bench`` here is
``llmapps.compose.run_bench`` (the bench with the strategy defaults every surface shares, as it
always was); ``llmapps.bench.run.run_bench`` takes them as ``options=``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Bench", "BenchConfig", "run_bench"]


def __getattr__(name: str) -> Any:
    if name == "run_bench":  # the old path keeps the shared strategy defaults it always had
        from llmapps.compose import run_bench

        return run_bench
    if name in __all__:
        from llmapps.bench import run

        return getattr(run, name)
    raise AttributeError(f"module 'llmapps.bench' has no attribute {name!r}")
