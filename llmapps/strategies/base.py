"""The strategy contract: a config/implementation pair whose ``build`` returns a Runnable."""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from llmapps.errors import ConfigError, config_error_from_validation
from llmapps.registry import Registry

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.models.local import LocalModel
    from llmapps.models.pool import ModelPool
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
    (``make_strategy(..., settings=...)``); a strategy made without them reads the environment's."""
    fill = {
        k: v for k, v in config.settings_defaults(settings).items() if getattr(config, k) is None
    }
    return config.model_copy(update=fill) if fill else config


class Strategy(ABC):
    """Turns a ``Task`` into a Runnable: input dict in, model text (str or message) out.

    Subclasses set ``name``, ``config_class``, ``summary`` (one line) and ``requires`` (what it
    needs to run), and implement ``build``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]
    summary: ClassVar[str] = ""
    requires: ClassVar[str] = ""

    def __init__(
        self,
        config: StrategyConfig | None = None,
        *,
        pool: ModelPool | None = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> None:
        from llmapps.models.pool import default_pool

        self.pool = pool or default_pool()  # where this strategy's models are loaded and shared
        self._settings = settings
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
    def settings(self) -> Settings:
        """The settings this strategy runs under: those it was made with (``llmapps.compose``
        hands them down), else the environment's, read afresh (a library user's
        ``FewShotStrategy(config)``)."""
        if self._settings is not None:
            return self._settings
        from llmapps.settings import get_settings

        return get_settings()

    @abstractmethod
    def build(self, task: Task) -> Runnable[dict[str, Any], Any]:
        """A Runnable generating the task's output text for one input dict (batchable)."""

    def describe(self) -> dict[str, Any]:
        """The resolved config, safe to log and save (no secrets)."""
        return self.config.model_dump(mode="json")

    def scoring_model(self) -> LocalModel | None:
        """The local model whose logits score references (perplexity); None if it has none."""
        return None

    def generation_model(self) -> LocalModel | None:
        """The local model this strategy generates with, on whichever backend (what
        ``llmapps serve`` serves); None where it generates remotely."""
        return self.scoring_model()

    @classmethod
    @contextlib.contextmanager
    def demo_options(cls, settings: Settings) -> Iterator[dict[str, Any] | None]:
        """Options under which ``llmapps demo`` runs this strategy offline (None: skip it)."""
        yield {}


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", group="llmapps.strategies")


def make_strategy(name: str, *, settings: Settings | None = None, **options: Any) -> Strategy:
    """Instantiate the registered strategy ``name`` with config ``options`` (validated), running
    under ``settings`` (default: the environment's, read when needed)."""
    cls = STRATEGIES.get(name)
    return cls(settings=settings, **options)


def strategy_from_config(config: dict[str, Any]) -> Strategy:
    """Build a strategy from a config mapping whose ``kind`` names it (as in YAML files)."""
    if "kind" not in config:
        raise ConfigError(
            f"a strategy config needs a 'kind' (one of {', '.join(STRATEGIES.names())})"
        )
    options = dict(config)
    return make_strategy(options.pop("kind"), **options)
