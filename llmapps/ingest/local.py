"""Local sources: JSONL, CSV, text, Markdown, HTML and feed files, or a directory of them.

Column and key names are matched loosely (``text``/``content``/``body``/``description``,
``url``/``link``, ``date``/``published``/``publishedAt``) so exports of common tools load as-is.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from llmapps.ingest.extract import extract_page
from llmapps.ingest.feeds import FeedError, RawEntry, parse_feed
from llmapps.ingest.models import safe_http_url
from llmapps.jsonl import parse_jsonl

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".txt": "text",
    ".md": "text",
    ".html": "html",
    ".htm": "html",
    ".xml": "feed",
    ".rss": "feed",
    ".atom": "feed",
    ".rdf": "feed",
}
_KEYS = {
    "title": ("title", "headline", "name"),
    "text": ("text", "content", "body", "article", "description", "summary"),
    "url": ("url", "link", "href"),
    "date": ("date", "published", "publishedAt", "published_at", "pubDate"),
    "author": ("author", "byline", "creator"),
    "source": ("source", "outlet", "publisher", "site"),
}


def _pick(row: dict[str, Any], field: str) -> str:
    for key in _KEYS[field]:
        value = row.get(key)
        if isinstance(value, dict):  # NewsAPI-style {"source": {"name": ...}}
            value = value.get("name") or value.get("id")
        if value not in (None, ""):
            return str(value)
    return ""


def _row_entry(row: dict[str, Any]) -> RawEntry:
    link = _pick(row, "url")
    return RawEntry(
        title=_pick(row, "title"),
        text=_pick(row, "text"),
        url=safe_http_url(link) or "",
        date=_pick(row, "date"),
        author=_pick(row, "author"),
        source=_pick(row, "source"),
    )


def read_file(
    path: Path, *, lenient: bool = False, max_entry_chars: int = 200_000
) -> tuple[list[RawEntry], list[str]]:
    """Entries of one local file and the warnings met; raise ``FeedError`` if it is unusable."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FeedError(
            f"unsupported file type {path.suffix!r}; use one of {', '.join(sorted(SUFFIXES))}"
        )
    raw = path.read_bytes()
    if kind == "feed":
        parsed = parse_feed(raw, lenient=lenient, max_entry_chars=max_entry_chars)
        return parsed.entries, parsed.warnings
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FeedError(f"not UTF-8 text (byte {err.start}): re-save the file as UTF-8") from err
    warnings: list[str] = []
    entries: list[RawEntry] = []
    if kind == "jsonl":
        rows, problems = parse_jsonl(text, "")  # problems read ":LINE: reason"
        warnings += [f"line {p[1:]}: skipped" for p in problems]
        entries += [_row_entry(row) for _, row in rows]
    elif kind == "csv":
        for lineno, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            if not any(row.values()):
                continue
            entry = _row_entry({k.strip(): v for k, v in row.items() if k})
            if not entry.text and not entry.title:
                warnings.append(
                    f"row {lineno}: no title or text column "
                    f"(expected one of {', '.join(_KEYS['text'])}): skipped"
                )
                continue
            entries.append(entry)
    elif kind == "html":
        title, body = extract_page(text)
        if not body:
            raise FeedError("no article text found in the HTML")
        entries.append(RawEntry(title=title or path.stem, text=body))
    else:
        lines = text.splitlines()
        nonempty = [i for i, ln in enumerate(lines) if ln.strip()]
        if len(nonempty) < 2:
            raise FeedError("a text article needs a title line and at least one line of text")
        first = nonempty[0]
        entries.append(
            RawEntry(title=lines[first].strip().lstrip("# "), text="\n".join(lines[first + 1 :]))
        )
    too_long = [e for e in entries if len(e.text) + len(e.title) > max_entry_chars]
    for e in too_long:
        warnings.append(
            f"entry {e.title[:60]!r} is over the {max_entry_chars}-character limit: skipped"
        )
    return [e for e in entries if e not in too_long], warnings


def local_files(path: Path) -> list[Path]:
    """``path`` itself, or the supported files under a directory (sorted, hidden ones skipped)."""
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    return [path]
