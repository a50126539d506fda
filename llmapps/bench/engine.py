"""How a bench's strategies are answered: the ``Engine`` interface and the local engine.

The bench (``llmapps.bench.run.Bench``) owns the folder: which samples are still to do, the
samples files, ``strategies.json``, the progress bar. An engine only answers: handed one
strategy (``StrategyWork``) and the samples still to do, it yields each batch's result rows as
they are done and notes in ``work.status`` how the strategy ran (load time, memory, a failure).
The bench writes every row it yields (once per id: an engine may yield a retried batch again).

Engines: ``LocalEngine`` (this process, the default) and ``llmapps.bench.ray_engine.RayEngine``
(a pool of Ray actors). Adding one is a class with ``name`` and ``run`` handed to
``Bench(..., engine=...)``; answer through ``StrategyRun`` (here, or in a worker from
``work.job``) so every engine writes the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmapps.bench.strategy_run import BenchContext, StrategyJob, StrategyRun


@dataclass
class StrategyWork:
    """One strategy of a bench handed to an engine.

    Attributes:
        job: the strategy as plain data (an engine answering in other processes sends this).
        context: this process's ``BenchContext`` (an engine answering here uses it as it is).
        status: what the engine notes about the run; it starts as ``{"status": "ran", "error":
            None, "options": ...}``; a failure sets ``status="failed"`` and ``error``.
    """

    job: StrategyJob
    context: BenchContext
    status: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = {"status": "ran", "error": None, "options": self.job.options, **self.status}

    @property
    def batch_size(self) -> int:
        return self.job.config.batch_size

    def open(self) -> StrategyRun | None:
        """The strategy opened in this process (None when it cannot be built: the status says
        why)."""
        srun = StrategyRun(self.context, self.job.name, self.job.label)
        self.status.update(srun.open(self.job.options))
        return None if self.status["status"] == "failed" else srun


class Engine(Protocol):
    """Answers the samples of one strategy of a bench, batch by batch."""

    name: str

    def run(
        self, work: StrategyWork, todo: Sequence[dict[str, Any]]
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield the result rows of each batch of ``todo`` (``work.batch_size`` samples) as it
        is done; note load time, memory and any failure in ``work.status``."""
        ...


class LocalEngine:
    """Every batch in this process, one after another; the status gets the process's peak and
    added resident memory (and the GPU's peak) over the strategy's load and run."""

    name = "local"

    def run(
        self, work: StrategyWork, todo: Sequence[dict[str, Any]]
    ) -> Iterator[list[dict[str, Any]]]:
        from llmapps.bench.measure import PeakMemory
        from llmapps.runner import batched

        with PeakMemory() as mem:
            srun = work.open()
            if srun is None:
                return
            for chunk in batched(todo, work.batch_size):
                yield srun.answer(chunk)
        work.status.update(
            peak_rss_mb=mem.peak_mb, rss_delta_mb=mem.delta_mb, gpu_peak_mb=mem.gpu_peak_mb
        )
