"""Feed parsing (RSS 0.9x/1.0 RDF/2.0, Atom) with feedparser, strict about ill-formed input.

``parse_feed`` returns the feed's entries or raises ``FeedError`` with a reason for the source
report: empty bodies, HTML pages, broken XML and encodings that contradict the bytes are rejected
(``lenient=True`` keeps what feedparser could recover from the last two, with a warning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from llmapps.errors import InputError
from llmapps.ingest.models import safe_http_url


class FeedError(InputError):
    """A feed cannot be used; ``reason`` is the short form used in source reports."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RawEntry:
    """An entry as the source gave it (``text`` may be HTML); cleaning comes later."""

    title: str
    text: str
    url: str = ""
    date: str = ""
    author: str = ""
    source: str = ""


@dataclass
class ParsedFeed:
    """A feed's title, its usable entries and the problems met on the way."""

    title: str
    entries: list[RawEntry]
    total: int
    warnings: list[str] = field(default_factory=list)


_XML_DECL_RE = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_UTF8 = {"utf-8", "utf8", "us-ascii", "ascii"}


def _declared_encoding(content: bytes, content_type: str) -> str | None:
    m = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", content_type or "", re.I)
    if m:
        return m.group(1).lower()
    m2 = _XML_DECL_RE.match(content[:300])
    return m2.group(1).decode("ascii").lower() if m2 else None


def _looks_like_html(content: bytes, content_type: str) -> bool:
    head = content[:1024].lstrip().lower()
    return content_type.startswith("text/html") or head.startswith((b"<!doctype html", b"<html"))


def _entry_text(entry: Any) -> str:
    candidates = [c.get("value", "") for c in entry.get("content", []) or []]
    candidates.append(entry.get("summary", "") or entry.get("description", "") or "")
    return max(candidates, key=len) if candidates else ""


def parse_feed(
    content: bytes, *, content_type: str = "", lenient: bool = False, max_entry_chars: int = 200_000
) -> ParsedFeed:
    """Parse a feed body; raise ``FeedError`` when it cannot be trusted.

    Args:
        content: the raw bytes (never a str: feedparser would treat a str as a URL to fetch).
        content_type: the HTTP ``Content-Type`` header, if any (its charset is checked too).
        lenient: keep entries feedparser recovered from broken XML or a wrong encoding.
        max_entry_chars: an entry whose text is longer is skipped with a warning.
    """
    import feedparser

    if not content.strip():
        raise FeedError(f"empty response ({len(content)} bytes): not a feed")
    warnings: list[str] = []
    declared = _declared_encoding(content, content_type)
    if declared and declared not in _UTF8 and not content.isascii():
        # Latin-1 and friends accept any bytes, so a UTF-8 body declared as one parses "fine" into
        # mojibake; bytes that are valid multi-byte UTF-8 give it away.
        try:
            content.decode("utf-8")
            msg = f"wrong declared encoding: says {declared}, but the bytes are UTF-8"
            if not lenient:
                raise FeedError(msg)
            warnings.append(msg + " (read as UTF-8)")
            content = _XML_DECL_RE.sub(
                lambda m: m.group(0).replace(m.group(1), b"utf-8"), content, count=1
            )
            content_type = re.sub(
                r"charset\s*=\s*\"?[A-Za-z0-9._-]+\"?", "charset=utf-8", content_type, flags=re.I
            )
        except UnicodeDecodeError:
            pass
    headers = {"content-type": content_type} if content_type else {}
    parsed = feedparser.parse(
        content, response_headers=headers, sanitize_html=True, resolve_relative_uris=True
    )
    version = parsed.get("version") or ""
    entries = parsed.get("entries") or []
    bozo = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if not version and not entries:
        if _looks_like_html(content, content_type):
            raise FeedError(f"not a feed: got an HTML page ({content_type or 'no content type'})")
        raise FeedError(
            f"not a feed: {_describe(bozo) if bozo else 'no RSS, RDF or Atom root element'}"
        )
    if bozo is not None and not _harmless(bozo):
        msg = _describe(bozo)
        if not lenient or not entries:
            raise FeedError(msg)
        warnings.append(f"{msg}; kept {len(entries)} recovered entries")
    feed_title = str(parsed.get("feed", {}).get("title", "") or "")
    out: list[RawEntry] = []
    for i, e in enumerate(entries):
        title = str(e.get("title", "") or "")
        text = _entry_text(e)
        if len(text) + len(title) > max_entry_chars:
            warnings.append(
                f"entry {i + 1} ({title[:60]!r}) has {len(text) + len(title)} characters, "
                f"over the {max_entry_chars} limit: skipped"
            )
            continue
        link = str(e.get("link", "") or "")
        url = safe_http_url(link) or ""
        if link and not url:
            warnings.append(f"entry {i + 1}: link {link[:60]!r} is not an http(s) URL: dropped")
        if not title.strip() and not text.strip():
            warnings.append(f"entry {i + 1}: no title and no text: skipped")
            continue
        out.append(
            RawEntry(
                title=title,
                text=text,
                url=url,
                date=str(e.get("published", "") or e.get("updated", "") or ""),
                author=str(e.get("author", "") or ""),
                source=feed_title,
            )
        )
    return ParsedFeed(title=feed_title, entries=out, total=len(entries), warnings=warnings)


def _harmless(exc: Exception) -> bool:
    # A feed served as text/plain or application/octet-stream is still a feed.
    return type(exc).__name__ == "NonXMLContentType"


def _describe(exc: Exception) -> str:
    name = type(exc).__name__
    if name == "SAXParseException":
        line = getattr(exc, "getLineNumber", lambda: "?")()
        col = getattr(exc, "getColumnNumber", lambda: "?")()
        msg = exc.getMessage() if hasattr(exc, "getMessage") else exc
        return f"not well-formed XML: {msg} (line {line}, column {col})"
    if name == "CharacterEncodingOverride":
        return f"wrong declared encoding: {exc}"
    if name == "CharacterEncodingUnknown":
        return f"unknown encoding: {exc}"
    return f"{name}: {exc}"
