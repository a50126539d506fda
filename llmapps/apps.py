"""Applications (chains) registered by name, and ``load_chain`` to build one on a strategy.

An app lives outside the core (``chains/`` in this project, or any package) and registers an
``AppSpec`` under the ``llmapps.apps`` entry-point group. The core knows nothing about what an
app does: it builds it on a strategy, reads its sample inputs and, for the built-in tiny models,
its text corpus.

To add an app: write ``chains/<name>.py`` with an ``APP = AppSpec(...)``, its prompt files under
``prompts/<name>/``, and an entry point ``<name> = "chains.<name>:APP"`` (see CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmapps.registry import Registry

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.strategies.base import Strategy


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
        options: app options ``build`` accepts (name -> help), e.g. ``variant``.
        ui: how ``llmapps ui`` labels the app's inputs and outputs (default: from the keys).
        score: ``score(sample, row) -> {metric: float}`` app metrics the bench adds to a row's
            generic ones (e.g. facts named correctly); their means land in the summary.
        metric_columns: which of the ``score`` metrics the bench's printed tables show.
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
    options: dict[str, str] = field(default_factory=dict)
    ui: UiSpec | None = None
    score: Callable[[dict[str, Any], dict[str, Any]], dict[str, float]] | None = None
    metric_columns: tuple[str, ...] = ()
    chat: Callable[[Runnable[Any, Any], list[dict[str, str]]], str] | None = None
    training_examples: Callable[[str], list[dict[str, Any]]] | None = None


@dataclass(frozen=True)
class UiSpec:
    """How the web app (``llmapps ui``) shows an app; every field is plain text, never markup.

    Attributes:
        title: the name of the app's tab, e.g. "Riddle me this".
        inputs: input key -> label, in the order the page shows them (default: ``input_keys``).
        long_inputs: input keys shown as a multi-line box (e.g. the article body).
        outputs: output key -> label shown at once (default: ``reference_keys`` minus ``hidden``).
        hidden: output key -> label kept back until the reader asks (e.g. a riddle's answer).
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


def load_chain(
    app: str,
    strategy: str | Strategy = "few-shot",
    *,
    app_options: dict[str, Any] | None = None,
    **strategy_options: Any,
) -> Runnable[Any, Any]:
    """Build the app ``app`` on ``strategy`` and return it as a LangChain ``Runnable``.

    Example:
        >>> chain = load_chain("news-riddle", strategy="few-shot")  # doctest: +SKIP
        >>> chain.invoke({"title": "...", "text": "..."})           # doctest: +SKIP

    Args:
        app: a registered app name (``llmapps apps`` lists them).
        strategy: a registered strategy name or a ``Strategy`` instance.
        app_options: options for the app itself (e.g. ``{"variant": "two-step"}``).
        **strategy_options: fields of the strategy's config (e.g. ``base_model=...``).
    """
    from llmapps.strategies.base import Strategy, make_strategy

    spec = get_app(app)
    strat = strategy if isinstance(strategy, Strategy) else make_strategy(strategy, **strategy_options)
    return spec.build(strat, **(app_options or {}))


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
