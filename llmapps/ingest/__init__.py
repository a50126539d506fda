"""News ingestion: feeds, a NewsAPI-compatible API and local files in; clean, unique articles out.

App-agnostic (no app is imported here): ``ingest(sources)`` returns ``IngestResult`` with the
articles (``NewsItem``) and one ``SourceReport`` per source. ``llmapps news fetch`` is its CLI.

Names are imported lazily (PEP 562) so that the CLI, which registers ``news`` and ``daily`` on every
start, does not pay for httpx, numpy and lxml until a command actually runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CleanOptions": "clean",
    "clean_items": "clean",
    "html_to_text": "clean",
    "normalize_text": "clean",
    "scrub_pii": "clean",
    "FetchError": "fetcher",
    "Fetcher": "fetcher",
    "FetchOptions": "fetcher",
    "IngestResult": "models",
    "NewsItem": "models",
    "SourceReport": "models",
    "safe_http_url": "models",
    "IngestOptions": "pipeline",
    "aingest": "pipeline",
    "ingest": "pipeline",
    "write_jsonl": "pipeline",
    "write_report": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmapps.ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llmapps.ingest.{module}"), name)
