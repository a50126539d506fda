"""The app contract: ``AppSpec`` (what an app tells the framework about itself), the ``APPS``
registry and the lookups (``get_app``, ``default_app``, ``default_corpus``).

An app lives outside the core (``chains/`` in this project, or any package) and registers an
``AppSpec`` under the ``llmapps.apps`` entry-point group. The core knows nothing about what an
app does: it builds it on a strategy (``llmapps.compose.load_chain``), reads its sample inputs,
its fields (``MetricFields``) and, for the built-in tiny models, its text corpus. An app's own
metrics register in ``llmapps.api.metrics``.

This module imports only the foundation (options, registry, errors) and the metric contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmapps.options import AppOptions, NoOptions, validate_app_options
from llmapps.registry import Registry

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.api.metrics import Metric


@dataclass(frozen=True)
class MetricFields:
    """Which of an app's fields the metrics read (``llmapps.evaluate.scoring.MetricsConfig``).

    Attributes:
        primary: the reference field the quality table reports (default: ``target``, else the
            first reference key).
        target: the output text the app's own checks judge (its metrics, the fairness audit,
            augmentation's teacher filter); None: not judged.
        answer: the short output scored by token F1 and exact match (None: not scored).
        leak: fields (of the output first, else of the input) whose content words must not
            appear in the ``target`` text.
        copy: fields (of the output first, else of the input) the ``target`` text must not
            repeat nearly word for word.
        source: input fields joined into a sample's source document (embedded for metrics
            that retrieve it by the ``target`` text).
    """

    primary: str | None = None
    target: str | None = None
    answer: str | None = None
    leak: tuple[str, ...] = ()
    copy: tuple[str, ...] = ()
    source: tuple[str, ...] = ()

    @property
    def riddle(self) -> str | None:
        """The name ``target`` had before issue 24 (read-only)."""
        return self.target


@dataclass(frozen=True)
class AppSpec:
    """What an app tells the framework about itself.

    Attributes:
        name: kebab-case name users type.
        description: one line for ``llmapps apps``.
        build: ``build(strategy, **options) -> Runnable`` (input dict in, result dict out).
        samples: ``samples(split) -> list[dict]`` bundled inputs with references, if any.
        read_inputs: ``read_inputs(path) -> list[dict]`` user files to inputs, each with an ``id``.
        corpus: ``corpus() -> list[dict(title, text)]`` text the built-in tiny models learn from.
        input_keys: the keys an input dict must have.
        reference_keys: the keys of a sample's reference output (for evaluation).
        options: the pydantic model (an ``AppOptions`` subclass) of what ``build`` accepts;
            ``load_chain`` validates against it, the CLI takes its fields as ``-O KEY=VALUE`` or
            ``--KEY VALUE``.
        metric_fields: which fields the metrics read (target, answer, leak ...).
        demo_columns: output key -> column title ``llmapps demo`` shows (default: the
            reference keys); the first falls back to the error or raw text of a failed row.
        default_for: the core commands this app is the default of when none is named
            (e.g. ``("demo",)``); one app per command.
        judge_app: the app whose chain grades this app's outputs (``llmapps bench --judge``).
        ui: how ``llmapps ui`` labels the app's inputs and outputs (default: from the keys).
        score: ``score(sample, row) -> {metric: float}`` app metrics the bench adds to a row's
            generic ones (e.g. facts named correctly); their means land in the summary.
        metrics: the ``Metric`` entries of the ``score`` metrics the tables show (label,
            direction; ``llmapps.api.metrics``), registered when the app is benched. Metrics
            computed over a batch (all references of the split at hand: ``Batch.scorer``)
            register through the ``llmapps.metrics`` entry-point group instead.
        chat: ``chat(chain, messages) -> str`` answers an OpenAI-style message list with the
            built chain (``llmapps serve --app``); None: the app is not a chat.
        training_examples: ``training_examples(split) -> list[dict]`` rows with the variables of
            the app's prompt and its output, for fine-tuning (``data.train: <app>:<split>``).
    """

    name: str
    description: str
    build: Callable[..., Runnable[Any, Any]]
    samples: Callable[[str], list[dict[str, Any]]] | None = None
    read_inputs: Callable[[Path], list[dict[str, Any]]] | None = None
    corpus: Callable[[], list[dict[str, str]]] | None = None
    input_keys: tuple[str, ...] = ()
    reference_keys: tuple[str, ...] = ()
    options: type[AppOptions] = NoOptions
    metric_fields: MetricFields = field(default_factory=MetricFields)
    demo_columns: dict[str, str] = field(default_factory=dict)
    default_for: tuple[str, ...] = ()
    judge_app: str | None = None
    ui: UiSpec | None = None
    score: Callable[[dict[str, Any], dict[str, Any]], dict[str, float]] | None = None
    metrics: tuple[Metric, ...] = ()
    chat: Callable[[Runnable[Any, Any], list[dict[str, str]]], str] | None = None
    training_examples: Callable[[str], list[dict[str, Any]]] | None = None

    @property
    def metric_columns(self) -> tuple[str, ...]:
        """The names of the app's own metrics the tables show (``metrics``), in order."""
        return tuple(m.name for m in self.metrics if m.table)

    def register_metrics(self) -> None:
        """Put the app's own metrics in the metric registry (direction, label for the tables)."""
        from llmapps.api.metrics import register_metric

        for metric in self.metrics:
            register_metric(metric)

    def parse_options(self, raw: Mapping[str, Any] | AppOptions | None) -> AppOptions:
        """``raw`` validated against ``options``: a ``ConfigError`` naming the valid options if
        a name is unknown or a value bad."""
        if isinstance(raw, AppOptions):
            return raw
        return validate_app_options(self.name, self.options, dict(raw or {}))


