"""The strategy contract: a config/implementation pair whose ``build`` turns an app's ``Task`` into
a Runnable, and the ``STRATEGIES`` registry (entry-point group ``llmapps.strategies``).

Apps import it from here (``Strategy`` is what their ``build(strategy, ...)`` is handed); the
implementations live in ``llmapps.strategies`` (``llmapps.strategies.base`` re-exports this
module under its old path).

Settings come in explicitly: a strategy runs under the ``Settings`` it is made with
(``llmapps.compose`` and every surface hand theirs down); explicit options beat them in one
function, ``resolve_config``, and a task's budgets are built in one method, ``Strategy.budget``.
Made without settings (a library user's ``FewShotStrategy(config)``), a strategy takes the
environment's as they are when it is made: that fallback is here, in ``Strategy.__init__``, and
nowhere else. Nothing here imports a backend or a model.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from llmapps.api.generation import Budget
from llmapps.errors import ConfigError, config_error_from_validation
from llmapps.registry import Registry

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.api.backends import LocalServer
    from llmapps.settings import Settings
    from llmapps.tasks import Task

log = logging.getLogger(__name__)


class StrategyConfig(BaseModel):
    """Base of every strategy config; ``kind`` picks the strategy class."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: str

    def settings_defaults(self, settings: Settings) -> dict[str, Any]:
        """The values settings give this config's fields that are left unset (None): e.g.
        ``base_model`` from ``settings.base_model``. None here; a config with such fields says."""
        return {}


C = TypeVar("C", bound=StrategyConfig)


def resolve_config(config: C, settings: Settings) -> C:
    """``config`` with its unset fields filled from ``settings`` (``settings_defaults``): the one
    place where explicit options beat settings. ``llmapps.compose`` hands the settings down
    (``make_strategy(..., settings=...)``)."""
    fill = {
        k: v for k, v in config.settings_defaults(settings).items() if getattr(config, k) is None
    }
    return config.model_copy(update=fill) if fill else config


class Strategy(ABC):
    """Turns a ``Task`` into a Runnable: input dict in, model text (str or message) out.

    Subclasses set ``name``, ``config_class``, ``summary`` (one line) and ``requires`` (what it
    needs to run), and implement ``build``.

    Attributes:
        config: the options as given (unset ones None; ``describe()`` records these).
        settings: the settings it runs under: those it was made with, else the environment's
            when it was made.
        pool: the ``ModelPool`` it was given (None: the process's default, for strategies that
            load local models).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]
    summary: ClassVar[str] = ""
    requires: ClassVar[str] = ""

    def __init__(
        self,
        config: StrategyConfig | None = None,
        *,
        pool: Any = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> None:
        if settings is None:  # the one fallback: a strategy made without settings
            from llmapps.settings import get_settings

            settings = get_settings()
        self.settings: Settings = settings
        self._pool = pool
        if config is None:
            try:
                config = self.config_class(kind=self.name, **options)
            except ValidationError as err:
                error = config_error_from_validation(f"options for the {self.name!r} strategy", err)
                if any(
                    e.get("type") == "extra_forbidden" for e in err.errors()
                ):  # name the valid ones
                    valid = ", ".join(sorted(set(self.config_class.model_fields) - {"kind"}))
                    error = ConfigError(f"{error}\n  its options: {valid}")
                raise error from err
        elif options:
            raise ConfigError("pass either a config or options, not both")
        self.config = config

    @property
    def pool(self) -> Any:
        """Where this strategy's models are loaded and shared (None: it loads none itself)."""
        return self._pool

    @property
    def resolved(self) -> Any:
        """The config with its unset fields filled from ``settings`` (``resolve_config``)."""
        return resolve_config(self.config, self.settings)

    def budget(self, task: Task) -> Budget:
        """What one generation of ``task`` may spend: the ``max_new_tokens`` option, else the
        task's own; the ``max_prompt_tokens`` option, else ``settings.generation``'s (a
        strategy without that option: the setting's). The one place these are built."""
        c = self.resolved
        return Budget(
            max_new_tokens=getattr(c, "max_new_tokens", None) or task.max_new_tokens,
            max_prompt_tokens=getattr(c, "max_prompt_tokens", None)
            or self.settings.generation.max_prompt_tokens,
        )

    @abstractmethod
    def build(self, task: Task) -> Runnable[dict[str, Any], Any]:
        """A Runnable generating the task's output text for one input dict (batchable)."""

    def describe(self) -> dict[str, Any]:
        """The config as given, safe to log and save (no secrets)."""
        return self.config.model_dump(mode="json")

    def scoring_model(self) -> Any | None:
        """The local model whose logits score references (perplexity); None if it has none."""
        return None

    def generation_model(self) -> Any | None:
        """The local model this strategy generates with, on whichever backend (what
        ``llmapps serve`` serves); None where it generates remotely."""
        return self.scoring_model()

    @classmethod
    @contextlib.contextmanager
    def demo_options(
        cls, settings: Settings, *, serve: LocalServer | None = None
    ) -> Iterator[dict[str, Any] | None]:
        """Options under which this strategy runs offline (None: skip it), held for the block.

        ``serve`` is handed in by ``llmapps.compose`` (``compose.demo_options``): a
        ``LocalServer`` that serves a model on loopback (``llmapps serve``) for a strategy that
        needs an endpoint; None: there is none.
        """
        yield {}


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", group="llmapps.strategies")


def make_strategy(name: str, *, settings: Settings | None = None, **options: Any) -> Strategy:
    """Instantiate the registered strategy ``name`` with config ``options`` (validated), running
    under ``settings`` (None: the environment's, read now)."""
    cls = STRATEGIES.get(name)
    return cls(settings=settings, **options)


def strategy_from_config(config: dict[str, Any], settings: Settings | None = None) -> Strategy:
    """Build a strategy from a config mapping whose ``kind`` names it (as in YAML files)."""
    if "kind" not in config:
        raise ConfigError(
            f"a strategy config needs a 'kind' (one of {', '.join(STRATEGIES.names())})"
        )
    options = dict(config)
    return make_strategy(options.pop("kind"), settings=settings, **options)
