"""Use an llmapps FAISS index from LlamaIndex: a retriever and a query engine over it.

    from llmapps.retrieval.llama import LlamaFaissRetriever, as_query_engine
    retriever = LlamaFaissRetriever(store, k=4)          # or LlamaFaissRetriever.from_path("indexes/news")
    retriever.retrieve("fuel prices")                    # -> [NodeWithScore]
    as_query_engine(store, llm=my_llama_index_llm).query("What happened with fuel prices?")

The index is the same one LangChain uses (same embeddings, same manifest checks); nothing is
copied into a LlamaIndex store.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from llmapps.retrieval.vectorstore import FaissVectorStore


class LlamaFaissRetriever(BaseRetriever):
    """A LlamaIndex retriever returning the ``k`` nearest chunks of a ``FaissVectorStore``.

    Args:
        store: the index (``FaissVectorStore.load(path)``).
        k: nodes per query.
        mmr: diversify with maximal marginal relevance.
    """

    def __init__(
        self, store: FaissVectorStore, k: int = 4, *, mmr: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.store = store
        self.k = k
        self.mmr = mmr

    @classmethod
    def from_path(cls, path: str | Path, k: int = 4, **kwargs: Any) -> LlamaFaissRetriever:
        return cls(FaissVectorStore.load(path), k, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        hits: Sequence[tuple[Document, float | None]]
        if self.mmr:
            hits = [(d, None) for d in self.store.max_marginal_relevance_search(query, k=self.k)]
        else:
            hits = self.store.similarity_search_with_score(query, k=self.k)
        return [
            NodeWithScore(
                node=TextNode(id_=str(d.id), text=d.page_content, metadata=dict(d.metadata)),
                score=s,
            )
            for d, s in hits
        ]


def as_query_engine(store: FaissVectorStore, llm: Any, k: int = 4, **kwargs: Any) -> Any:
    """A LlamaIndex ``RetrieverQueryEngine`` answering with ``llm`` from ``store``'s chunks."""
    from llama_index.core.query_engine import RetrieverQueryEngine

    return RetrieverQueryEngine.from_args(LlamaFaissRetriever(store, k), llm=llm, **kwargs)
