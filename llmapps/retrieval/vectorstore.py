"""``FaissVectorStore``: a LangChain ``VectorStore`` over ``VectorIndex``, and its retriever.

Unlike LangChain's community FAISS store it never pickles: it saves with ``faiss.write_index``, a
JSONL docstore and a checked manifest (see ``llmapps.retrieval.store``). It passes the
``langchain-tests`` ``VectorStoreIntegrationTests`` suite, and ``FaissRetriever`` passes
``RetrieversIntegrationTests``.

Example:
    >>> store = FaissVectorStore.build(docs, path="indexes/news")      # doctest: +SKIP
    >>> store.as_retriever(k=4).invoke("fuel prices")                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict, Field, model_validator

from llmapps.errors import RetrievalError
from llmapps.retrieval.embeddings import embeddings_model_id, normalize, text_hash
from llmapps.retrieval.store import IndexParams, Record, VectorIndex, build_hint, choose_kind

log = logging.getLogger(__name__)

Filter = dict[str, Any] | Callable[[dict[str, Any]], bool] | None


def _embed(embedding: Embeddings, texts: Sequence[str]) -> np.ndarray:
    if hasattr(embedding, "embed_array"):
        return normalize(embedding.embed_array(list(texts)))
    return normalize(np.asarray(embedding.embed_documents(list(texts)), dtype=np.float32))


def _embed_query(embedding: Embeddings, text: str) -> np.ndarray:
    return normalize(np.asarray(embedding.embed_query(text), dtype=np.float32))


def _matches(metadata: dict[str, Any], flt: Filter) -> bool:
    if flt is None:
        return True
    if callable(flt):
        return bool(flt(metadata))
    return all(metadata.get(k) == v for k, v in flt.items())


def _doc(rec: Record) -> Document:
    return Document(page_content=rec.text, metadata=dict(rec.metadata), id=rec.id)


class FaissVectorStore(VectorStore):
    """A FAISS index with its documents, embedded by ``embedding``.

    Args:
        embedding: the LangChain embeddings (``make_embeddings()`` for the project's cached ones).
        index: an existing ``VectorIndex`` (e.g. loaded); created on the first add otherwise.
        index_kind: ``auto``, ``flat``, ``hnsw`` or ``ivf`` for a new index.
        ann_above: ``auto`` picks HNSW when the first batch has more vectors than this.
        path: folder ``save()`` writes to by default.
    """

    def __init__(
        self,
        embedding: Embeddings,
        index: VectorIndex | None = None,
        *,
        index_kind: str = "auto",
        ann_above: int = 200_000,
        path: Path | str | None = None,
    ) -> None:
        self.embedding = embedding
        self.model_id = embeddings_model_id(embedding)
        if index is not None and index.model_id != self.model_id:
            raise RetrievalError(
                f"the index was built with embedding model {index.model_id!r}, but the embedding model "
                f"given is {self.model_id!r}; use the same model or rebuild the index"
            )
        self.index = index
        self.index_kind = index_kind
        self.ann_above = ann_above
        self.path = Path(path) if path is not None else (index.path if index is not None else None)
        self.last_skipped: list[str] = []

    # ------------------------------------------------------------ construction
    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> FaissVectorStore:
        store = cls(
            embedding,
            **{k: kwargs.pop(k) for k in ("index_kind", "ann_above", "path") if k in kwargs},
        )
        store.add_texts(texts, metadatas, ids=ids, **kwargs)
        return store

    @classmethod
    def build(
        cls,
        documents: Iterable[Document],
        *,
        path: Path | str | None = None,
        embedding: Embeddings | None = None,
        index_kind: str | None = None,
        progress: bool = False,
    ) -> FaissVectorStore:
        """Embed ``documents`` into a new index (saved to ``path`` when given), with settings' defaults."""
        from llmapps.retrieval.embeddings import make_embeddings
        from llmapps.settings import get_settings

        r = get_settings().retrieval
        store = cls(
            embedding or make_embeddings(progress=progress),
            index_kind=index_kind or r.index_kind,
            ann_above=r.auto_ann_above,
            path=path,
        )
        store.add_documents(list(documents), skip_duplicates=True)
        if path is not None:
            store.save(path)
        return store

    @classmethod
    def load(cls, path: Path | str, embedding: Embeddings | None = None) -> FaissVectorStore:
        """Load an index folder, checking it was built with ``embedding``'s model.

        With no ``embedding``, the model the manifest names is used (cached, offline-capable).
        """
        from llmapps.retrieval.embeddings import make_embeddings
        from llmapps.retrieval.store import read_manifest

        if embedding is None:
            embedding = make_embeddings(read_manifest(path)["embedding_model"])
        index = VectorIndex.load(path, expected_model=embeddings_model_id(embedding))
        return cls(embedding, index, index_kind=index.params.kind, path=path)

    def save(self, path: Path | str | None = None) -> Path:
        """Persist atomically (see ``VectorIndex.save``)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise RetrievalError("this store has no folder; pass save(path)")
        if self.index is None:
            raise RetrievalError(f"nothing to save to {target}: no documents were added")
        self.path = self.index.save(target)
        return self.path

    # ------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        skip_duplicates: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and add ``texts``; an existing id is replaced.

        Args:
            skip_duplicates: leave out texts whose content hash is already stored (or repeated in
                this call); their ids are in ``last_skipped``.
        """
        texts = list(texts)
        metas = [dict(m) for m in metadatas] if metadatas else [{} for _ in texts]
        given = list(ids) if ids else [None] * len(texts)
        keep_ids, keep_texts, keep_metas, keep_hashes = [], [], [], []
        empty, dupes = [], []
        seen: set[str] = set()
        for text, meta, id_ in zip(texts, metas, given, strict=False):
            name = id_ or meta.get("id") or meta.get("source") or repr(text[:30])
            if not text or not text.strip():
                empty.append(str(name))
                continue
            h = text_hash(text)
            if skip_duplicates and (
                h in seen or (self.index is not None and self.index.ids_with_hash(h))
            ):
                dupes.append(str(name))
                continue
            seen.add(h)
            keep_ids.append(str(id_) if id_ is not None else str(uuid.uuid4()))
            keep_texts.append(text)
            keep_metas.append(meta)
            keep_hashes.append(h)
        if empty:
            log.warning("skipped %d empty document(s): %s", len(empty), ", ".join(empty[:20]))
        if dupes:
            log.info(
                "skipped %d document(s) already indexed (same content): %s",
                len(dupes),
                ", ".join(dupes[:20]),
            )
        self.last_skipped = empty + dupes
        if not keep_texts:
            return []
        vectors = _embed(self.embedding, keep_texts)
        if self.index is None:
            kind = choose_kind(self.index_kind, len(keep_texts), self.ann_above)
            self.index = VectorIndex(vectors.shape[1], self.model_id, IndexParams(kind=kind))
        return self.index.add(keep_ids, keep_texts, vectors, keep_metas, keep_hashes)

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        if "ids" not in kwargs and any(d.id for d in documents):
            kwargs["ids"] = [d.id for d in documents]
        return self.add_texts(
            [d.page_content for d in documents], [d.metadata for d in documents], **kwargs
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Remove documents by id; unknown ids are ignored. True if any was removed."""
        if not ids or self.index is None:
            return False
        return self.index.delete(ids) > 0

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if self.index is None:
            return []
        return [_doc(r) for r in self.index.get(list(ids))]

    # ------------------------------------------------------------ reading
    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    def _search(
        self, vector: np.ndarray, k: int, flt: Filter, fetch_k: int | None = None
    ) -> list[tuple[Record, float]]:
        if self.index is None or len(self.index) == 0:
            return []
        want = fetch_k or k
        if flt is None:
            return self.index.search(vector, want)[0]
        n = max(want * 4, 32)
        while True:  # widen the search until enough hits pass the filter (or all were seen)
            hits = [(r, s) for r, s in self.index.search(vector, n)[0] if _matches(r.metadata, flt)]
            if len(hits) >= want or n >= len(self.index):
                return hits[:want]
            n *= 4

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, *, filter: Filter = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents nearest to ``embedding`` with their cosine similarity (higher is closer)."""
        q = normalize(np.asarray(embedding, dtype=np.float32))
        return [(_doc(r), s) for r, s in self._search(q, k, filter)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if self.index is None or len(self.index) == 0:
            return []
        return self.similarity_search_with_score_by_vector(
            _embed_query(self.embedding, query)[0].tolist(), k, **kwargs
        )

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: (1.0 + score) / 2.0  # cosine in [-1, 1] -> relevance in [0, 1]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        *,
        filter: Filter = None,
        **kwargs: Any,
    ) -> list[Document]:
        from langchain_core.vectorstores.utils import maximal_marginal_relevance

        q = normalize(np.asarray(embedding, dtype=np.float32))
        hits = self._search(q, k, filter, fetch_k=max(fetch_k, k))
        if not hits:
            return []
        assert self.index is not None  # _search returns hits only from an index
        vecs = self.index.vectors_for([r.id for r, _ in hits])
        picked = maximal_marginal_relevance(
            q[0], list(vecs), lambda_mult=lambda_mult, k=min(k, len(hits))
        )
        return [_doc(hits[i][0]) for i in picked]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        if self.index is None or len(self.index) == 0:
            return []
        q = _embed_query(self.embedding, query)[0].tolist()
        return self.max_marginal_relevance_search_by_vector(q, k, fetch_k, lambda_mult, **kwargs)

    def as_retriever(  # type: ignore[override]
        self, k: int = 4, search_type: str = "similarity", **kwargs: Any
    ) -> FaissRetriever:
        """A ``FaissRetriever`` returning ``k`` documents (``search_type``: similarity or mmr)."""
        return FaissRetriever(store=self, k=k, search_type=search_type, **kwargs)

    def require_documents(self) -> None:
        """Raise ``RetrievalError`` saying how to build the index when it holds nothing."""
        if len(self) == 0:
            where = self.path or "DIR"
            raise RetrievalError(f"the index at {where} is empty; " + build_hint(where))


class FaissRetriever(BaseRetriever):
    """LangChain retriever over a ``FaissVectorStore`` (or the index folder at ``path``).

    ``invoke(query, k=3)`` overrides ``k`` per call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    store: Any = Field(None, description="a FaissVectorStore")
    path: str | None = Field(None, description="an index folder to load when no store is given")
    k: int = Field(4, ge=1)
    search_type: Literal["similarity", "mmr"] = "similarity"
    fetch_k: int = Field(20, ge=1)
    lambda_mult: float = Field(0.5, ge=0.0, le=1.0)
    filter: Any = None

    @model_validator(mode="after")
    def _resolve(self) -> FaissRetriever:
        if self.store is None:
            if self.path is None:
                raise RetrievalError("FaissRetriever needs a store or a path to an index folder")
            self.store = FaissVectorStore.load(self.path)
        return self

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        n = k or self.k
        if self.search_type == "mmr":
            return self.store.max_marginal_relevance_search(
                query, n, max(self.fetch_k, n), self.lambda_mult, filter=self.filter
            )
        return self.store.similarity_search(query, n, filter=self.filter)


_OPEN_LOCKS: dict[Path, threading.Lock] = {}
_OPEN_LOCKS_GUARD = threading.Lock()


def open_store(
    index: str | Path | FaissVectorStore | None,
    default: Path,
    documents: Callable[[], list[Document]],
    *,
    what: str = "the bundled documents",
) -> FaissVectorStore:
    """The store an app retrieves from: ``index`` as given (a store, or a folder that must hold
    documents), else the index at ``default``, built from ``documents()`` the first time and
    rebuilt when it no longer loads (written by another version of the format). One build per
    ``default`` at a time in this process."""
    if isinstance(index, FaissVectorStore):
        return index
    if index is not None:
        store = FaissVectorStore.load(index)
        store.require_documents()
        return store
    with _OPEN_LOCKS_GUARD:
        lock = _OPEN_LOCKS.setdefault(default.resolve(), threading.Lock())
    with lock:
        if (default / "manifest.json").exists():
            try:
                return FaissVectorStore.load(default)
            except RetrievalError as err:  # ours to redo: it is built from bundled data
                log.warning("rebuilding %s: %s", default, err)
        log.warning("indexing %s once into %s", what, default)
        return FaissVectorStore.build(documents(), path=default)
