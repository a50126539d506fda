"""An ingestion run's per-source results, shown on stderr (``llmapps news fetch``, ``llmapps daily``)."""

from __future__ import annotations

from typing import Any


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
