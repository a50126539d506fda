"""The data ingestion hands around: articles, per-source reports and the options of a fetch."""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

SourceKind = Literal["feed", "newsapi", "file"]


def content_id(*parts: str) -> str:
    """A short, stable id from content, so reruns recognise the same article."""
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:12]


def safe_http_url(url: object) -> str | None:
    """``url`` if it is an absolute http(s) URL without control characters or spaces, else None.

    Feed content is untrusted: ``javascript:``, ``data:``, ``file:`` and relative or malformed
    links are dropped rather than repaired, so nothing but a web address ever becomes a link.
    Any control, format, separator or space character (U+0085, U+2028, U+200B, ...) anywhere
    rejects the link: a browser or a line splitter would read such a URL differently than we do.
    """
    if not isinstance(url, str):
        return None
    url = url.strip()
    if (
        not url
        or len(url) > 2048
        or any(ord(c) < 0x21 or unicodedata.category(c)[0] in "CZ" for c in url)
    ):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


class NewsItem(BaseModel):
    """One article as ingested; its JSONL rows are valid input of ``llmapps run news-riddle``.

    Attributes:
        id: stable content id (from the URL, else title and text).
        title: headline, plain text.
        text: article body, plain text, cleaned.
        url: the article's http(s) address, or "" when it has none we trust.
        source: the feed's or outlet's name.
        date: publication date (ISO 8601 when the source gave one).
        author: byline, if any.
        origin: the feed URL, API query or file it came from.
        full_text: whether ``text`` was extracted from the article page (not the feed's teaser).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    text: str
    url: str = ""
    source: str = ""
    date: str = ""
    author: str = ""
    origin: str = ""
    full_text: bool = False


class SourceReport(BaseModel):
    """What happened to one source: how many entries it gave, what landed and why not.

    ``status`` is ``ok`` (everything landed), ``partial`` (some entries were skipped or their pages
    could not be fetched, see ``warnings``) or ``failed`` (nothing landed, see ``error``).
    """

    model_config = ConfigDict(extra="forbid")

    source: str
    kind: SourceKind
    status: Literal["ok", "partial", "failed"] = "ok"
    entries: int = 0
    landed: int = 0
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    elapsed_s: float = 0.0

    def fail(self, reason: str) -> SourceReport:
        """Mark the source failed with ``reason`` (returns self, for one-line use)."""
        self.status, self.error, self.landed = "failed", reason, 0
        return self

    def warn(self, message: str) -> None:
        """Record a non-fatal problem; the source becomes ``partial``."""
        self.warnings.append(message)
        if self.status == "ok":
            self.status = "partial"


class CleanStats(BaseModel):
    """Counts of what cleaning removed or changed, for the run report."""

    model_config = ConfigDict(extra="forbid")

    kept: int = 0
    too_short: int = 0
    truncated: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    boilerplate_lines: int = 0
    pii_replacements: int = 0
    dropped: list[str] = Field(default_factory=list, description="'<title or id>: <why>' per drop")


class IngestResult(BaseModel):
    """Everything one ingestion run produced."""

    model_config = ConfigDict(extra="forbid")

    items: list[NewsItem] = Field(default_factory=list)
    reports: list[SourceReport] = Field(default_factory=list)
    cleaning: CleanStats = Field(default_factory=CleanStats)

    @property
    def failed(self) -> list[SourceReport]:
        """Reports of the sources from which nothing landed."""
        return [r for r in self.reports if r.status == "failed"]
