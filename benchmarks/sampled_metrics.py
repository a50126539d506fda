"""Adapters compared on K sampled replies per article instead of one greedy reply.

With 19 validation articles one greedy riddle per article is a noisy measure: a variant's
leakage moves by 0.05 when one riddle changes. The mean over K sampled replies of each article
(the policy's expected score, not one draw) is less noisy. ``llmapps finetune pairs --sample K
--split validation`` already samples, scores and stores every reply
(``OUT.samples.jsonl``), so this script only reads those files: per adapter the mean of each
metric (articles weighted equally), and against a baseline the paired difference with its 95%
bootstrap interval (``llmapps.evaluate.stats.paired_bootstrap``, the article resampled).

::

    for a in SFT DPO; do
        llmapps finetune pairs --sample 4 --adapter $A/$a --split validation --set structured=off \\
            --set merge=true --seed 0 --out valk4/$a.jsonl -q
    done
    python benchmarks/sampled_metrics.py valk4/SFT.samples.jsonl valk4/DPO.samples.jsonl \\
        --out benchmarks/results/dpo_sampled_validation.md

The first file is the baseline. Only a selection aid: the issue's targets are greedy replies on
the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

METRICS = ("leakage", "format_valid", "copying", "answer_f1", "solvability@1")


def per_article(path: Path, metrics: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """Per metric, each article's mean over its replies (failed replies and missing values
    skipped); the file is read once."""
    from llmapps.jsonl import read_jsonl

    out: dict[str, dict[str, float | None]] = {m: {} for m in metrics}
    for row in read_jsonl(path, what="bad samples row"):
        replies = [r.get("metrics") or {} for r in row["replies"] if not r.get("error")]
        for m in metrics:
            values = [float(r[m]) for r in replies if isinstance(r.get(m), (int, float))]
            out[m][str(row["id"])] = statistics.fmean(values) if values else None
    return out


def compare(paths: list[Path], metrics: tuple[str, ...] = METRICS) -> list[dict[str, Any]]:
    """One row per file: the mean of each metric, and its paired difference to the first file."""
    from llmapps.evaluate.stats import paired_bootstrap

    base = per_article(paths[0], metrics)
    ids = sorted(base[metrics[0]])
    rows = []
    for path in paths:
        scores = base if path == paths[0] else per_article(path, metrics)
        missing = [i for i in ids if i not in scores[metrics[0]]]
        if missing:
            raise SystemExit(f"{path}: no replies for {', '.join(missing[:5])}; sample them first")
        row: dict[str, Any] = {"file": path.name, "articles": len(ids)}
        for m in metrics:
            vals = [v for v in (scores[m][i] for i in ids) if v is not None]
            row[m] = round(statistics.fmean(vals), 4) if vals else None
            d = paired_bootstrap([base[m][i] for i in ids], [scores[m][i] for i in ids])
            row[f"{m}_diff"] = [round(d.mean, 4), round(d.low, 4), round(d.high, 4)]
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> str:
    head = "| samples file | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    for i, r in enumerate(rows):
        cells = []
        for m in metrics:
            if r[m] is None:
                cells.append("-")
            elif i == 0:
                cells.append(f"{r[m]:.3f}")
            else:
                mean, low, high = r[f"{m}_diff"]
                cells.append(f"{r[m]:.3f} ({mean:+.3f} [{low:+.3f}, {high:+.3f}])")
        lines.append(f"| {r['file']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "samples", nargs="+", type=Path, help="*.samples.jsonl files; the first is the baseline"
    )
    p.add_argument("--out", type=Path, help="Markdown table to write (and .json beside it)")
    args = p.parse_args(argv)
    rows = compare(args.samples)
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(
            f"Mean over each article's sampled replies; in brackets the paired difference to "
            f"{rows[0]['file']} and its 95% bootstrap interval ({rows[0]['articles']} articles).\n\n"
            + table
        )
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
