"""A SQLite response cache for remote model calls, keyed by everything that shapes the answer.

The key is a SHA-256 over the endpoint, the model and the full request payload (messages and
every generation parameter), so changing any of them misses. Rows are append-only; the schema
version lives in ``PRAGMA user_version`` so later migrations can be added in order.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError

_MIGRATIONS = (
    """CREATE TABLE responses (
        key TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        created REAL NOT NULL,
        response TEXT NOT NULL
    )""",
)


def cache_key(endpoint: str, model: str, payload: dict[str, Any]) -> str:
    """The cache key of one request: endpoint, model and the whole payload, canonically encoded."""
    blob = json.dumps(
        {"endpoint": endpoint, "model": model, "payload": payload},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Thread-safe SQLite store of JSON responses.

    Example:
        >>> cache = ResponseCache(Path("/tmp/c.sqlite"))           # doctest: +SKIP
        >>> cache.put(key, "http://127.0.0.1:8000/v1", "m", {"content": "hi"})  # doctest: +SKIP
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
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for i, sql in enumerate(_MIGRATIONS[version:], start=version + 1):
                self._conn.execute(sql)
                self._conn.execute(f"PRAGMA user_version = {i}")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT response FROM responses WHERE key = ?", (key,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, endpoint: str, model: str, response: dict[str, Any]) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, endpoint, model, created, response) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, endpoint, model, time.time(), json.dumps(response, ensure_ascii=False)),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

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
