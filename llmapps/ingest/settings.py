"""The ``ingest`` section of the settings (``LLMAPPS_INGEST__*``): news ingestion's defaults.
Imports nothing of ``llmapps.ingest`` (``llmapps.settings`` assembles it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class IngestSettings(BaseModel):
    """Defaults for news ingestion (``llmapps news fetch``, ``llmapps daily``)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(10.0, gt=0, description="connect/read timeout of one HTTP request")
    retries: int = Field(
        2, ge=0, le=10, description="extra attempts after a 5xx, 429 or network error"
    )
    concurrency: int = Field(4, ge=1, le=64, description="HTTP requests in flight at once")
    user_agent: str = Field("llmapps-news/0.1 (+https://github.com/llmapps)", min_length=1)
    max_response_bytes: int = Field(5_000_000, ge=1024, description="a larger response is rejected")
    newsapi_base_url: str = Field(
        "https://newsapi.org", description="any NewsAPI-compatible server"
    )
    newsapi_key: SecretStr | None = Field(
        None, description="from LLMAPPS_INGEST__NEWSAPI_KEY or NEWSAPI_KEY"
    )
