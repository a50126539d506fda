"""Retrieval: embeddings with a content-hash cache, a FAISS index persisted without pickle,
a LangChain vector store and retriever over it, a LlamaIndex adapter and document loaders.

Quick start::

    from llmapps.retrieval import FaissVectorStore, load_documents
    store = FaissVectorStore.build(load_documents("data/articles.jsonl"), path="indexes/news")
    store.as_retriever(k=4).invoke("What happened with fuel prices?")
    FaissVectorStore.load("indexes/news").similarity_search("fuel prices", k=3)

Heavy libraries (faiss, sentence-transformers, llama-index) are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CachedEmbeddings",
    "FaissRetriever",
    "FaissVectorStore",
    "VectorIndex",
    "load_documents",
    "make_embeddings",
]

_LAZY = {
    "CachedEmbeddings": "llmapps.retrieval.embeddings",
    "make_embeddings": "llmapps.retrieval.embeddings",
    "VectorIndex": "llmapps.retrieval.store",
    "FaissVectorStore": "llmapps.retrieval.vectorstore",
    "FaissRetriever": "llmapps.retrieval.vectorstore",
    "load_documents": "llmapps.retrieval.loaders",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
