"""The model-backend contract: what a strategy may call on a loaded local model (``LocalLM``), and
the registry of the backends that load one (``BACKENDS``, entry-point group ``llmapps.backends``).

A backend is a ``Backend`` subclass registered under the name users type (``backend=llama.cpp``)
with ``@register_backend("name")`` and an entry point in the group (the built-ins,
``transformers`` in ``llmapps.models.local`` and ``llama.cpp`` in ``llmapps.models.llamacpp``,
are registered exactly so). ``llmapps.models.loader`` resolves a model spec to a backend
(``Backend.claims``: a ``.gguf`` file runs on llama.cpp unless told otherwise; else
``settings.generation.backend``) and loads it; a loaded model names its backend (``lm.backend``),
and everything that depends on the backend (logits, the LangChain classes) asks it, never
``isinstance``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

from llmapps.registry import Registry

if TYPE_CHECKING:
    from llmapps.api.generation import GenerationOutput, GenerationParams, OutputConstraint
    from llmapps.settings import Settings


@runtime_checkable
class LocalLM(Protocol):
    """A loaded local model, whichever backend loaded it: what strategies, the server and the
    LangChain classes may call on it."""

    name: str
    device: str
    batch_size: int
    backend: str  # the registered name of the backend that loaded it
    # tokenizer(text, add_special_tokens=...) -> {"input_ids": [...]}: the slice of a Hugging
    # Face tokenizer's call the prompt packing uses
    tokenizer: Any

    @property
    def context_length(self) -> int: ...

    @property
    def has_chat_template(self) -> bool: ...

    def count_tokens(self, text: str) -> int: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...

    def generate(
        self, prompts: Sequence[str], params: GenerationParams | None = None
    ) -> list[GenerationOutput]:
        """One completion per prompt, in input order (batched as the backend can)."""
        ...

    def stream(self, prompt: str, params: GenerationParams | None = None) -> Iterator[str]: ...

    def constraint_refusal(self, constraint: OutputConstraint) -> str | None:
        """Why decoding cannot be held to ``constraint`` here; None when it can."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers beyond ``LocalLM``.

    Attributes:
        logits: its models expose transformers' forward pass (``lm.model``), so perplexity and
            preference tuning can score with them.
        devices: the devices it runs on (``("*",)``: any torch device).
        dtypes: it honours a ``dtype`` (a GGUF file fixes its own quantization).
    """

    logits: bool = False
    devices: tuple[str, ...] = ("cpu",)
    dtypes: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """What a backend is asked to load: ``source`` (a name, directory, ``.gguf`` file or packaged
    model) under ``settings`` into ``pool`` (a ``ModelPool``), with the caller's device, dtype and
    batch size (None: the settings' / the backend's own)."""

    source: str
    settings: Settings
    pool: Any
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None


class Backend(ABC):
    """Loads models for one runtime and makes its LangChain models. Subclasses set ``name`` and
    ``capabilities`` and implement ``load``, ``completion_llm`` and ``chat_llm``."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    install_hint: ClassVar[str] = ""
    # a small model it loads offline: the shared backend tests load it (empty: they skip)
    example_source: ClassVar[str] = ""

    def claims(self, source: str) -> bool:
        """Whether ``source`` runs here when no backend is named (e.g. a ``.gguf`` file)."""
        return False

    @abstractmethod
    def load(self, spec: ModelSpec) -> LocalLM:
        """The model ``spec.source`` loaded (once per ``spec.pool``), or a typed error naming the
        source and what to do."""

    def with_logits(self, lm: LocalLM) -> Any | None:
        """``lm`` where its backend gives logits (``capabilities.logits``); None elsewhere."""
        return lm if self.capabilities.logits else None

    @abstractmethod
    def completion_llm(self, lm: LocalLM, **kwargs: Any) -> Any:
        """The LangChain completion model (a ``BaseLLM``) over ``lm``."""

    @abstractmethod
    def chat_llm(self, lm: LocalLM, **kwargs: Any) -> Any:
        """The LangChain chat model (a ``BaseChatModel``) over ``lm``."""


# backend names are what users type; ``llama.cpp`` keeps its dot
BACKENDS: Registry[type[Backend]] = Registry(
    "backend", group="llmapps.backends", pattern=re.compile(r"^[a-z][a-z0-9]*([.-][a-z0-9]+)*$")
)

B = TypeVar("B", bound=type[Backend])


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator: register a ``Backend`` subclass in ``BACKENDS`` under ``name`` (what users
    type as ``backend=``), as ``@register_backend("llama.cpp")``; its ``name`` must match."""

    def add(cls: B) -> B:
        if cls.name != name:
            raise ValueError(f"backend class {cls.__name__} is named {cls.name!r}, not {name!r}")
        BACKENDS.register(name, cls)
        return cls

    return add


# A local OpenAI-compatible server for a model: ``serve(name, api_key=..., settings=...)`` is a
# context manager yielding the server's root URL for the block (``llmapps serve``'s is
# ``llmapps.serving.server:serve_model``, entry point ``llmapps``). ``llmapps.compose`` looks it
# up here and hands it to the strategies' offline defaults (``Strategy.demo_options(serve=)``).
LocalServer = Callable[..., AbstractContextManager[str]]
SERVERS: Registry[LocalServer] = Registry("local server", group="llmapps.servers")
