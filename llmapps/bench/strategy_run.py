"""One strategy of a bench, in whatever process answers it: ``BenchContext`` (the app, samples,
metrics and judge a bench scores against), ``StrategyRun`` (builds a strategy and scores batches
into result rows) and ``StrategyJob`` (a strategy of a bench as plain data, for an engine that
answers in other processes)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmapps.bench.config import BenchConfig
from llmapps.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def _prompt_text(prompt: Any) -> str:
    """A prompt as text: a completion prompt as it is, a chat one as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{getattr(m, 'type', 'message')}: {getattr(m, 'content', m)}" for m in prompt)


def build_chain(app: str, strategy: Any, app_options: Any = None) -> Any:
    """The app ``app`` built on ``strategy`` (a made ``Strategy``), as a Runnable: what
    ``llmapps.compose.load_chain`` does once the strategy is made (the bench is handed its
    strategies' options, so it never needs compose)."""
    from llmapps.api.apps import get_app
    from llmapps.options import as_kwargs

    spec = get_app(app)
    return spec.build(strategy, **as_kwargs(spec.parse_options(app_options)))


@dataclass
class BenchContext:
    """What every strategy of a bench is scored against, in one process: the app, its samples,
    the metrics and their scorer, the judge. ``Bench`` opens one; an engine running strategies
    in other processes opens one in each from the ``StrategyJob`` (``StrategyJob.open_run``).

    Raises (``open``): ``ConfigError`` for an app with no samples, a bad app option, an unknown
    strategy or a sweep no strategy takes; ``InputError`` for an empty split.
    """

    config: BenchConfig
    settings: Any
    spec: Any  # the app's AppSpec
    app_options: Any
    samples: list[dict[str, Any]]
    metrics: Any  # the MetricsConfig
    judge: Any = None

    def __post_init__(self) -> None:
        from llmapps.evaluate.scoring import Scorer

        self.scorer = Scorer(self.samples, self.metrics)

    @classmethod
    def open(
        cls, config: BenchConfig, *, settings: Any = None, metrics: Any = None
    ) -> BenchContext:
        """Check ``config`` against the registries and load the samples (no model is loaded)."""
        from llmapps.api.apps import get_app
        from llmapps.evaluate.scoring import MetricsConfig
        from llmapps.settings import get_settings
        from llmapps.strategies.base import STRATEGIES

        settings = settings or get_settings()
        spec = get_app(config.app)
        if spec.samples is None:
            raise ConfigError(f"the app {config.app!r} ships no samples to bench on")
        app_options = spec.parse_options(config.app_options)  # fail before any run
        spec.register_metrics()
        if config.judge and not (config.judge_app or spec.judge_app):
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
        samples = spec.samples(config.split)
        if config.limit:
            samples = samples[: config.limit]
        if not samples:
            raise InputError(f"the {config.split!r} split of {config.app!r} is empty")
        metrics = metrics or MetricsConfig.for_fields(
            spec.reference_keys,
            settings,
            spec.metric_fields,
            app_columns=list(spec.metric_columns),
        )
        return cls(config, settings, spec, app_options, samples, metrics)

    def load_judge(self) -> None:
        """Build the judge chain (``--judge``), if the bench has one."""
        if self.config.judge:
            from llmapps.strategies.base import make_strategy

            judge_app = self.config.judge_app or self.spec.judge_app
            assert judge_app is not None  # checked in open
            self.judge = build_chain(
                judge_app, make_strategy(self.config.judge, settings=self.settings)
            )


class StrategyJob(BaseModel):
    """One strategy of a bench as plain data (JSON): what an engine that answers in other
    processes sends them, each rebuilding the run with ``open_run``. The settings come from the
    worker's own environment (``llmapps.bench.ray_engine.worker_env`` forwards the driver's)."""

    model_config = ConfigDict(extra="forbid")

    config: BenchConfig
    metrics: dict[str, Any]
    name: str
    label: str
    options: dict[str, Any] = Field(default_factory=dict)

    def open_run(self) -> tuple[StrategyRun, dict[str, Any]]:
        """This job's ``StrategyRun`` in this process, opened, and its status."""
        from llmapps.evaluate.scoring import MetricsConfig

        context = BenchContext.open(self.config, metrics=MetricsConfig.model_validate(self.metrics))
        context.load_judge()
        srun = StrategyRun(context, self.name, self.label)
        return srun, srun.open(self.options)


class StrategyRun:
    """One strategy of a bench in this process: ``open`` builds the strategy, the app on it and
    its scoring model; ``answer`` scores one batch of samples into the rows the samples file
    holds. Every engine answers through it (``LocalEngine`` here, ``RayEngine`` in each actor),
    so both write the same rows."""

    def __init__(self, context: BenchContext, name: str, label: str | None = None) -> None:
        self.context = context
        self.name = name  # the registered strategy
        self.label = label or name  # its row in the report (a swept option's value appended)
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
        """Build the strategy, the app on it and its scoring model; the status says how it went
        (``status``, ``error``, ``options``, ``config``, ``load_s``, ``scores_perplexity``)."""
        from llmapps.bench.measure import Price
        from llmapps.strategies.base import make_strategy

        b = self.context
        status: dict[str, Any] = {"status": "ran", "error": None, "options": options}
        self.price = Price.for_strategy(self.name, b.settings)
        started = time.perf_counter()
        try:
            strategy = make_strategy(self.name, settings=b.settings, **options)
            status["config"] = strategy.describe()
            self._record_tasks(strategy)
            self.chain = build_chain(b.config.app, strategy, b.app_options)
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

    def _scoring_model(self, strategy: Any) -> Any:
        if not self.context.config.perplexity:
            return None
        try:
            return strategy.scoring_model()
        except Exception as err:  # perplexity is optional: say why it is missing
            log.warning("strategy %s has no scoring model: %s", self.name, err)
            return None

    def _generate(self, chain: Any, chunk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        from llmapps.bench.measure import CostTracker

        keys = ("id", *self.context.spec.input_keys)
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
        """The target texts (``target_field``) of the worked examples of every task built: no
        output may reproduce one."""
        field = self.context.scorer.config.target_field
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
        b = self.context
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
