"""The bench: run an app on every strategy over the same samples and compare quality, speed, cost
and memory. ``run_bench(BenchConfig(app=...), out)`` or ``llmapps bench APP``; see ``run`` for the
folder layout and ``report`` for the summary."""

from __future__ import annotations

from llmapps.bench.run import Bench, BenchConfig, run_bench

__all__ = ["Bench", "BenchConfig", "run_bench"]
