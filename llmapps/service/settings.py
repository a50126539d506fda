"""The ``service`` section of the settings (``LLMAPPS_SERVICE__*``): the OpenAI-compatible
endpoint the ``service`` strategy calls, and model prices. Imports nothing of ``llmapps.service``
(``llmapps.settings`` assembles it); the server's own section is ``llmapps.serving.settings``."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from llmapps.serving.settings import ServerSettings


class ModelPrice(BaseModel):
    """What one model costs, in US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_1m: float = Field(0.0, ge=0.0)
    output_per_1m: float = Field(0.0, ge=0.0)


def _default_prices() -> dict[str, ModelPrice]:
    # List prices at the time of writing; override per model in config.yaml (service.prices).
    return {
        "gpt-4o-mini": ModelPrice(input_per_1m=0.15, output_per_1m=0.60),
        "gpt-4o": ModelPrice(input_per_1m=2.50, output_per_1m=10.00),
        "gpt-4.1-mini": ModelPrice(input_per_1m=0.40, output_per_1m=1.60),
        "gpt-4.1-nano": ModelPrice(input_per_1m=0.10, output_per_1m=0.40),
    }


def _openai_key_from_env() -> SecretStr | None:
    key = os.environ.get("OPENAI_API_KEY")
    return SecretStr(key) if key else None


class ServiceSettings(BaseModel):
    """The ``service`` strategy: an OpenAI-compatible endpoint (``LLMAPPS_SERVICE__*``).

    The API key is read from ``LLMAPPS_SERVICE__API_KEY`` or else ``OPENAI_API_KEY``.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1; none: OpenAI")
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = Field(default_factory=_openai_key_from_env)
    timeout: float = Field(
        600.0, gt=0.0, description="seconds per request (as OpenAI's and LangChain's clients)"
    )
    max_retries: int = Field(
        4, ge=0, description="retries on 429, 5xx, connect timeouts, lost connections, bad bodies"
    )
    retry_timeouts: bool = Field(
        False,
        description="also retry a request that timed out once sent (only for an endpoint that "
        "cancels the work of a client that hung up)",
    )
    max_concurrency: int = Field(8, ge=1, description="requests in flight in a batch")
    rpm: int | None = Field(None, ge=1, description="requests per minute (none: unlimited)")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (none: unlimited)")
    cache: bool = Field(True, description="SQLite response cache on/off")
    cache_path: Path | None = Field(None, description="default: $LLMAPPS_HOME/service-cache.sqlite")
    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)
    server: ServerSettings = Field(default_factory=ServerSettings)  # type: ignore[arg-type]
