"""``llmapps news fetch``: feeds, NewsAPI and local files to a clean JSONL of articles.

Registered through the ``llmapps.cli`` entry point ``news = "llmapps.ingest.cli:register"``.
Heavy imports happen inside the command so ``llmapps --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """The source, fetch and cleaning flags ``news fetch`` and ``daily`` share."""
    g = p.add_argument_group("sources")
    g.add_argument(
        "--feed",
        "-f",
        action="append",
        default=[],
        metavar="URL_OR_FILE",
        help="RSS/RDF/Atom feed URL, or a local JSONL/CSV/text/HTML/feed file or folder "
        "(repeatable)",
    )
    g.add_argument(
        "--newsapi",
        action="append",
        default=[],
        metavar="QUERY",
        help="search a NewsAPI-compatible API "
        "(key from NEWSAPI_KEY or LLMAPPS_INGEST__NEWSAPI_KEY)",
    )
    g.add_argument("--newsapi-url", default=None, help="base URL of the NewsAPI-compatible API")
    g.add_argument("--language", default=None, help="NewsAPI language filter, e.g. en")
    h = p.add_argument_group("fetching")
    h.add_argument("--timeout", type=float, default=None, help="seconds per request (default 10)")
    h.add_argument(
        "--retries",
        type=int,
        default=None,
        help="extra attempts after 5xx/429/network errors (default 2)",
    )
    h.add_argument(
        "--concurrency", type=int, default=None, help="requests in flight at once (default 4)"
    )
    h.add_argument("--user-agent", default=None, help="User-Agent header")
    h.add_argument(
        "--no-full-text", action="store_true", help="never fetch article pages for teasers"
    )
    h.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="also fetch loopback, private and link-local addresses (local or intranet feeds); "
        "refused by default, as feeds choose the links that get fetched",
    )
    h.add_argument(
        "--max-per-source", type=int, default=None, help="keep at most N entries per source"
    )
    h.add_argument(
        "--lenient",
        action="store_true",
        help="keep entries recovered from broken XML or wrong encodings (reported as warnings)",
    )
    c = p.add_argument_group("cleaning")
    c.add_argument("--min-words", type=int, default=None, help="drop shorter articles (default 30)")
    c.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="cut longer articles at a sentence (default 20000)",
    )
    c.add_argument(
        "--near-dup",
        type=float,
        default=None,
        help="near-duplicate Jaccard threshold (default 0.7)",
    )
    c.add_argument("--no-dedup", action="store_true", help="keep duplicates")
    c.add_argument(
        "--scrub-pii",
        action="store_true",
        help="replace e-mails, phones, cards and IPs (training text)",
    )


def ingest_options(args: argparse.Namespace) -> Any:
    """``IngestOptions`` from the flags of ``add_source_flags`` over settings."""
    from llmapps.ingest.clean import CleanOptions
    from llmapps.ingest.fetcher import FetchOptions
    from llmapps.ingest.pipeline import IngestOptions
    from llmapps.settings import get_settings

    fetch = FetchOptions.from_settings(
        timeout_s=args.timeout,
        retries=args.retries,
        concurrency=args.concurrency,
        user_agent=args.user_agent,
        allow_private=getattr(args, "allow_private_addresses", False) or None,
    )
    clean: dict[str, Any] = {
        "min_words": args.min_words,
        "max_chars": args.max_chars,
        "near_dup_threshold": args.near_dup,
    }
    clean = {k: v for k, v in clean.items() if v is not None}
    if args.no_dedup:
        clean.update(dedup=False, near_dup_threshold=None)
    clean["scrub_pii"] = args.scrub_pii
    return IngestOptions(
        fetch=fetch,
        clean=CleanOptions(**clean),
        full_text=not args.no_full_text,
        max_per_source=args.max_per_source,
        lenient=args.lenient,
        newsapi_base_url=args.newsapi_url or get_settings().ingest.newsapi_base_url,
        newsapi_language=args.language,
    )


def check_sources(args: argparse.Namespace) -> None:
    """Refuse flags that name no source (before a command takes its output's lock)."""
    from llmapps.errors import ConfigError

    if not args.feed and not args.newsapi:
        raise ConfigError("no sources: give --feed URL_OR_FILE (repeatable) or --newsapi QUERY")


def run_ingest(args: argparse.Namespace, *, quiet: bool = False) -> Any:
    """Run ingestion for the parsed flags; print per-source results to stderr; return the result."""
    from pydantic import ValidationError

    from llmapps.errors import config_error_from_validation
    from llmapps.ingest.pipeline import ingest

    check_sources(args)
    try:
        options = ingest_options(args)
    except ValidationError as err:
        raise config_error_from_validation("news options", err) from err
    result = ingest(args.feed, newsapi_queries=args.newsapi, options=options)
    if not quiet:
        print_reports(result)
    return result


def print_reports(result: Any) -> None:
    """A table of per-source results and a line of cleaning counts, on stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title="sources")
    for col in ("source", "status", "entries", "landed", "reason / warnings", "s"):
        table.add_column(col, overflow="fold")
    colour = {"ok": "green", "partial": "yellow", "failed": "red"}
    for r in result.reports:
        notes = r.error or "; ".join(r.warnings[:3]) + (
            f" (+{len(r.warnings) - 3} more)" if len(r.warnings) > 3 else ""
        )
        table.add_row(
            escape(r.source),
            f"[{colour[r.status]}]{r.status}[/]",
            str(r.entries),
            str(r.landed),
            escape(notes),
            f"{r.elapsed_s:.2f}",
        )
    console.print(table)
    c = result.cleaning
    console.print(
        f"{c.kept} articles kept; dropped {c.too_short} too short, {c.exact_duplicates} exact and "
        f"{c.near_duplicates} near duplicates; {c.truncated} truncated, "
        f"{c.boilerplate_lines} boilerplate lines removed"
        + (f", {c.pii_replacements} PII replacements" if c.pii_replacements else "")
    )


def cmd_news_fetch(args: argparse.Namespace) -> int:
    from llmapps.files import check_output, writing
    from llmapps.ingest.pipeline import write_jsonl, write_report

    out = Path(args.out)
    report = Path(args.report) if args.report else out.with_suffix(".report.json")
    # neither file may be a local feed it reads (fetching first would be wasted work)
    check_output(report, args.feed, flag="--report")
    check_sources(args)  # before the lock: a refused command leaves no lock file behind
    with writing(out, args.feed):
        result = run_ingest(args, quiet=args.quiet)
        if not result.items:  # a failed fetch must not wipe what a good one wrote before
            kept = f"{out} is left as it was" if out.exists() else f"{out} was not written"
            print(f"0 articles landed from any source; {kept}", file=sys.stderr)
            return 1
        write_jsonl(result.items, out)  # each file replaced atomically: a reader never sees half
        write_report(result, report)
    print(f"{len(result.items)} articles -> {out} (report: {report})", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``news`` (with ``news fetch``) to the ``llmapps`` command line."""
    news = subparsers.add_parser("news", help="fetch and clean news from feeds, NewsAPI and files")
    nsub = news.add_subparsers(dest="news_command", metavar="ACTION", required=True)
    p = nsub.add_parser(
        "fetch", help="fetch sources into a clean JSONL of articles (+ a per-source report)"
    )
    add_source_flags(p)
    p.add_argument(
        "--out",
        "-o",
        required=True,
        help="JSONL file to write (replaced atomically, on success only)",
    )
    p.add_argument(
        "--report", default=None, help="JSON report path (default: OUT with .report.json)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no per-source table")
    p.set_defaults(func=cmd_news_fetch)
