"""The ``bench`` section of the settings (``LLMAPPS_BENCH__*``): the bench's and the metrics'
defaults. Imports nothing of ``llmapps.bench`` (``llmapps.settings`` assembles it)."""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class BenchSettings(BaseModel):
    """Defaults of ``llmapps bench`` and the evaluation metrics (all overridable per run)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(
        4, ge=1, description="articles per batch in a bench (latency is per batch)"
    )
    compute_price_per_hour: float = Field(
        0.0, ge=0.0, description="price of the machine running local strategies, per hour (0: free)"
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per strategy: usd_per_1k_input_tokens, usd_per_1k_output_tokens, usd_per_hour",
    )
    # None: the app's own choice (AppSpec.metric_fields); a value here overrides it for every app
    primary_field: str | None = Field(
        None, description="output field the quality table reports (default: the app's)"
    )
    target_field: str | None = Field(
        None,
        # the name before issue 24, still read from settings files written for it
        validation_alias=AliasChoices("target_field", "riddle_field"),
        description="output field the app's own checks judge (leakage, copying, solvability); "
        "default: the app's",
    )
    answer_field: str | None = Field(
        None,
        description="field holding the short answer (token F1, exact match); default: the app's",
    )
    leak_fields: list[str] | None = Field(
        None,
        description="output or input fields whose content words must not appear in the target "
        "field (default: the app's)",
    )
    copy_fields: list[str] | None = Field(
        None,
        description="output or input fields the target field must not repeat nearly word for "
        "word (copying; default: the app's)",
    )
    source_fields: list[str] | None = Field(
        None, description="input fields that make the source document (default: the app's)"
    )
    solvability_k: list[int] = Field(default_factory=lambda: [1, 3])
