"""A client for NewsAPI-compatible JSON APIs (``/v2/everything``), any base URL.

The key comes from the environment only (``LLMAPPS_INGEST__NEWSAPI_KEY`` or ``NEWSAPI_KEY``) and is
sent as the ``X-Api-Key`` header, never in the URL, so it cannot end up in a log or report.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from llmapps.ingest.feeds import FeedError, RawEntry
from llmapps.ingest.models import safe_http_url

# NewsAPI cuts ``content`` to ~200 characters and appends "… [+1234 chars]": a teaser.
_TRUNCATED_RE = re.compile(r"\s*…?\s*\[\+\d+ chars\]\s*$")


def newsapi_key() -> str | None:
    """The API key from settings/environment, or None."""
    from llmapps.settings import get_settings

    key = get_settings().ingest.newsapi_key
    return key.get_secret_value() if key else os.environ.get("NEWSAPI_KEY") or None


def newsapi_request(
    query: str,
    base_url: str,
    *,
    page_size: int = 20,
    language: str | None = None,
    key: str | None = None,
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The (url, params, headers) of an ``everything`` search for ``query``."""
    base = safe_http_url(base_url)
    if base is None:
        raise FeedError(f"NewsAPI base URL {base_url!r} is not an http(s) URL")
    params: dict[str, Any] = {"q": query, "pageSize": page_size, "sortBy": "publishedAt"}
    if language:
        params["language"] = language
    headers = {"X-Api-Key": key} if key else {}
    return base.rstrip("/") + "/v2/everything", params, headers


def parse_newsapi(content: bytes) -> tuple[list[RawEntry], list[str]]:
    """Entries of a NewsAPI JSON response; raise ``FeedError`` for an error response or bad JSON."""
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FeedError(f"not JSON: {err}") from err
    if not isinstance(data, dict):
        raise FeedError("expected a JSON object with 'status' and 'articles'")
    if data.get("status") == "error":
        raise FeedError(f"API error {data.get('code', '?')}: {data.get('message', 'no message')}")
    articles = data.get("articles")
    if not isinstance(articles, list):
        raise FeedError("response has no 'articles' list")
    entries, warnings = [], []
    for i, a in enumerate(articles):
        if not isinstance(a, dict):
            warnings.append(f"article {i + 1}: not an object: skipped")
            continue
        source = a.get("source")
        name = source.get("name", "") if isinstance(source, dict) else str(source or "")
        content_text = _TRUNCATED_RE.sub("", str(a.get("content") or ""))
        description = str(a.get("description") or "")
        entries.append(
            RawEntry(
                title=str(a.get("title") or ""),
                text=max(content_text, description, key=len),
                url=safe_http_url(a.get("url")) or "",
                date=str(a.get("publishedAt") or ""),
                author=str(a.get("author") or ""),
                source=str(name or ""),
            )
        )
    return entries, warnings
