"""The langchain-tests standard suites against ``FaissVectorStore`` and ``FaissRetriever``.

The vector-store suite supplies its own deterministic embedding (``get_embeddings``); the retriever
suite runs over a small index embedded with the real offline all-MiniLM-L6-v2.
"""

from __future__ import annotations

from collections.abc import Generator
from functools import lru_cache
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import (
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)

from llmapps.retrieval.vectorstore import FaissRetriever, FaissVectorStore

FACTS = [
    "Fuel prices rose by ten cents a litre after the refinery fire.",
    "The city council approved a new cycle lane on the river road.",
    "A late goal gave the visitors a 2-1 win in the cup final.",
    "Astronomers reported a comet visible to the naked eye next week.",
    "The bakery chain said bread prices will stay frozen until spring.",
    "Heavy rain flooded three villages and closed the coastal highway.",
]


@lru_cache(maxsize=1)
def minilm_store() -> FaissVectorStore:
    from llmapps.retrieval.embeddings import make_embeddings

    docs = [Document(page_content=t, metadata={"n": i}, id=f"f{i}") for i, t in enumerate(FACTS)]
    return FaissVectorStore.from_documents(docs, make_embeddings())


class TestFaissVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self) -> Generator[FaissVectorStore, None, None]:  # type: ignore[override]
        store = FaissVectorStore(self.get_embeddings())
        yield store


class TestFaissRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[FaissRetriever]:
        return FaissRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"store": minilm_store(), "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "what happened to the price of petrol?"


def test_minilm_retriever_finds_the_relevant_fact() -> None:
    docs = minilm_store().as_retriever(k=1).invoke("what happened to the price of petrol?")
    assert [d.id for d in docs] == ["f0"]
