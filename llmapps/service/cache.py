"""A SQLite LangChain cache for remote model calls, and the per-model view that counts its hits.

``ResponseCache`` is a LangChain ``BaseCache``: give it to any chat model as ``cache=`` (or
process-wide with ``set_llm_cache``). LangChain keys a lookup by the prompt (the serialised
messages) and the model's ``llm_string`` (every generation parameter; ``ServiceChatModel`` adds
its endpoint and structured format), so changing any of them misses. Generations are stored with
LangChain's own serialisation and read back allowing only output and message classes. The schema
version lives in ``PRAGMA user_version``, so migrations run in order on open.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import Serializable, dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation

from llmapps.errors import ConfigError

log = logging.getLogger(__name__)

_MIGRATIONS = (
    # v1 (llmapps 0.1 before the LangChain cache): responses keyed by a hash of the endpoint, model and request payload
    """CREATE TABLE responses (
        key TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        created REAL NOT NULL,
        response TEXT NOT NULL
    )""",
    # v2: LangChain's cache contract, keyed by prompt + llm_string; v1 keys cannot be mapped
    """CREATE TABLE generations (
        key TEXT PRIMARY KEY,
        llm_string TEXT NOT NULL,
        created REAL NOT NULL,
        value TEXT NOT NULL
    )""",
)
_ALLOWED: list[type[Serializable]] = [
    Generation,
    ChatGeneration,
    ChatGenerationChunk,
    AIMessage,
    AIMessageChunk,
]


def _key(prompt: str, llm_string: str) -> str:
    return hashlib.sha256(f"{llm_string}\x00{prompt}".encode()).hexdigest()


class ResponseCache(BaseCache):
    """Thread-safe SQLite store of generations, one file shared by every model that opens it.

    Example:
        >>> from langchain_openai import ChatOpenAI
        >>> llm = ChatOpenAI(model="gpt-4o-mini", cache=ResponseCache(Path("c.sqlite")))  # doctest: +SKIP
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        except (OSError, sqlite3.Error) as err:
            raise ConfigError(
                f"cannot open the response cache at {self.path}: {err}; set "
                "LLMAPPS_SERVICE__CACHE_PATH to a writable file or turn the cache off (cache=False)"
            ) from err
        self._lock = threading.Lock()
        try:
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise ConfigError(
                f"{self.path} is not a readable response cache ({err}); delete it (it is only a "
                "cache) or point LLMAPPS_SERVICE__CACHE_PATH elsewhere"
            ) from err

    def _migrate(self) -> None:
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for i, sql in enumerate(_MIGRATIONS[version:], start=version + 1):
                self._conn.execute(sql)
                self._conn.execute(f"PRAGMA user_version = {i}")
            if version == 1:
                old = self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
                self._conn.execute("DELETE FROM responses")
                log.warning(
                    "%s: %d responses cached by an earlier llmapps are keyed differently and were "
                    "dropped; the endpoint is asked again the first time each is needed",
                    self.path,
                    old,
                )

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The cached generations, verified before use: a row whose recorded ``llm_string`` is
        not this one, or whose value does not load as generations, is a miss (logged), and the
        fresh answer replaces it."""
        try:
            with self._lock:
                row = self._conn.execute(
                    "SELECT value, llm_string FROM generations WHERE key = ?",
                    (_key(prompt, llm_string),),
                ).fetchone()
        except sqlite3.DatabaseError as err:
            raise ConfigError(
                f"{self.path} is not a readable response cache ({err}); delete it (it is only a "
                "cache) or point LLMAPPS_SERVICE__CACHE_PATH elsewhere"
            ) from err
        if row is None:
            return None
        try:
            if row[1] != llm_string:
                raise ValueError("it was stored for other model parameters")
            with warnings.catch_warnings():  # loads is marked beta; the classes allowed are fixed
                warnings.simplefilter("ignore")
                value = list(loads(row[0], allowed_objects=_ALLOWED))
            if not value or not all(isinstance(g, Generation) for g in value):
                raise ValueError("it holds no generations")
        except Exception as err:  # anything a damaged or foreign row makes loads raise
            log.warning("%s: a damaged cached response is asked again (%s)", self.path, err)
            return None
        return value

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        value = dumps(list(return_val))
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO generations (key, llm_string, created, value) "
                "VALUES (?, ?, ?, ?)",
                (_key(prompt, llm_string), llm_string, time.time(), value),
            )

    def clear(self, **kwargs: Any) -> None:
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM generations")

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_OPEN: dict[Path, ResponseCache] = {}
_OPEN_LOCK = threading.Lock()


def open_cache(path: Path) -> ResponseCache:
    """One ``ResponseCache`` per file per process (connections are shared across models)."""
    resolved = Path(path).expanduser().resolve()
    with _OPEN_LOCK:
        if resolved not in _OPEN:
            _OPEN[resolved] = ResponseCache(resolved)
        return _OPEN[resolved]


class CountedCache(BaseCache):
    """One model's view of a shared cache: counts its hits and marks what it returns as cached.

    A hit's messages come back with ``response_metadata["cached"] = True`` and ``cost_usd`` 0
    (copies: the stored generation is untouched); ``on_hit`` is called once per hit.
    """

    def __init__(self, inner: BaseCache, on_hit: Any) -> None:
        self.inner = inner
        self._on_hit = on_hit

    def _hit(self, found: Sequence[Generation] | None) -> RETURN_VAL_TYPE | None:
        if found is None:
            return None
        self._on_hit()
        out: list[Generation] = []
        for gen in found:
            if isinstance(gen, ChatGeneration):
                meta = {**gen.message.response_metadata, "cached": True, "cost_usd": 0.0}
                info = {**(gen.generation_info or {}), "cached": True}
                msg = gen.message.model_copy(update={"response_metadata": meta})
                gen = gen.model_copy(update={"message": msg, "generation_info": info})
            out.append(gen)
        return out

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return self._hit(self.inner.lookup(prompt, llm_string))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return self._hit(await self.inner.alookup(prompt, llm_string))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self.inner.update(prompt, llm_string, return_val)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        await self.inner.aupdate(prompt, llm_string, return_val)

    def clear(self, **kwargs: Any) -> None:
        self.inner.clear(**kwargs)

    async def aclear(self, **kwargs: Any) -> None:
        await self.inner.aclear(**kwargs)
