"""An index folder's writes: build one from documents, add to it, delete from it.

Each holds the folder's lock for the whole load-change-save (one writer at a time; a second is a
``RetrievalError`` naming the first). ``llmapps index build|add|delete`` are these functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmapps.errors import RetrievalError


@dataclass(frozen=True)
class IndexChange:
    """What a build, an add or a delete did: chunks added, skipped (empty or already indexed)
    and removed, the index's size after, its kind, the embeddings computed and read from cache,
    the seconds."""

    added: int
    skipped: int
    total: int
    removed: int = 0
    kind: str = ""
    embedded: int = 0
    cached: int = 0
    seconds: float = 0.0


@contextmanager
def writing_index(folder: str | Path, *, existing: bool = False) -> Iterator[Path]:
    """Hold the index folder's lock for a whole load-change-save; ``existing``: the folder must
    hold an index already (else a ``RetrievalError`` saying how to build one)."""
    from llmapps.locks import exclusive_lock

    if existing and not Path(folder).is_dir():
        from llmapps.retrieval.store import build_hint

        raise RetrievalError(f"no index at {folder}; " + build_hint(folder))
    with exclusive_lock(Path(folder) / ".lock", f"the index {folder}", error=RetrievalError):
        yield Path(folder)


def load_store(folder: str | Path) -> Any:
    """The ``FaissVectorStore`` at ``folder``, which must hold documents."""
    from llmapps.retrieval.vectorstore import FaissVectorStore

    store = FaissVectorStore.load(folder)
    store.require_documents()
    return store


def _add(store: Any, inputs: Sequence[str], chunk_tokens: int | None) -> tuple[int, int]:
    from llmapps.retrieval.loaders import load_documents

    docs = [
        d
        for i in inputs
        for d in load_documents(i, embedding_model=store.model_id, chunk_tokens=chunk_tokens)
    ]
    added = store.add_documents(docs, skip_duplicates=True)
    return len(added), len(store.last_skipped)


def build_index(
    out: str | Path,
    inputs: Sequence[str],
    *,
    model: str | None = None,
    kind: str | None = None,
    chunk_tokens: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> IndexChange:
    """Embed and index the documents in ``inputs`` (files or folders) into the folder ``out``;
    an index already there is refused unless ``force``. Defaults come from settings."""
    from llmapps.retrieval.embeddings import make_embeddings
    from llmapps.retrieval.vectorstore import FaissVectorStore
    from llmapps.settings import get_settings

    out = Path(out)
    with writing_index(out):
        if (out / "manifest.json").exists() and not force:
            raise RetrievalError(
                f"{out} already holds an index; add to it with `llmapps index add --index {out} "
                "--input …`, or pass --force to rebuild it"
            )
        r = get_settings().retrieval
        t0 = time.perf_counter()
        emb = make_embeddings(model, progress=progress)
        store = FaissVectorStore(
            emb, index_kind=kind or r.index_kind, ann_above=r.auto_ann_above, path=out
        )
        added, skipped = _add(store, inputs, chunk_tokens)
        if not added:
            raise RetrievalError(f"no documents to index in {', '.join(inputs)} (all empty?)")
        assert store.index is not None  # adding documents created it
        store.index.extra = {
            "inputs": [str(i) for i in inputs],
            "chunk_tokens": chunk_tokens or r.chunk_tokens,
            "chunk_overlap": r.chunk_overlap,
        }
        store.save(out)
        return IndexChange(
            added,
            skipped,
            len(store),
            kind=store.index.params.kind,
            embedded=emb.stats["misses"],
            cached=emb.stats["hits"],
            seconds=time.perf_counter() - t0,
        )


def add_to_index(
    folder: str | Path, inputs: Sequence[str], *, progress: bool = True
) -> IndexChange:
    """Add the documents in ``inputs`` to the index at ``folder``, chunked as it was built;
    ones already indexed (same content) are skipped."""
    from llmapps.retrieval.embeddings import CachedEmbeddings
    from llmapps.retrieval.vectorstore import FaissVectorStore

    with writing_index(folder, existing=True):
        store = FaissVectorStore.load(folder)
        # load() without embeddings makes cached ones
        assert isinstance(store.embedding, CachedEmbeddings)
        store.embedding.progress = progress
        chunk_tokens = store.index.extra.get("chunk_tokens") if store.index else None
        added, skipped = _add(store, inputs, chunk_tokens)
        if added:
            store.save()
        return IndexChange(added, skipped, len(store))


def delete_from_index(folder: str | Path, ids: Sequence[str]) -> IndexChange:
    """Remove documents by chunk id or article id (an article id removes all of its chunks)."""
    with writing_index(folder, existing=True):
        store = load_store(folder)
        wanted = set(ids)
        chunks = [
            r.id
            for r in store.index.records.values()
            if r.id in wanted or r.metadata.get("doc_id") in wanted
        ]
        if not chunks:
            raise RetrievalError(
                f"none of {sorted(wanted)} is in {folder}; `llmapps index search` shows ids"
            )
        store.delete(chunks)
        store.save()
        return IndexChange(0, 0, len(store), removed=len(chunks))
