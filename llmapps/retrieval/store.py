"""A FAISS vector index with its documents, persisted without pickle.

``VectorIndex`` works on vectors (no embedding model): an exact index (``flat``: inner product on
normalised vectors, i.e. cosine) or an approximate one (``hnsw``, ``ivf``), wrapped so every vector
carries a stable int64 label; a docstore maps labels to document ids, texts, metadata and content
hashes.

On disk a folder holds::

    manifest.json            model id, dimension, normalisation, count, index kind and parameters,
                             file names and their SHA-256, the generation number
    index-<gen>.faiss        faiss.write_index output
    docstore-<gen>.jsonl     one JSON object per vector: label, id, text, metadata, hash

Saving writes a new generation beside the old one and then atomically replaces ``manifest.json``,
so a reader sees either the old index or the new one, never a mix; a crash leaves the old one
intact. A save refuses to overwrite a generation written by someone else since this index was
loaded (``llmapps index add`` also holds ``.lock`` in the folder for its whole load-add-save).

Loading trusts nothing on disk: the manifest is validated by a strict model (``IndexManifest``:
types, ranges, one index and one docstore file named ``index-N.faiss`` / ``docstore-N.jsonl``,
which keeps every path inside the folder) and carries its own SHA-256 (``checksum``); the data
files must match theirs; a FAISS file that reads badly, a docstore that is not UTF-8 JSONL, and
counts or labels that disagree are each one ``RetrievalError`` line saying to rebuild.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from llmapps.errors import RetrievalError
from llmapps.hashing import sha256_file
from llmapps.jsonl import atomic_write, dumps_line, json_checksum, read_jsonl
from llmapps.retrieval.manifest import FORMAT_VERSION as FORMAT_VERSION
from llmapps.retrieval.manifest import (
    DocRow,
    IndexKind,
    confined,
    generation_on_disk,
    read_index_manifest,
)
from llmapps.retrieval.manifest import IndexManifest as IndexManifest  # importable from here too
from llmapps.retrieval.manifest import build_hint as build_hint
from llmapps.retrieval.manifest import choose_kind as choose_kind
from llmapps.retrieval.manifest import read_manifest as read_manifest

log = logging.getLogger(__name__)


@dataclass
class Record:
    """One stored document (or chunk): its faiss label, id, text, metadata and content hash."""

    label: int
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    hash: str = ""


@dataclass
class IndexParams:
    """How the FAISS index is built and searched (saved in the manifest)."""

    kind: IndexKind = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    # 64 reaches recall@10 1.000 on 100k MiniLM-like vectors (0.23 ms/query; 32 gives 0.970 at
    # 0.16 ms); benchmarks/bench_retrieval.py shows the curve. tune_ef_search() fits it per index.
    hnsw_ef_search: int = 64
    ivf_nlist: int | None = None
    ivf_nprobe: int | None = None


def _fsync_replace(tmp: Path, final: Path) -> None:
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


class VectorIndex:
    """Vectors in FAISS plus their documents; upsert, delete by id, search, save and load.

    Args:
        dimension: vector size.
        model_id: the embedding model the vectors come from (checked when loading).
        params: index kind and parameters.
    """

    def __init__(self, dimension: int, model_id: str, params: IndexParams | None = None) -> None:
        self.dimension = int(dimension)
        self.model_id = model_id
        self.params = params or IndexParams()
        self.records: dict[str, Record] = {}
        self._by_label: dict[int, str] = {}
        self._by_hash: dict[str, set[str]] = {}
        self.next_label = 0
        self.index: Any = None  # created on the first add (IVF needs vectors to train)
        self.path: Path | None = None
        self.generation = 0
        self.extra: dict[str, Any] = {}  # saved in the manifest (e.g. chunking settings)

    # ---------------------------------------------------------------- faiss
    def _new_faiss(self, train: np.ndarray | None) -> Any:
        import faiss

        p, d = self.params, self.dimension
        inner: faiss.Index
        if p.kind == "flat":
            inner = faiss.IndexFlatIP(d)
        elif p.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = p.hnsw_ef_construction
            hnsw.hnsw.efSearch = p.hnsw_ef_search
            inner = hnsw
        elif p.kind == "ivf":
            n = 0 if train is None else len(train)
            nlist = p.ivf_nlist or max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39 or 1))
            if n < nlist:
                raise RetrievalError(
                    f"an IVF index with {nlist} lists needs at least {nlist} vectors to train, got {n}; "
                    "use index kind flat or hnsw for small collections"
                )
            assert train is not None  # n >= nlist >= 1 here, so train was given
            quantizer = faiss.IndexFlatIP(d)
            ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(train)
            ivf.nprobe = p.ivf_nprobe or max(8, nlist // 8)
            p.ivf_nlist, p.ivf_nprobe = nlist, ivf.nprobe
            self._quantizer = quantizer  # keep the Python object alive with the index
            inner = ivf
        else:  # pragma: no cover - guarded by the Literal
            raise RetrievalError(f"unknown index kind {p.kind!r}; use flat, hnsw or ivf")
        idx = faiss.IndexIDMap2(inner)
        self._inner: faiss.Index = inner
        return idx

    def _apply_search_params(self) -> None:
        import faiss

        # downcast_index returns the concrete SWIG subclass, but its stub says only faiss.Index
        inner = faiss.downcast_index(self.index.index)
        if self.params.kind == "hnsw":
            cast(faiss.IndexHNSW, inner).hnsw.efSearch = self.params.hnsw_ef_search
        elif self.params.kind == "ivf" and self.params.ivf_nprobe:
            cast(faiss.IndexIVF, inner).nprobe = self.params.ivf_nprobe
        self._inner = inner

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dimension:
            raise RetrievalError(
                f"vectors of shape {tuple(v.shape)} do not fit this index of dimension {self.dimension} "
                f"(built with {self.model_id}); embed with the same model"
            )
        return v

    # ---------------------------------------------------------------- content
    def __len__(self) -> int:
        return len(self.records)

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def ids_with_hash(self, content_hash: str) -> set[str]:
        """Ids of stored documents whose content hash is ``content_hash``."""
        return set(self._by_hash.get(content_hash, ()))

    def add(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        vectors: np.ndarray,
        metadatas: Sequence[dict[str, Any]] | None = None,
        hashes: Sequence[str] | None = None,
    ) -> list[str]:
        """Insert documents; an id already stored is replaced (upsert)."""
        if not ids:
            return []
        v = self._check_vectors(vectors)
        if not (len(ids) == len(texts) == len(v)):
            raise RetrievalError(
                f"got {len(ids)} ids, {len(texts)} texts and {len(v)} vectors; they must match"
            )
        if len(set(ids)) != len(ids):
            # keep the last occurrence, as sequential upserts would
            last = {i: n for n, i in enumerate(ids)}
            keep = sorted(last.values())
            ids = [ids[n] for n in keep]
            texts = [texts[n] for n in keep]
            v = v[keep]
            metadatas = [metadatas[n] for n in keep] if metadatas else None
            hashes = [hashes[n] for n in keep] if hashes else None
        self.delete([i for i in ids if i in self.records])
        if self.index is None:
            self.index = self._new_faiss(v)
        labels = np.arange(self.next_label, self.next_label + len(ids), dtype=np.int64)
        self.index.add_with_ids(v, labels)
        self.next_label += len(ids)
        from llmapps.retrieval.embeddings import text_hash

        for n, (i, t) in enumerate(zip(ids, texts, strict=True)):
            h = hashes[n] if hashes else text_hash(t)
            rec = Record(int(labels[n]), str(i), t, dict(metadatas[n]) if metadatas else {}, h)
            self.records[rec.id] = rec
            self._by_label[rec.label] = rec.id
            self._by_hash.setdefault(h, set()).add(rec.id)
        return [str(i) for i in ids]

    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id (unknown ids are ignored); returns how many were removed."""
        recs = [self.records[i] for i in dict.fromkeys(ids) if i in self.records]
        if not recs:
            return 0
        labels = np.array([r.label for r in recs], dtype=np.int64)
        if self.params.kind == "flat":
            self.index.remove_ids(labels)
        else:
            # HNSW cannot remove in place; IVF keeps its training: re-add the survivors.
            all_labels, all_vecs = self.labels_and_vectors()
            keep = ~np.isin(all_labels, labels)
            self.index.reset()
            if keep.any():
                self.index.add_with_ids(all_vecs[keep], all_labels[keep])
        for r in recs:
            del self.records[r.id]
            del self._by_label[r.label]
            bucket = self._by_hash.get(r.hash)
            if bucket:
                bucket.discard(r.id)
                if not bucket:
                    del self._by_hash[r.hash]
        return len(recs)

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Stored records for ``ids``, in order; unknown ids are left out."""
        return [self.records[i] for i in ids if i in self.records]

    def labels_and_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored label and its vector (read back from FAISS)."""
        import faiss

        if self.ntotal == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dimension), dtype=np.float32)
        labels = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vecs = self._inner.reconstruct_n(0, self.ntotal)
        return labels, np.asarray(vecs, dtype=np.float32)

    def vectors_for(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` (all must exist)."""
        labels = [self.records[i].label for i in ids]
        return (
            np.stack([self.index.reconstruct(int(lb)) for lb in labels])
            if labels
            else np.zeros((0, self.dimension), dtype=np.float32)
        )

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[Record, float]]]:
        """The ``k`` nearest stored documents of each query row, best first, with cosine scores."""
        q = self._check_vectors(queries)
        if self.ntotal == 0 or k <= 0:
            return [[] for _ in range(len(q))]
        scores, labels = self._faiss_search(q, min(k, self.ntotal))
        out = []
        for srow, lrow in zip(scores, labels, strict=True):
            hits = [
                (self.records[self._by_label[int(lb)]], float(s))
                for s, lb in zip(srow, lrow, strict=True)
                if lb >= 0 and int(lb) in self._by_label
            ]
            out.append(hits)
        return out

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if len(q) >= 16:
            return self.index.search(q, k)
        # A few queries gain nothing from OpenMP threads, and on a busy machine waking them costs
        # milliseconds per query (measured: 20x slower single-query latency on 2 shared cores).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(q, k)
        finally:
            faiss.omp_set_num_threads(threads)

    def recall_at_k(self, k: int = 10, n_queries: int = 200, seed: int = 0) -> float:
        """Recall@k of this index against exact search, queried with perturbed stored vectors."""
        import faiss

        labels, vecs = self.labels_and_vectors()
        if len(vecs) == 0:
            raise RetrievalError("the index is empty; there is nothing to check")
        if self.params.kind == "flat":
            return 1.0
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(vecs), size=min(n_queries, len(vecs)), replace=False)
        q = vecs[pick] + rng.normal(scale=0.05, size=(len(pick), self.dimension)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exact = faiss.IndexFlatIP(self.dimension)
        exact.add(vecs)
        kk = min(k, len(vecs))
        _, truth = exact.search(q, kk)
        _, approx = self.index.search(q, kk)
        truth_labels = labels[truth]
        hits = sum(
            len(set(t) & set(a))
            for t, a in zip(truth_labels.tolist(), approx.tolist(), strict=True)
        )
        return hits / (len(q) * kk)

    def tune_ef_search(self, target_recall: float = 0.95, k: int = 10, max_ef: int = 1024) -> float:
        """Set HNSW ``efSearch`` to the smallest power of two (>= k) reaching ``target_recall``.

        Recall is measured with ``recall_at_k`` on this index's own vectors; the chosen value is
        kept in ``params`` (and so in the saved manifest). Returns the recall reached.

        Raises:
            RetrievalError: the index is not HNSW, or ``target_recall`` is not in (0, 1].
        """
        if self.params.kind != "hnsw":
            raise RetrievalError(
                f"efSearch applies to hnsw indexes; this one is {self.params.kind!r}"
            )
        if not 0 < target_recall <= 1:
            raise RetrievalError(f"target_recall must be in (0, 1], got {target_recall}")
        ef = 1 << max(k - 1, 1).bit_length()
        while True:
            self.params.hnsw_ef_search = ef
            self._apply_search_params()
            recall = self.recall_at_k(k)
            if recall >= target_recall or ef >= max_ef:
                return recall
            ef *= 2

    # ---------------------------------------------------------------- persistence
    def manifest(self, files: dict[str, str] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "embedding_model": self.model_id,
            "dimension": self.dimension,
            "normalized": True,
            "metric": "inner_product",
            "count": len(self.records),
            "next_label": self.next_label,
            "index": dict(self.params.__dict__),
            "generation": self.generation,
            "files": files or {},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"config": self.extra} if self.extra else {}),
        }
        data["checksum"] = json_checksum(data)
        return data

    def save(self, path: Path | str | None = None) -> Path:
        """Write the index atomically to ``path`` (default: where it was loaded from).

        Raises:
            RetrievalError: another writer saved a newer generation into ``path`` since this
                index was loaded from it (reload and redo the change).
        """
        import faiss

        target = Path(path) if path is not None else self.path
        if target is None:
            raise RetrievalError("this index has no folder yet; pass save(path)")
        target.mkdir(parents=True, exist_ok=True)
        on_disk = generation_on_disk(target)
        if (
            self.path is not None
            and self.path.resolve() == target.resolve()
            and on_disk > self.generation
        ):
            raise RetrievalError(
                f"{target} was saved by another writer (generation {on_disk}) since this index was "
                f"loaded (generation {self.generation}); load it again and redo the change"
            )
        gen = max(self.generation, on_disk) + 1
        index_name, doc_name = f"index-{gen}.faiss", f"docstore-{gen}.jsonl"
        tmp_index = target / f".{index_name}.tmp"
        if self.index is None:
            self.index = (
                self._new_faiss(np.zeros((0, self.dimension), np.float32))
                if self.params.kind != "ivf"
                else None
            )
        if self.index is not None:
            faiss.write_index(self.index, str(tmp_index))
        else:  # an empty IVF index has not been trained: store an empty flat one
            faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension)), str(tmp_index))
        _fsync_replace(tmp_index, target / index_name)
        atomic_write(
            target / doc_name,
            "".join(
                dumps_line(
                    {
                        "label": rec.label,
                        "id": rec.id,
                        "text": rec.text,
                        "metadata": rec.metadata,
                        "hash": rec.hash,
                    }
                )
                for rec in sorted(self.records.values(), key=lambda r: r.label)
            ),
        )
        self.generation = gen
        files = {
            index_name: sha256_file(target / index_name),
            doc_name: sha256_file(target / doc_name),
        }
        atomic_write(target / "manifest.json", json.dumps(self.manifest(files), indent=2) + "\n")
        # The new manifest is in place: older generations are garbage now.
        for stale in [*target.glob("index-*.faiss"), *target.glob("docstore-*.jsonl")]:
            if stale.name not in files:
                with contextlib.suppress(OSError):
                    stale.unlink()
        self.path = target
        log.info("saved %d vectors to %s (generation %d)", len(self.records), target, gen)
        return target

    @classmethod
    def load(cls, path: Path | str, *, expected_model: str | None = None) -> VectorIndex:
        """Load and verify an index folder written by ``save``.

        Raises:
            RetrievalError: missing folder or manifest, a manifest that fails ``IndexManifest``
                or its checksum, another embedding model than ``expected_model``, a file outside
                the folder, a checksum mismatch, an unreadable FAISS file or docstore, or counts
                and labels that disagree; always one line saying what to do.
        """
        import faiss

        folder = Path(path)
        m = read_index_manifest(folder)
        hint = "rebuild: " + build_hint(folder)
        if expected_model is not None and expected_model != m.embedding_model:
            raise RetrievalError(
                f"the index at {folder} was built with embedding model {m.embedding_model!r}, "
                f"but the embedding model in use is {expected_model!r}; set "
                f"LLMAPPS_RETRIEVAL__EMBEDDING_MODEL={m.embedding_model} or rebuild the index"
            )
        for name, digest in m.files.items():
            f = confined(folder, name)
            if sha256_file(f) != digest:
                raise RetrievalError(
                    f"{f} is corrupted (its SHA-256 does not match the manifest); {hint}"
                )
        params = IndexParams(**m.index.model_dump())
        self = cls(m.dimension, m.embedding_model, params)
        index_file = folder / m.index_file
        try:
            self.index = faiss.read_index(str(index_file))
        except Exception as err:  # faiss raises RuntimeError with a C++ trace for bad bytes
            first = str(err).strip().splitlines()[-1:] or [type(err).__name__]
            raise RetrievalError(
                f"{index_file} is not a readable FAISS index ({first[0][:200]}); {hint}"
            ) from err
        if not isinstance(self.index, faiss.IndexIDMap2):
            raise RetrievalError(
                f"{index_file} is a {type(self.index).__name__}, not an index this code "
                f"writes; {hint}"
            )
        if self.index.d != self.dimension:
            raise RetrievalError(
                f"{folder}: the FAISS index has dimension {self.index.d} but the manifest "
                f"says {self.dimension}; {hint}"
            )
        inner = faiss.downcast_index(self.index.index)
        expected = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSW, "ivf": faiss.IndexIVF}[
            params.kind
        ]
        if params.kind == "ivf" and isinstance(inner, faiss.IndexFlat) and self.index.ntotal == 0:
            self.index = None  # saved empty before training
        elif not isinstance(inner, expected):
            raise RetrievalError(
                f"{index_file} holds a {type(inner).__name__}, but the manifest says "
                f"{params.kind!r}; {hint}"
            )
        else:
            self._apply_search_params()
        try:
            rows = read_jsonl(
                folder / m.docstore_file, DocRow.model_validate, max_listed=1, error=RetrievalError
            )
        except RetrievalError as err:  # the first bad line is enough: the file gets rebuilt
            bad = str(err).splitlines()[-1].strip().removeprefix("- ")
            raise RetrievalError(f"bad docstore row {bad}; {hint}") from err
        for row in rows:
            rec = Record(row.label, row.id, row.text, row.metadata, row.hash)
            if rec.id in self.records or rec.label in self._by_label:
                raise RetrievalError(
                    f"{folder / m.docstore_file}: id {rec.id[:80]!r} or label {rec.label} "
                    f"appears twice; {hint}"
                )
            self.records[rec.id] = rec
            self._by_label[rec.label] = rec.id
            self._by_hash.setdefault(rec.hash, set()).add(rec.id)
        if not (len(self.records) == self.ntotal == m.count):
            raise RetrievalError(
                f"{folder}: {self.ntotal} vectors, {len(self.records)} documents and a manifest "
                f"count of {m.count} disagree; {hint}"
            )
        if self.index is not None and self.ntotal:
            labels = set(faiss.vector_to_array(self.index.id_map).tolist())
            if labels != set(self._by_label):
                raise RetrievalError(
                    f"{folder}: the FAISS labels and the docstore's labels differ; {hint}"
                )
        top = max(self._by_label, default=-1) + 1
        if m.next_label is not None and m.next_label < top:
            raise RetrievalError(
                f"{folder}: next_label {m.next_label} is below a stored label; {hint}"
            )
        self.next_label = top if m.next_label is None else m.next_label
        self.generation = m.generation
        self.extra = dict(m.config)
        self.path = folder
        return self
