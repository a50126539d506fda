"""Run an app on every strategy over the same samples, writing each scored result as it is done.

Layout of a bench folder::

    config.json            resolved config, strategy configs and library versions
    references.jsonl       the samples (inputs + reference_<field>) every strategy ran on
    samples/<strategy>.jsonl   one row per sample: outputs, latency, tokens, cost, metrics, error
                           (a swept strategy: samples/<strategy>[<key>=<value>].jsonl, one per value)
    strategies.json        per strategy: status, error, load time, peak memory
    summary.{md,csv,json}  one row per strategy          plots/*.png

Rows are appended and fsynced one by one; a rerun into the same folder skips the ids already in a
strategy's file (a torn last line from a kill is dropped), so a killed bench loses and repeats
nothing already written. A strategy that cannot be built is recorded with its error and the
others go on.

Who answers is an engine (``llmapps.bench.engine``: ``LocalEngine`` by default, or
``llmapps.bench.ray_engine.RayEngine``); which options a strategy runs with beyond those given is
the caller's ``options`` (``llmapps.compose.strategy_options`` for the defaults every surface
shares, as ``llmapps bench`` passes; none: the options given alone).

``sweep`` runs a strategy once per value of an option (``llmapps bench --sweep
structured=on,off``), over the same samples, as rows of the same report named
``<strategy>[<key>=<value>]``: what the option is worth, side by side.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from llmapps.bench.config import BenchConfig, parse_sweep
from llmapps.bench.engine import Engine, LocalEngine, StrategyWork
from llmapps.bench.strategy_run import BenchContext, StrategyJob, StrategyRun
from llmapps.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "Bench",
    "BenchConfig",
    "BenchContext",
    "OptionsFor",
    "StrategyRun",
    "given_options",
    "parse_sweep",
    "run_bench",
]

# (strategy name, settings, options given) -> a context holding (options, reason): the options the
# strategy runs with for the block, or None and the reason it cannot run (llmapps.compose's
# strategy_options is one).
OptionsFor = Callable[
    [str, Any, Mapping[str, Any]],
    AbstractContextManager[tuple[dict[str, Any] | None, str | None]],
]


@contextlib.contextmanager
def given_options(
    name: str, settings: Any, given: Mapping[str, Any]
) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """The options given, as they are: no strategy's offline defaults (``OptionsFor``)."""
    yield dict(given), None


