"""``llmapps evaluate`` (a predictions file against references) and ``llmapps human-eval``
(blinded sheets for people, and their ratings back)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from llmapps.files import check_output, writing
from llmapps.jsonl import atomic_write


def _writing_out(args: argparse.Namespace, inputs: list[str]) -> Any:
    """``--out``'s checks and lock for the whole command (before any work), if it has one."""
    return writing(args.out, inputs) if args.out else contextlib.nullcontext()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from llmapps.evaluate.files import rows_path

    inputs = [args.predictions, args.references]
    if args.out:
        check_output(rows_path(Path(args.out)), inputs)
    with _writing_out(args, inputs):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.evaluate.files import evaluate_files, write_evaluation

    fields = [f.strip() for f in args.fields.split(",")] if args.fields else None
    groups, scored, config = evaluate_files(
        Path(args.predictions),
        Path(args.references),
        fields=fields,
        primary_field=args.primary_field,
        semantic=not args.no_semantic,
        app=args.app,
    )
    if config.target_field is None and config.answer_field is None and not args.app:
        print(
            "note: no app given (--app NAME) and the references are no bench's: only the "
            "per-field metrics are scored, not the app's riddle/answer ones",
            file=sys.stderr,
        )
    keys = list(dict.fromkeys(k for g in groups.values() for k in g))
    table = Table(title=f"{args.predictions} against {args.references}")
    table.add_column("metric")
    for g in groups:
        table.add_column(g)
    for k in keys:
        table.add_row(
            k,
            *(
                f"{v:.4f}"
                if isinstance(v := groups[g].get(k), float)
                else str(v if v is not None else "-")
                for g in groups
            ),
        )
    Console().print(table)
    if args.out:
        out, rows = write_evaluation(Path(args.out), groups, scored, config)
        print(f"wrote {out} and {rows}", file=sys.stderr)
    return 0


def cmd_human_export(args: argparse.Namespace) -> int:
    from llmapps.evaluate.human import SHEET_FILES, export_sheet, load_run_outputs

    run = Path(args.run)
    names = [s.strip() for s in args.strategies.split(",")] if args.strategies else None
    outputs, refs = load_run_outputs(run, names)
    sources = [run / "references.jsonl", *sorted((run / "samples").glob("*.jsonl"))]
    fields = (
        [f.strip() for f in args.fields.split(",")]
        if args.fields
        else sorted({k[len("reference_") :] for r in refs for k in r if k.startswith("reference_")})
    )
    with writing(args.out, sources, kind="folder", writes=SHEET_FILES) as out:
        paths = export_sheet(
            outputs, refs[: args.limit] if args.limit else refs, out, fields=fields, seed=args.seed
        )
    print(f"fill in {paths['csv']} (view: {paths['html']}); keep {paths['key']} to unblind")
    return 0


def cmd_human_import(args: argparse.Namespace) -> int:
    with _writing_out(args, [*args.sheets, args.key]):  # never the key or a sheet it reads
        return _human_import(args)


def _human_import(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmapps.evaluate.human import import_ratings

    report = import_ratings([Path(p) for p in args.sheets], Path(args.key))
    console = Console()
    table = Table(
        title=f"human preference: {report['ratings']} ratings by {len(report['raters'])} rater(s)"
    )
    for c in ("strategy", "win rate", "comparisons"):
        table.add_column(c)
    for name, rate in sorted(report["win_rate"].items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{rate:.3f}", str(report["comparisons"][name]))
    console.print(table)
    a = report["agreement"]
    console.print(
        f"agreement: {a['percent'] if a['percent'] is not None else 'n/a (one rater per item)'}"
        f", Cohen's kappa {a['cohen_kappa'] if a['cohen_kappa'] is not None else 'n/a'}"
    )
    if args.out:
        atomic_write(args.out, json.dumps(report, indent=2) + "\n")
    return 0


def register(sub: Any, flags: Any) -> None:
    """Add ``llmapps evaluate`` and ``llmapps human-eval``."""
    p = sub.add_parser("evaluate", help="score a predictions JSONL against a references JSONL")
    p.add_argument(
        "--predictions",
        "-p",
        required=True,
        help="JSONL with id and output fields (llmapps run/bench output)",
    )
    p.add_argument(
        "--references",
        "-r",
        required=True,
        help="JSONL with id and reference_<field> keys (a bench's references.jsonl) or plain fields + --fields",
    )
    p.add_argument(
        "--fields", help="comma-separated fields to score (default: every reference_<field>)"
    )
    p.add_argument("--primary-field", help="the field riddle metrics and lengths report on")
    p.add_argument(
        "--app",
        help="the app whose metric fields (riddle, answer, leak ...) to score (default: the "
        "bench's, when the references are a bench's references.jsonl)",
    )
    p.add_argument(
        "--no-semantic", action="store_true", help="skip embedding similarity and solvability"
    )
    flags.add(p, out="write aggregate metrics JSON here (and per-row metrics beside it)")
    p.set_defaults(func=cmd_evaluate)

    hsub = flags.add_group(
        sub, "human-eval", "blinded side-by-side sheets for people, and their ratings back"
    )
    p = hsub.add_parser("export", help="write sheet.csv/.html and key.json from a bench folder")
    p.add_argument("run", help="a bench folder")
    p.add_argument("--fields", help="output fields to show (default: the reference fields)")
    flags.add(
        p,
        "limit",
        "seed",
        out={"required": True, "help": "folder for the sheet"},
        strategies="comma-separated (default: every strategy in the folder)",
    )
    p.set_defaults(func=cmd_human_export)
    p = hsub.add_parser("import", help="win rates and agreement from filled sheets")
    p.add_argument(
        "sheets",
        nargs="+",
        help="filled sheet CSVs (one per rater, or a rater column) and/or the web app's ratings.jsonl",
    )
    p.add_argument("--key", required=True, help="key.json written with the sheet")
    p.add_argument("--out", help="write the report JSON here")
    p.set_defaults(func=cmd_human_import)
