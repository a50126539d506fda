"""One loader for every backend: a model spec (a name, a directory, a ``.gguf`` file, a packaged
model) and an optional backend name in, a loaded ``LocalLM`` out.

``resolve_backend`` picks the backend (the one named; else one that claims the source, as
llama.cpp claims ``.gguf`` files; else ``settings.generation.backend``), ``load_model`` resolves
the settings and the pool once and hands the load to the backend (``BACKENDS``, see
``llmapps.api.backends``). ``with_logits``, ``completion_llm`` and ``chat_llm`` ask the backend
that loaded a model (``lm.backend``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmapps.api.backends import BACKENDS, Backend, LocalLM, ModelSpec
from llmapps.errors import ConfigError

if TYPE_CHECKING:
    from llmapps.models.pool import ModelPool
    from llmapps.settings import Settings


def get_backend(name: str) -> Backend:
    """The registered backend ``name`` (a ``ConfigError`` listing the known ones if none)."""
    if name not in BACKENDS:
        raise ConfigError(f"backend {name!r} is not one of {', '.join(BACKENDS.names())}")
    return BACKENDS.get(name)()


def resolve_backend(requested: str | None, source: str, settings: Settings | None = None) -> str:
    """The backend a model runs on: ``requested``, else one that claims ``source``, else
    ``settings.generation.backend``."""
    if requested is None:
        claimed = [n for n in BACKENDS.names() if get_backend(n).claims(source)]
        if claimed:
            return claimed[0]
        requested = context(settings)[0].generation.backend
        if requested not in BACKENDS:  # the setting accepts any name: checked here, before a load
            raise ConfigError(
                f"generation.backend (LLMAPPS_GENERATION__BACKEND) {requested!r} is not a "
                f"registered model backend; registered: {', '.join(BACKENDS.names())}"
            )
    get_backend(requested)  # an unknown name fails here
    return requested


def context(
    settings: Settings | None = None, pool: ModelPool | None = None
) -> tuple[Settings, ModelPool]:
    """The settings and pool a load uses: those given, else the environment's and the
    process's ``default_pool()``."""
    from llmapps.models.pool import default_pool
    from llmapps.settings import get_settings

    return settings or get_settings(), pool or default_pool()


def load_model(
    source: str,
    backend: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    pool: ModelPool | None = None,
    settings: Settings | None = None,
) -> Any:
    """Load ``source`` on the chosen backend (see ``resolve_backend``) into ``pool``.

    Typed ``Any`` for callers that reach past ``LocalLM`` (``lm.model`` on transformers); what a
    strategy may call is ``LocalLM``.
    """
    settings, pool = context(settings, pool)
    chosen = get_backend(resolve_backend(backend, source, settings))
    return chosen.load(ModelSpec(source, settings, pool, device, dtype, batch_size))


def backend_of(lm: LocalLM) -> Backend:
    """The backend that loaded ``lm`` (its ``backend`` name)."""
    name = getattr(lm, "backend", None)
    if not isinstance(name, str):
        raise ConfigError(f"{type(lm).__name__} names no backend (a LocalLM has .backend)")
    return get_backend(name)


def with_logits(lm: LocalLM) -> Any | None:
    """``lm`` where its backend gives transformers' logits (perplexity needs them); else None."""
    return backend_of(lm).with_logits(lm)


def completion_llm(lm: LocalLM, **kwargs: Any) -> Any:
    """The LangChain completion model over ``lm``, whichever backend loaded it."""
    return backend_of(lm).completion_llm(lm, **kwargs)


def chat_llm(lm: LocalLM, **kwargs: Any) -> Any:
    """The LangChain chat model over ``lm``, whichever backend loaded it."""
    return backend_of(lm).chat_llm(lm, **kwargs)
