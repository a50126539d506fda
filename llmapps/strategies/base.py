"""The strategy contract: a config/implementation pair whose ``build`` returns a Runnable."""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

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
        self, config: StrategyConfig | None = None, *, pool: ModelPool | None = None, **options: Any
    ) -> None:
        from llmapps.models.pool import default_pool

        self.pool = pool or default_pool()  # where this strategy's models are loaded and shared
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


def make_strategy(name: str, **options: Any) -> Strategy:
    """Instantiate the registered strategy ``name`` with config ``options`` (validated)."""
    cls = STRATEGIES.get(name)
    return cls(**options)


def strategy_from_config(config: dict[str, Any]) -> Strategy:
    """Build a strategy from a config mapping whose ``kind`` names it (as in YAML files)."""
    if "kind" not in config:
        raise ConfigError(
            f"a strategy config needs a 'kind' (one of {', '.join(STRATEGIES.names())})"
        )
    options = dict(config)
    return make_strategy(options.pop("kind"), **options)