def _write_json(path: Path, data: Any) -> None:
    """Write atomically, so a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(
        json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    os.replace(tmp, path)


def _check_folder(out: Path, config: BenchConfig) -> None:
    """A folder is reused only for the same app and split: ids would otherwise mean other things."""
    path = out / "config.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text()).get("bench", {})
    except json.JSONDecodeError:
        return
    for key in ("app", "split", "limit"):
        if key in old and old[key] != getattr(config, key):
            raise ConfigError(
                f"{out} holds a bench of {key}={old[key]!r}, not {getattr(config, key)!r}; "
                "pass another --out folder to start a new bench"
            )


def _load_rows(path: Path, retry_failed: bool) -> dict[str, dict[str, Any]]:
    from llmapps.runner import read_done

    done = read_done(path)
    if retry_failed and any(r.get("error") for r in done.values()):
        done = {k: r for k, r in done.items() if not r.get("error")}
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()),
            encoding="utf-8",
        )
        os.replace(tmp, path)
    return done


class Bench:
    """A bench run over one folder; ``run()`` does the work, ``summary()`` reads it back.

    Args:
        config: what to run.
        out: the folder.
        settings: default ``get_settings()``.
        progress: show a progress bar per strategy.
        metrics: the ``MetricsConfig`` (default: the app's fields' metrics).
        engine: who answers (default ``LocalEngine()``, this process).
        options: the options each strategy runs with over those given (default
            ``given_options``: none; ``llmapps.compose.strategy_options``: the shared defaults).
    """

    def __init__(
        self,
        config: BenchConfig,
        out: Path,
        *,
        settings: Any = None,
        progress: bool = True,
        metrics: Any = None,
        engine: Engine | None = None,
        options: OptionsFor | None = None,
    ) -> None:
        self.context = c = BenchContext.open(config, settings=settings, metrics=metrics)
        self.config, self.settings, self.spec = c.config, c.settings, c.spec
        self.samples, self.metrics, self.scorer = c.samples, c.metrics, c.scorer
        self.out = Path(out)
        self.progress = progress
        self.engine: Engine = engine or LocalEngine()
        self.options_for: OptionsFor = options or given_options

    def load_judge(self) -> None:
        """Build the judge chain (``--judge``), if the bench has one."""
        self.context.load_judge()

    def _write_config(self) -> None:
        from llmapps.bench.measure import versions

        path = self.out / "config.json"
        old: dict[str, Any] = {}
        if path.exists():
            with contextlib.suppress(json.JSONDecodeError):
                old = json.loads(path.read_text())
        ran = sorted(set(old.get("bench", {}).get("strategies", [])) | set(self.config.strategies))
        data = {
            "bench": {**self.config.model_dump(mode="json"), "strategies": ran},
            "metrics": self.metrics.model_dump(mode="json"),
            "settings": self.settings.model_dump(mode="json"),
            "versions": versions(),
            "runs": [
                *old.get("runs", []),
                {"strategies": self.config.strategies, "started": time.time()},
            ],
        }
        _write_json(path, data)
        refs = self.out / "references.jsonl"
        if not refs.exists():
            tmp = refs.with_suffix(".jsonl.tmp")
            tmp.write_text(
                "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in self.samples),
                encoding="utf-8",
            )
            os.replace(tmp, refs)

    def statuses(self) -> dict[str, dict[str, Any]]:
        path = self.out / "strategies.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _samples_file(self, label: str) -> Path:
        return self.out / "samples" / f"{label}.jsonl"

    def run(self) -> list[dict[str, Any]]:
        """Run every strategy on the samples it has not done; return the summary rows."""
        from llmapps.models.local import BUILTIN_MODELS, clear_model_cache

        _check_folder(self.out, self.config)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.load_judge()
        if {self.settings.base_model, self.settings.instruct_model} & set(BUILTIN_MODELS):
            from llmapps.api.apps import default_corpus
            from llmapps.models.tiny import ensure_tiny_models

            # build once up front, so no strategy's load time or memory includes training
            ensure_tiny_models(
                self.settings.models_dir, corpus=default_corpus, progress=self.progress
            )
        if self.scorer.config.semantic or self.scorer.config.target_field:
            _ = self.scorer.index  # load the embedder before measuring any strategy's memory
        statuses = self.statuses()
        for name, label, swept in self.config.runs():
            path = self._samples_file(label)
            done = _load_rows(path, self.config.retry_failed)
            todo = [s for s in self.samples if str(s["id"]) not in done]
            if not todo:
                log.info("%s: all %d samples already done", label, len(self.samples))
                continue
            clear_model_cache()  # each strategy's memory is measured without the previous one's
            gc.collect()
            given = {**self.config.strategy_options.get(name, {}), **swept}
            with self.options_for(name, self.settings, given) as (options, reason):
                if reason is not None or options is None:
                    statuses[label] = {"status": "skipped", "error": reason}
                    _write_json(self.out / "strategies.json", statuses)
                    continue
                job = StrategyJob(
                    config=self.config,
                    metrics=self.metrics.model_dump(mode="json"),
                    name=name,
                    label=label,
                    options=options,
                )
                status = self._answer(StrategyWork(job, self.context), todo, path)
            prev = statuses.get(label, {})
            if (
                prev.get("status") == "ran" and status["status"] == "ran"
            ):  # resumed: keep the worst case
                for key in ("peak_rss_mb", "rss_delta_mb", "load_s"):
                    if isinstance(prev.get(key), (int, float)) and isinstance(
                        status.get(key), (int, float)
                    ):
                        status[key] = max(prev[key], status[key])
            statuses[label] = status
            _write_json(self.out / "strategies.json", statuses)
        clear_model_cache()
        return self.summary()

    def _answer(self, work: StrategyWork, todo: list[dict[str, Any]], path: Path) -> dict[str, Any]:
        """Let the engine answer ``todo``; append each row to ``path`` once per id, as it comes
        (the file is made only when the first row is: a strategy that failed to build leaves none,
        so a rerun retries it)."""
        from tqdm.auto import tqdm

        from llmapps.runner import JsonlWriter

        written: set[str] = set()
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(
                tqdm(total=len(todo), desc=work.job.label, unit="sample", disable=not self.progress)
            )
            writer: JsonlWriter | None = None
            for rows in self.engine.run(work, todo):
                for row in rows:
                    if row["id"] in written:  # a batch an engine retried: one row per id
                        continue
                    if writer is None:
                        writer = stack.enter_context(JsonlWriter(path))
                    written.add(row["id"])
                    writer.write(row)
                    bar.update(1)
        return work.status

    def rows(self, name: str) -> list[dict[str, Any]]:
        from llmapps.runner import read_done

        ids = {str(s["id"]) for s in self.samples}
        return [r for k, r in read_done(self._samples_file(name)).items() if k in ids]

    def summary(self) -> list[dict[str, Any]]:
        """One row per strategy of this bench, from what is on disk."""
        from llmapps.bench.report import summarise

        statuses = self.statuses()
        refs = {str(s["id"]): s for s in self.samples}
        return [
            summarise(
                label,
                self.rows(label),
                statuses.get(label, {}),
                self.metrics,
                refs,
                len(self.samples),
            )
            for _, label, _ in self.config.runs()
        ]


def run_bench(
    config: BenchConfig,
    out: Path,
    *,
    progress: bool = True,
    settings: Any = None,
    engine: Engine | None = None,
    options: OptionsFor | None = None,
) -> list[dict[str, Any]]:
    """Run a bench into ``out`` and write its summary and plots; return the summary rows.

    ``options`` as for ``Bench`` (default: the options given alone); ``llmapps.compose.run_bench``
    is this with the defaults every surface shares (lora's demo adapter, service's local server).

    Example:
        >>> rows = run_bench(BenchConfig(app="news-riddle", strategies=["few-shot"]), Path("runs/x"))  # doctest: +SKIP
    """
    from llmapps.bench.report import write_reports

    bench = Bench(config, out, settings=settings, progress=progress, engine=engine, options=options)
    rows = bench.run()
    write_reports(rows, bench.out, bench.metrics)
    return rows
