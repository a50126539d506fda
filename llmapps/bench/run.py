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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmapps.errors import ConfigError, InputError

log = logging.getLogger(__name__)


class BenchConfig(BaseModel):
    """What a bench runs; saved as ``config.json`` beside the results.

    Attributes:
        app: registered app name.
        strategies: strategy names (default: every registered strategy).
        split: the app's sample split.
        limit: use only the first ``limit`` samples.
        batch_size: samples per batch (latency is measured per batch).
        strategy_options: per strategy, config options over its offline demo options.
        app_options: options of the app (e.g. ``{"variant": "two-step"}``).
        perplexity: score the reference reply after each strategy's own prompt, under its local
            model (``llmapps.evaluate.perplexity.continuation_nll``).
        judge: a strategy used as LLM judge through ``judge_app`` (None: no judge).
        judge_app: the app that wraps the judge prompt (default: the app's ``judge_app``).
        retry_failed: run rows that failed in an earlier run again.
        sweep: option name -> values; each strategy that has the option runs once per value
            (the product over several options), labelled ``<strategy>[<key>=<value>,...]``.
    """

    model_config = ConfigDict(extra="forbid")

    app: str
    strategies: list[str] = Field(default_factory=list)
    split: str = "test"
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)
    strategy_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    app_options: dict[str, Any] = Field(default_factory=dict)
    perplexity: bool = True
    judge: str | None = None
    judge_app: str | None = None
    retry_failed: bool = False
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    def runs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(strategy, label, swept options)`` for every run of this bench, in order."""
        import itertools

        from llmapps.strategies.base import STRATEGIES

        out: list[tuple[str, str, dict[str, Any]]] = []
        for name in self.strategies:
            fields = STRATEGIES.get(name).config_class.model_fields
            keys = [k for k in self.sweep if k in fields]
            if not keys:
                out.append((name, name, {}))
                continue
            # a label names a file: a path value shows as its last part (its whole self, slashes
            # replaced, where two values share a last part)
            short = {k: len({_value_text(v, short=True) for v in self.sweep[k]}) for k in keys}
            for values in itertools.product(*(self.sweep[k] for k in keys)):
                opts = dict(zip(keys, values, strict=True))
                label = ",".join(
                    f"{k}={_value_text(v, short=short[k] == len(self.sweep[k]))}"
                    for k, v in opts.items()
                )
                out.append((name, f"{name}[{label}]", opts))
        return out


def parse_sweep(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["structured=on,off"]`` -> ``{"structured": ["on", "off"]}`` (``--sweep`` flags; each
    value a YAML scalar as ``--set`` reads it, ``on``/``off`` kept as words)."""
    from llmapps.options import parse_assignments, parse_value

    out: dict[str, list[Any]] = {}
    for item in items:
        ((key, _),) = parse_assignments([item.split(",")[0]], "--sweep").items()
        raw = item.partition("=")[2]
        words = [v.strip() for v in raw.split(",") if v.strip()]
        out[key] = [v if v in ("on", "off") else parse_value(v) for v in words]
    return out