@dataclass(frozen=True)
class UiSpec:
    """How the web app (``llmapps ui``) shows an app; every field is plain text, never markup.

    Attributes:
        title: the name of the app's tab, e.g. "Ask the archive".
        inputs: input key -> label, in the order the page shows them (default: ``input_keys``).
        long_inputs: input keys shown as a multi-line box (e.g. the article body).
        outputs: output key -> label shown at once (default: ``reference_keys`` minus ``hidden``).
        hidden: output key -> label kept back until the reader asks (e.g. a quiz's answer).
        reveal: the label of the button that shows the hidden outputs.
        rate_fields: output keys raters compare side by side (default: outputs then hidden).
    """

    title: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    long_inputs: tuple[str, ...] = ()
    outputs: dict[str, str] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    reveal: str = "Show"
    rate_fields: tuple[str, ...] = ()


APPS: Registry[AppSpec] = Registry("app", group="llmapps.apps")


def get_app(name: str) -> AppSpec:
    """The registered app called ``name`` (``UnknownComponentError`` with suggestions if none)."""
    return APPS.get(name)


def default_app(command: str, *, fallback: Callable[[AppSpec], bool] | None = None) -> str:
    """The app ``command`` runs when none is named: the one whose ``default_for`` names the
    command, else the only one ``fallback`` accepts; a ``ConfigError`` listing them otherwise."""
    from llmapps.errors import ConfigError

    specs = [APPS.get(n) for n in APPS.names()]
    chosen = [s.name for s in specs if command in s.default_for]
    if len(chosen) > 1:
        raise ConfigError(
            f"apps {', '.join(chosen)} each declare themselves the default of {command!r}; "
            "name the app"
        )
    if chosen:
        return chosen[0]
    fitting = [s.name for s in specs if fallback is None or fallback(s)]
    if len(fitting) == 1:
        return fitting[0]
    raise ConfigError(
        f"name the app for {command!r}: one of {', '.join(fitting) or '(none registered)'}"
    )


def default_corpus() -> list[dict[str, str]]:
    """The text corpus of the first registered app that offers one (for the tiny models)."""
    for name in APPS.names():
        spec = APPS.get(name)
        if spec.corpus is not None:
            return spec.corpus()
    from llmapps.errors import ConfigError

    raise ConfigError(
        "no registered app provides a corpus to build the tiny models from; install the project "
        "(pip install -e .) so its apps register, or pass --corpus FILE.jsonl"
    )
