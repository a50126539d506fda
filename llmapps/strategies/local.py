"""What the local-model strategies (``few-shot``, ``zero-shot``, ``lora``) share: one model loaded
lazily through the backend loader (``llmapps.models.loader``) into the strategy's pool, the model
it generates with (what ``llmapps serve`` serves) and the one that scores (logits, where its
backend has them).

A subclass names the config field that holds its model (``model_field``: ``base_model``,
``instruct_model``) or overrides ``load`` (``lora``: a base with an adapter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from llmapps.api.strategies import Strategy, StrategyConfig
from llmapps.strategies.structured import GenerationControls

if TYPE_CHECKING:
    from llmapps.api.backends import LocalLM


class LocalModelConfig(StrategyConfig, GenerationControls):
    """The options every local-model strategy has: sampling, batch, device, dtype and backend."""

    max_new_tokens: int | None = Field(None, ge=1, description="default: the task's budget")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int | None = Field(None, ge=1)
    device: str | None = None
    dtype: str | None = None
    backend: str | None = Field(
        None,
        description="a registered model backend: transformers, or llama.cpp (GGUF files and "
        "packaged models); default: settings.generation.backend, or llama.cpp for a .gguf model",
    )

    @field_validator("backend")
    @classmethod
    def _registered(cls, value: str | None) -> str | None:
        from llmapps.api.backends import BACKENDS

        if value is not None and value not in BACKENDS:
            raise ValueError(f"{value!r} is not a registered backend ({', '.join(BACKENDS)})")
        return value


class LocalModelStrategy(Strategy):
    """A strategy that generates with one local model, on whichever backend loads it."""

    model_field: ClassVar[str] = "base_model"  # the config field naming the model

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._lm: Any = None

    @property
    def pool(self) -> Any:
        """The ``ModelPool`` it was given, else the process's ``default_pool()``."""
        from llmapps.models.pool import default_pool

        return self._pool if self._pool is not None else default_pool()

    @property
    def local_model(self) -> Any:
        """The loaded model (once; shared through the pool with strategies that load the same)."""
        if self._lm is None:
            self._lm = self.load()
        return self._lm

    def load(self) -> LocalLM:
        """Load the model named by ``model_field`` (its settings default when unset)."""
        from llmapps.models.loader import load_model

        c = self.resolved
        lm: LocalLM = load_model(
            getattr(c, self.model_field),
            getattr(c, "backend", None),
            device=getattr(c, "device", None),
            dtype=getattr(c, "dtype", None),
            batch_size=getattr(c, "batch_size", None),
            pool=self.pool,
            settings=self.settings,
        )
        return lm

    def generation_model(self) -> Any:
        return self.local_model

    def scoring_model(self) -> Any:
        from llmapps.models.loader import with_logits

        return with_logits(self.generation_model())