def _prompt_text(prompt: Any) -> str:
    """A prompt as text: a completion prompt as it is, a chat one as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{getattr(m, 'type', 'message')}: {getattr(m, 'content', m)}" for m in prompt)


def _value_text(value: Any, *, short: bool = True) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value)
    if "/" in text or os.sep in text:  # a path: never a folder of its own under samples/
        text = text.rstrip("/" + os.sep)
        return Path(text).name if short else text.strip("/").replace("/", "_").replace(os.sep, "_")
    return text


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


class StrategyRun:
    """One strategy's pass over the samples it has not done yet: ``open`` builds the strategy,
    the app on it, the scoring model and the judge; ``answer`` scores one batch of samples;
    ``run`` does both for the local bench (``llmapps.ray_engine`` drives ``open``/``answer`` in
    each Ray actor, so both engines write the same rows)."""

    def __init__(self, bench: Bench, name: str, label: str | None = None) -> None:
        self.bench = bench
        self.name = name  # the registered strategy
        self.label = label or name  # its row in the report (a swept option's value appended)
        self.path = bench.out / "samples" / f"{self.label}.jsonl"
        self.tasks: list[Any] = []  # the tasks the app built on the strategy
        self.prompts: list[list[Any]] = []  # per sample of the last batch: the prompts it sent

    def _record_tasks(self, strategy: Any) -> None:
        """Note every task the app builds on ``strategy``: the bench scores references in its
        layouts and checks riddles against its worked examples, without knowing the app."""
        build = strategy.build

        def recording_build(task: Any) -> Any:
            self.tasks.append(task)
            return build(task)

        strategy.build = recording_build

    def open(self, options: dict[str, Any]) -> dict[str, Any]:
        """Build the strategy, the app on it and its scoring model; the status says how it went.

        ``answer`` then scores batches; ``run`` does both in this process, and
        ``llmapps.ray_engine`` does them in each actor of a pool (``--engine ray``).
        """
        from llmapps.apps import load_chain
        from llmapps.bench.measure import Price
        from llmapps.strategies.base import make_strategy

        b = self.bench
        status: dict[str, Any] = {"status": "ran", "error": None, "options": options}
        self.price = Price.for_strategy(self.name, b.settings)
        started = time.perf_counter()
        try:
            strategy = make_strategy(self.name, **options)
            status["config"] = strategy.describe()
            self._record_tasks(strategy)
            self.chain = load_chain(b.config.app, strategy, app_options=b.app_options)
            self.scoring = self._scoring_model(strategy)
        except Exception as err:  # any backend fault: record it, let the others run
            log.warning("strategy %s cannot run: %s", self.name, err)
            status.update(status="failed", error=f"{type(err).__name__}: {err}")
            return status
        status["load_s"] = round(time.perf_counter() - started, 3)
        status["scores_perplexity"] = self.scoring is not None
        return status

    def answer(self, chunk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The scored result rows of one batch of samples, as the samples file holds them."""
        rows = self._generate(self.chain, chunk)
        self._score(chunk, rows, self.scoring)
        out = []
        for sample, row in zip(chunk, rows, strict=True):
            row["cost_usd"] = round(self.price.cost(row), 10)
            out.append({"id": str(sample["id"]), "strategy": self.label, **row})
        return out

    def run(self, todo: Sequence[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
        from llmapps.bench.measure import PeakMemory
        from llmapps.runner import JsonlWriter, batched

        b = self.bench
        with PeakMemory() as mem:
            status = self.open(options)
            if status["status"] == "failed":
                return status
            with JsonlWriter(self.path) as writer:
                for chunk in batched(todo, b.config.batch_size):
                    for row in self.answer(chunk):
                        writer.write(row)
                    b.advance(len(chunk))
        status.update(
            peak_rss_mb=mem.peak_mb, rss_delta_mb=mem.delta_mb, gpu_peak_mb=mem.gpu_peak_mb
        )
        return status

    def _scoring_model(self, strategy: Any) -> Any:
        if not self.bench.config.perplexity:
            return None
        try:
            return strategy.scoring_model()
        except Exception as err:  # perplexity is optional: say why it is missing
            log.warning("strategy %s has no scoring model: %s", self.name, err)
            return None

    def _generate(self, chain: Any, chunk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        from llmapps.bench.measure import CostTracker

        keys = ("id", *self.bench.spec.input_keys)
        inputs = [{k: s[k] for k in keys if k in s} for s in chunk]
        trackers = [CostTracker() for _ in chunk]
        started = time.perf_counter()
        try:
            outs: list[Any] = chain.batch(
                inputs, config=[{"callbacks": [t]} for t in trackers], return_exceptions=True
            )
        except Exception as err:  # a batch that fails as a whole fails each of its rows
            outs = [err] * len(chunk)
        elapsed = time.perf_counter() - started
        self.prompts = [t.prompts for t in trackers]
        rows = []
        for out, tracker in zip(outs, trackers, strict=True):
            if isinstance(out, Exception):
                row: dict[str, Any] = {"valid": False, "error": f"{type(out).__name__}: {out}"}
            elif isinstance(out, dict):
                row = dict(out)
            else:
                row = {"output": str(out)}
            row.update(
                latency_s=round(elapsed, 4),
                batch_size=len(chunk),
                sample_s=round(elapsed / len(chunk), 4),
                **tracker.as_dict(),
            )
            if tracker.prompts:  # what the model was sent, for the results view (llmapps ui)
                row["prompt"] = "\n\n".join(_prompt_text(p) for p in tracker.prompts)
            rows.append(row)
        return rows

    def example_texts(self) -> list[str]:
        """The riddles (``riddle_field``) of the worked examples of every task built: no riddle may
        reproduce one."""
        field = self.bench.scorer.config.riddle_field
        return (
            [ex[field] for t in self.tasks for ex in t.examples if isinstance(ex.get(field), str)]
            if field
            else []
        )

    def conditioned_texts(
        self, chunk: Sequence[dict[str, Any]], scoring: Any
    ) -> list[tuple[str, str] | None]:
        """Per sample, (prompt it was sent, reference reply in that prompt's layout), or None
        when that cannot be said: not one task, not one model call, or no reply layout."""
        from langchain_core.messages import convert_to_openai_messages

        out: list[tuple[str, str] | None] = []
        task = self.tasks[0] if len(self.tasks) == 1 else None
        for sample, sent in zip(chunk, self.prompts or [[]] * len(chunk), strict=True):
            if task is None or len(sent) != 1:
                out.append(None)
                continue
            chat = not isinstance(sent[0], str)
            values = {k: sample.get(k) for k in task.input_variables}
            values.update({k: sample.get(f"reference_{k}") for k in task.output_variables})
            if any(not isinstance(v, str) for v in values.values()):
                out.append(None)
                continue
            reply = task.reference_reply(values, chat=chat)
            try:
                prompt = (
                    scoring.apply_chat_template(
                        convert_to_openai_messages(sent[0], text_format="string")
                    )
                    if chat
                    else sent[0]
                )
            except Exception as err:  # e.g. no chat template: no figure, say why once per row
                log.debug("cannot render the chat prompt for perplexity: %s", err)
                prompt = None
            out.append((prompt, reply) if reply and prompt is not None else None)
        return out

    def _score(
        self, chunk: Sequence[dict[str, Any]], rows: list[dict[str, Any]], scoring: Any
    ) -> None:
        b = self.bench
        for row, sample in zip(rows, chunk, strict=True):
            row["id"] = str(sample["id"])
        metrics = b.scorer.score(rows, copy_texts=self.example_texts())
        if (
            b.spec.score is not None
        ):  # the app's own metrics (AppSpec.score), beside the generic ones
            for m, sample, row in zip(metrics, chunk, rows, strict=True):
                m.update(b.spec.score(sample, row))
        if scoring is not None:
            from llmapps.evaluate.perplexity import continuation_nll

            pairs = self.conditioned_texts(chunk, scoring)
            todo = [(i, p) for i, p in enumerate(pairs) if p is not None]
            scored = continuation_nll(scoring, [p[0] for _, p in todo], [p[1] for _, p in todo])
            for (i, _), (nll, n) in zip(todo, scored, strict=True):
                metrics[i].update(ppl_nll=round(nll, 6), ppl_tokens=n)
        if b.judge is not None:
            from llmapps.evaluate.judge import judge_rows

            for m, verdict in zip(metrics, judge_rows(b.judge, chunk, rows), strict=True):
                m.update(verdict)
        for row, m in zip(rows, metrics, strict=True):
            del row["id"]
            row["metrics"] = m


class Bench:
    """A bench run over one folder; ``run()`` does the work, ``summary()`` reads it back."""

    def __init__(
        self,
        config: BenchConfig,
        out: Path,
        *,
        settings: Any = None,
        progress: bool = True,
        metrics: Any = None,
        engine: Any = None,
    ) -> None:
        from llmapps.apps import get_app
        from llmapps.evaluate.scoring import MetricsConfig, Scorer
        from llmapps.settings import get_settings
        from llmapps.strategies.base import STRATEGIES

        self.settings = settings or get_settings()
        self.spec = get_app(config.app)
        if self.spec.samples is None:
            raise ConfigError(f"the app {config.app!r} ships no samples to bench on")
        self.app_options = self.spec.parse_options(config.app_options)  # fail before any run
        self.spec.register_metrics()
        if config.judge and not (config.judge_app or self.spec.judge_app):
            raise ConfigError(
                f"the app {config.app!r} names no judge app (AppSpec.judge_app); pass --judge-app"
            )
        if not config.strategies:
            config = config.model_copy(update={"strategies": STRATEGIES.names()})
        for name in config.strategies:  # unknown names fail before anything runs
            STRATEGIES.get(name)
        for key, values in config.sweep.items():  # so do options no strategy of the bench has
            takers = [
                n for n in config.strategies if key in STRATEGIES.get(n).config_class.model_fields
            ]
            if not takers or not values:
                why = (
                    f"no strategy of this bench ({', '.join(config.strategies)}) has that option"
                    if not takers
                    else "give at least one value"
                )
                raise ConfigError(f"sweep {key}={values}: {why}")
        self.config = config
        self.out = Path(out)
        samples = self.spec.samples(config.split)
        if config.limit:
            samples = samples[: config.limit]
        if not samples:
            raise InputError(f"the {config.split!r} split of {config.app!r} is empty")
        self.samples = samples
        self.metrics = metrics or MetricsConfig.for_fields(
            self.spec.reference_keys,
            self.settings,
            self.spec.metric_fields,
            app_columns=list(self.spec.metric_columns),
        )
        self.scorer = Scorer(samples, self.metrics)
        self.progress = progress
        self.engine = engine  # None: this process; a RayEngineConfig: llmapps.ray_engine
        self.judge: Any = None
        self._bar: Any = None

    def load_judge(self) -> None:
        """Build the judge chain (``--judge``), if the bench has one."""
        if self.config.judge:
            from llmapps.apps import load_chain

            judge_app = self.config.judge_app or self.spec.judge_app
            assert judge_app is not None  # checked in __init__
            self.judge = load_chain(judge_app, self.config.judge)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

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

    def run(self) -> list[dict[str, Any]]:
        """Run every strategy on the samples it has not done; return the summary rows."""
        from tqdm.auto import tqdm

        from llmapps.compose import strategy_options as compose_options
        from llmapps.models.local import clear_model_cache

        _check_folder(self.out, self.config)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.load_judge()
        from llmapps.models.local import BUILTIN_MODELS

        if {self.settings.base_model, self.settings.instruct_model} & set(BUILTIN_MODELS):
            from llmapps.apps import default_corpus
            from llmapps.models.tiny import ensure_tiny_models

            # build once up front, so no strategy's load time or memory includes training
            ensure_tiny_models(
                self.settings.models_dir, corpus=default_corpus, progress=self.progress
            )
        if self.scorer.config.semantic or self.scorer.config.target_field:
            _ = self.scorer.index  # load the embedder before measuring any strategy's memory
        statuses = self.statuses()
        for name, label, swept in self.config.runs():
            srun = StrategyRun(self, name, label)
            done = _load_rows(srun.path, self.config.retry_failed)
            todo = [s for s in self.samples if str(s["id"]) not in done]
            if not todo:
                log.info("%s: all %d samples already done", label, len(self.samples))
                continue
            clear_model_cache()  # each strategy's memory is measured without the previous one's
            gc.collect()
            given = {**self.config.strategy_options.get(name, {}), **swept}
            # the defaults every surface shares (llmapps.compose): the demo's, the web app's
            with compose_options(name, self.settings, given) as (options, reason):
                if reason is not None or options is None:
                    statuses[label] = {"status": "skipped", "error": reason}
                    _write_json(self.out / "strategies.json", statuses)
                    continue
                self._bar = tqdm(
                    total=len(todo), desc=label, unit="sample", disable=not self.progress
                )
                try:
                    if self.engine is None:
                        status = srun.run(todo, options)
                    else:  # --engine ray: a pool of actors answers, this process writes
                        from llmapps.ray_engine import run_bench_strategy

                        status = run_bench_strategy(srun, todo, options, self.engine)
                finally:
                    self._bar.close()
                    self._bar = None
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

    def rows(self, name: str) -> list[dict[str, Any]]:
        from llmapps.runner import read_done

        ids = {str(s["id"]) for s in self.samples}
        return [r for k, r in read_done(self.out / "samples" / f"{name}.jsonl").items() if k in ids]

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
    config: BenchConfig, out: Path, *, progress: bool = True, settings: Any = None
) -> list[dict[str, Any]]:
    """Run a bench into ``out`` and write its summary and plots; return the summary rows.

    Example:
        >>> rows = run_bench(BenchConfig(app="news-riddle", strategies=["few-shot"]), Path("runs/x"))  # doctest: +SKIP
    """
    from llmapps.bench.report import write_reports

    bench = Bench(config, out, settings=settings, progress=progress)
    rows = bench.run()
    write_reports(rows, bench.out, bench.metrics)
    return rows
