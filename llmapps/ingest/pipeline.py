"""The ingestion run: fetch every source concurrently, fill in teasers from article pages, clean.

One bad source never stops the others: each gets a ``SourceReport`` saying what landed and, if
nothing did, why. ``ingest`` is the blocking entry point; ``aingest`` the async one.

Example:
    >>> result = ingest(["https://example.org/feed.xml", "saved/articles.jsonl"])  # doctest: +SKIP
    >>> [r.error for r in result.failed]                                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmapps.errors import InputError
from llmapps.ingest.clean import CleanOptions, clean_items, html_to_text
from llmapps.ingest.extract import extract_page
from llmapps.ingest.feeds import FeedError, RawEntry, parse_feed
from llmapps.ingest.fetcher import Fetcher, FetchError, FetchOptions
from llmapps.ingest.local import SUFFIXES, local_files, read_file
from llmapps.ingest.models import (
    IngestResult,
    NewsItem,
    SourceKind,
    SourceReport,
    content_id,
    safe_http_url,
)
from llmapps.ingest.newsapi import newsapi_key, newsapi_request, parse_newsapi

log = logging.getLogger(__name__)

FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml, application/xml;q=0.9, "
    "text/xml;q=0.8, */*;q=0.1"
)


class IngestOptions(BaseModel):
    """Everything an ingestion run can be told; ``fetch`` and ``clean`` are grouped."""

    model_config = ConfigDict(extra="forbid")

    # Defaults come from settings (LLMAPPS_INGEST__*), so the library and the CLI agree.
    fetch: FetchOptions = Field(default_factory=FetchOptions.from_settings)
    clean: CleanOptions = Field(default_factory=CleanOptions)
    full_text: bool = Field(
        True, description="fetch the article page when an entry is only a teaser"
    )
    teaser_words: int = Field(80, ge=0, description="entries with fewer words count as teasers")
    max_entry_chars: int = Field(
        200_000, ge=100, description="a larger entry is skipped and reported"
    )
    max_per_source: int | None = Field(
        None, ge=1, description="keep at most this many entries per source"
    )
    lenient: bool = Field(
        False, description="keep entries recovered from broken XML or wrong encodings"
    )
    newsapi_base_url: str = Field(default_factory=lambda: _settings_ingest().newsapi_base_url)
    newsapi_page_size: int = Field(20, ge=1, le=100)
    newsapi_language: str | None = None


def _settings_ingest() -> Any:
    from llmapps.settings import get_settings

    return get_settings().ingest


def source_kind(source: str) -> SourceKind:
    """``feed`` for an http(s) URL, ``file`` for anything else (a local path)."""
    return "feed" if safe_http_url(source) else "file"


async def aingest(
    sources: Sequence[str] = (),
    *,
    newsapi_queries: Sequence[str] = (),
    options: IngestOptions | None = None,
    progress: Callable[[SourceReport], None] | None = None,
    fetcher: Fetcher | None = None,
) -> IngestResult:
    """Fetch ``sources`` (feed URLs or local paths) and ``newsapi_queries``; clean; report.

    Args:
        sources: http(s) feed URLs, or paths of local files/directories.
        newsapi_queries: queries for the NewsAPI-compatible API at ``options.newsapi_base_url``.
        options: fetch, clean and limit options.
        progress: called with each source's report as it finishes.
        fetcher: an open ``Fetcher`` to share (tests pass one with a custom transport).
    """
    opts = options or IngestOptions()
    if not sources and not newsapi_queries:
        raise InputError(
            "no sources given: pass feed URLs or files (--feed) or a NewsAPI query (--newsapi)"
        )
    for s in sources:
        if "://" in s and source_kind(s) == "file":
            raise InputError(f"{s!r}: only http(s) URLs or local paths can be sources")
    own = fetcher is None
    f = fetcher or Fetcher(opts.fetch)
    if own:
        await f.__aenter__()
    try:
        jobs = [_feed_or_file(f, s, opts) for s in sources]
        jobs += [_newsapi(f, q, opts) for q in newsapi_queries]
        results: list[tuple[SourceReport, list[NewsItem]]] = []
        for coro in asyncio.as_completed([_timed(j, progress) for j in jobs]):
            results.append(await coro)
    finally:
        if own:
            await f.__aexit__(None, None, None)
    order = {s: i for i, s in enumerate([*sources, *(f"newsapi:{q}" for q in newsapi_queries)])}
    results.sort(key=lambda r: order.get(r[0].source, len(order)))
    items = [it for _, its in results for it in its]
    kept, stats = clean_items(items, opts.clean)
    landed: dict[str, int] = {}
    for it in kept:
        landed[it.origin] = landed.get(it.origin, 0) + 1
    reports = []
    for report, _ in results:
        if report.status != "failed":
            report.landed = landed.get(report.source, 0)
        reports.append(report)
    return IngestResult(items=kept, reports=reports, cleaning=stats)


def ingest(sources: Sequence[str] = (), **kwargs: object) -> IngestResult:
    """Blocking ``aingest`` (see there for arguments)."""
    return asyncio.run(aingest(sources, **kwargs))  # type: ignore[arg-type]


async def _timed(
    job: object, progress: Callable[[SourceReport], None] | None
) -> tuple[SourceReport, list[NewsItem]]:
    t0 = time.perf_counter()
    report, items = await job  # type: ignore[misc]
    report.elapsed_s = round(time.perf_counter() - t0, 3)
    if progress:
        progress(report)
    return report, items


async def _feed_or_file(
    f: Fetcher, source: str, opts: IngestOptions
) -> tuple[SourceReport, list[NewsItem]]:
    kind = source_kind(source)
    report = SourceReport(source=source, kind=kind)
    entries: list[RawEntry] = []
    try:
        if kind == "feed":
            resp = await f.get(source, accept=FEED_ACCEPT)
            parsed = parse_feed(
                resp.content,
                content_type=resp.headers.get("content-type", ""),
                lenient=opts.lenient,
                max_entry_chars=opts.max_entry_chars,
            )
            entries, warnings, report.entries = parsed.entries, parsed.warnings, parsed.total
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise FeedError(f"no such file or directory: {path}")
            files = local_files(path)
            if not files:
                raise FeedError(f"{path} holds no supported files ({', '.join(sorted(SUFFIXES))})")
            warnings = []
            for file in files:
                try:
                    got, w = await asyncio.to_thread(
                        read_file, file, lenient=opts.lenient, max_entry_chars=opts.max_entry_chars
                    )
                except FeedError as err:
                    if len(files) == 1:
                        raise
                    warnings.append(f"{file.name}: {err.reason}: skipped")
                    continue
                entries.extend(got)
                warnings.extend(f"{file.name}: {m}" if len(files) > 1 else m for m in w)
            report.entries = len(entries) + sum("skipped" in m for m in warnings)
    except (FetchError, FeedError) as err:
        return report.fail(err.reason), []
    except OSError as err:
        return report.fail(f"cannot read: {err.strerror or err}"), []
    except Exception as err:  # one source's surprise must never sink the others
        log.exception("source %s failed", source)
        return report.fail(f"unexpected {type(err).__name__}: {err}"), []
    for message in warnings:
        report.warn(message)
    return report, await _to_items(f, entries, report, opts)


async def _newsapi(
    f: Fetcher, query: str, opts: IngestOptions
) -> tuple[SourceReport, list[NewsItem]]:
    report = SourceReport(source=f"newsapi:{query}", kind="newsapi")
    key = newsapi_key()
    if key is None and "newsapi.org" in opts.newsapi_base_url:
        return report.fail("no API key: set NEWSAPI_KEY or LLMAPPS_INGEST__NEWSAPI_KEY"), []
    try:
        url, params, headers = newsapi_request(
            query,
            opts.newsapi_base_url,
            page_size=opts.newsapi_page_size,
            language=opts.newsapi_language,
            key=key,
        )
        resp = await f.get(url, params=params, headers=headers, accept="application/json")
        entries, warnings = parse_newsapi(resp.content)
    except Exception as err:
        if not isinstance(err, (FetchError, FeedError)):
            log.exception("source %s failed", report.source)
            return report.fail(f"unexpected {type(err).__name__}: {err}"), []
        # The key travels in a header, so a reason quoting the URL cannot leak it.
        return report.fail(err.reason), []
    report.entries = len(entries)
    for w in warnings:
        report.warn(w)
    return report, await _to_items(f, entries, report, opts)


async def _to_items(
    f: Fetcher, entries: list[RawEntry], report: SourceReport, opts: IngestOptions
) -> list[NewsItem]:
    if opts.max_per_source:
        entries = entries[: opts.max_per_source]

    async def one(e: RawEntry) -> NewsItem:
        text = html_to_text(e.text)
        full = False
        if opts.full_text and e.url and len(text.split()) < opts.teaser_words:
            try:
                page = await f.get(e.url, accept="text/html,application/xhtml+xml")
                _, body = await asyncio.to_thread(extract_page, page.content, page.url)
                if len(body.split()) > len(text.split()):
                    text, full = body, True
                else:
                    report.warn(f"article page {e.url}: no main text found, kept the feed's teaser")
            except FetchError as err:
                report.warn(f"article page {e.url}: {err.reason}; kept the feed's teaser")
        return NewsItem(  # the entry, its text cleaned, with an id and where it came from
            **{**dataclasses.asdict(e), "text": text},
            id=content_id(e.url) if e.url else content_id(e.title, text),
            origin=report.source,
            full_text=full,
        )

    return list(await asyncio.gather(*(one(e) for e in entries)))


def write_jsonl(items: Sequence[NewsItem], path: Path) -> None:
    """Replace ``path`` atomically with ``items`` as JSONL (one article per line, UTF-8)."""
    from llmapps import jsonl

    jsonl.write_jsonl(path, (it.model_dump() for it in items))


def write_report(result: IngestResult, path: Path) -> None:
    """Write the per-source reports and cleaning counts as JSON (atomically)."""
    from llmapps.jsonl import atomic_write

    data = {
        "sources": [r.model_dump() for r in result.reports],
        "cleaning": result.cleaning.model_dump(),
        "articles": len(result.items),
    }
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
