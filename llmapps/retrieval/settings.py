"""The ``retrieval`` section of the settings (``LLMAPPS_RETRIEVAL__*``): embeddings and vector
indexes. Imports nothing of ``llmapps.retrieval`` (``llmapps.settings`` assembles it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RetrievalSettings(BaseModel):
    """Embeddings and vector indexes (``LLMAPPS_RETRIEVAL__*``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        description="all-MiniLM-L6-v2 (bundled offline), any sentence-transformers id or directory, "
        "or openai:<model> for OpenAI embeddings",
    )
    batch_size: int = Field(64, ge=1, description="texts per embedding forward pass")
    index_kind: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto",
        description="flat (exact), hnsw or ivf (approximate); auto: flat below auto_ann_above vectors",
    )
    auto_ann_above: int = Field(
        200_000, ge=1, description="auto switches to HNSW above this many vectors"
    )
    cache_dir: Path | None = Field(
        None, description="embedding cache; default $LLMAPPS_HOME/embeddings"
    )
    chunk_tokens: int = Field(
        200, ge=16, description="split documents longer than this (model tokens)"
    )
    chunk_overlap: int = Field(24, ge=0)
