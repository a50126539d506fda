"""News ingestion: feeds, a NewsAPI-compatible API and local files in; clean, de-duplicated articles out.

App-agnostic (no app is imported here): ``ingest(sources)`` returns ``IngestResult`` with the
articles (``NewsItem``) and one ``SourceReport`` per source. ``llmapps news fetch`` is its CLI.
"""

from llmapps.ingest.clean import CleanOptions, clean_items, html_to_text, normalize_text, scrub_pii
from llmapps.ingest.fetcher import FetchError, Fetcher, FetchOptions
from llmapps.ingest.models import IngestResult, NewsItem, SourceReport, safe_http_url
from llmapps.ingest.pipeline import IngestOptions, aingest, ingest, write_jsonl, write_report

__all__ = [
    "CleanOptions", "FetchError", "FetchOptions", "Fetcher", "IngestOptions", "IngestResult", "NewsItem",
    "SourceReport", "aingest", "clean_items", "html_to_text", "ingest", "normalize_text", "safe_http_url",
    "scrub_pii", "write_jsonl", "write_report",
]
