"""``llmapps news fetch``: feeds, NewsAPI and local files to a clean JSONL of articles.

The sources' flags are ``llmapps.cli.flags.add_source_flags`` (``llmapps daily`` shares them); the
work is ``llmapps.ingest.pipeline.ingest``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmapps.cli import flags

FETCH = "fetch sources into a clean JSONL of articles (+ a per-source report)"  # its --help line


def cmd_news_fetch(args: argparse.Namespace) -> int:
    from llmapps.files import check_output, writing
    from llmapps.ingest.pipeline import write_jsonl, write_report

    out = Path(args.out)
    report = Path(args.report) if args.report else out.with_suffix(".report.json")
    # neither file may be a local feed it reads (fetching first would be wasted work)
    check_output(report, args.feed, flag="--report")
    flags.check_sources(args)  # before the lock: a refused command leaves no lock file behind
    with writing(out, args.feed):
        result = flags.run_ingest(args, quiet=args.quiet)
        if not result.items:  # a failed fetch must not wipe what a good one wrote before
            kept = f"{out} is left as it was" if out.exists() else f"{out} was not written"
            print(f"0 articles landed from any source; {kept}", file=sys.stderr)
            return 1
        write_jsonl(result.items, out)  # each file replaced atomically: a reader never sees half
        write_report(result, report)
    print(f"{len(result.items)} articles -> {out} (report: {report})", file=sys.stderr)
    return 0


def register(subparsers: Any, flags: Any) -> None:
    """Add ``news`` (with ``news fetch``) to the ``llmapps`` command line."""
    nsub = flags.add_group(subparsers, "news", "fetch and clean news from feeds, NewsAPI and files")
    p = nsub.add_parser("fetch", help=FETCH)
    flags.add_source_flags(p)
    flags.add(
        p,
        out={
            "required": True,
            "help": "JSONL file to write (replaced atomically, on success only)",
        },
        quiet="no per-source table",
    )
    p.add_argument("--report", help="JSON report path (default: OUT with .report.json)")
    p.set_defaults(func=cmd_news_fetch)
