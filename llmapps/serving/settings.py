"""The ``service.server`` section of the settings (``LLMAPPS_SERVICE__SERVER__*``): where
``llmapps serve`` listens and what it accepts. Imports nothing of ``llmapps.serving``
(``llmapps.settings`` assembles it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ServerSettings(BaseModel):
    """``llmapps serve``: where it listens and what it accepts (``LLMAPPS_SERVICE__SERVER__*``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        "127.0.0.1", description="bind address; loopback unless you mean to expose it"
    )
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    api_key: SecretStr | None = Field(
        None, description="bearer token clients must send; none: open"
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    max_concurrent: int = Field(
        64, ge=1, description="prompts in flight (all requests) before 429 + Retry-After"
    )
    max_prompts: int = Field(
        16, ge=1, description="most prompts in one /v1/completions request (400 above)"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers answered (others get 400, against DNS rebinding); empty: the loopback "
        "names when bound to loopback, any host otherwise",
    )
    max_stop: int = Field(4, ge=0, description="most stop strings in one request (400 above)")
    max_stop_chars: int = Field(
        1000, ge=0, description="most characters of all stop strings together (400 above)"
    )
    max_batch: int = Field(16, ge=1, description="most requests in one batched generate call")
    batch_wait_ms: float = Field(
        5.0, ge=0.0, description="how long to gather requests into a batch"
    )
