"""The embeddings we ship pass LangChain's standard embeddings suite (``langchain-tests``): the
bundled all-MiniLM-L6-v2 through our sentence-transformers wrapper, and the same behind our
SQLite vector cache (real model, real cache file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from llmapps.retrieval.embeddings import MINILM, CachedEmbeddings, SentenceTransformerEmbeddings


class TestSentenceTransformerEmbeddingsStandard(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[SentenceTransformerEmbeddings]:
        return SentenceTransformerEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, object]:
        return {"model_id": MINILM, "device": "cpu", "local_files_only": True}


class TestCachedEmbeddingsStandard(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[CachedEmbeddings]:
        return CachedEmbeddings

    @pytest.fixture
    def model(self, tmp_path: Path) -> CachedEmbeddings:  # type: ignore[override]
        inner = SentenceTransformerEmbeddings(MINILM, device="cpu", local_files_only=True)
        return CachedEmbeddings(inner, MINILM, cache_dir=tmp_path)


def test_the_cache_answers_a_second_call_from_its_file(tmp_path: Path) -> None:
    inner = SentenceTransformerEmbeddings(MINILM, device="cpu", local_files_only=True)
    first = CachedEmbeddings(inner, MINILM, cache_dir=tmp_path).embed_documents(
        ["a harbour reopened"]
    )
    fresh = SentenceTransformerEmbeddings(MINILM, device="cpu", local_files_only=True)
    again = CachedEmbeddings(fresh, MINILM, cache_dir=tmp_path)
    assert again.embed_documents(["a harbour reopened"]) == first
    assert fresh._model is None  # answered from the cache file: the model was never asked
