"""Two strategies of one bench run side by side: per-metric means and paired bootstrap intervals.

Reads a ``llmapps bench`` folder (for the DPO comparison: ``--strategies lora --sweep
adapter=SFT,DPO``), pairs the two strategies' rows by sample id, and writes a Markdown table and a
JSON file: for each metric the mean of A, the mean of B, the mean of B - A with its 95% interval
(``llmapps.evaluate.stats.paired_bootstrap``: sample indices resampled, so each article's pair
stays together) and whether the interval leaves zero. With 21 test articles a difference whose
interval holds zero is inside the noise, and the table says so.

    python benchmarks/compare_adapters.py runs/dpo-vs-sft --a 'lora[adapter=...sft]' --b 'lora[adapter=...dpo]' \\
        --out benchmarks/results/dpo_vs_sft_test.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

METRICS = (
    "format_valid",
    "leakage",
    "copying",
    "answer_f1",
    "rougeL_riddle",
    "solvability@1",
    "words_riddle",
)


def compare(
    run: Path, a: str, b: str, metrics: tuple[str, ...] = METRICS, run_b: Path | None = None
) -> dict[str, Any]:
    """``run_b``: B's rows come from another bench folder (same split, samples paired by id)."""
    from llmapps.evaluate.human import load_run_outputs
    from llmapps.evaluate.stats import bootstrap_ci, paired_bootstrap

    if run_b is None:
        outputs, _refs = load_run_outputs(run, [a, b])
    else:
        outputs = {a: load_run_outputs(run, [a])[0][a], b: load_run_outputs(run_b, [b])[0][b]}
    ids = sorted(set(outputs[a]) & set(outputs[b]))
    rows: dict[str, Any] = {}
    for m in metrics:
        va = [(outputs[a][i].get("metrics") or {}).get(m) for i in ids]
        vb = [(outputs[b][i].get("metrics") or {}).get(m) for i in ids]
        d = paired_bootstrap(va, vb)
        rows[m] = {
            "a": bootstrap_ci(va).as_dict(),
            "b": bootstrap_ci(vb).as_dict(),
            "b_minus_a": d.as_dict(),
        }
    where = f"{run} and {run_b}" if run_b else str(run)
    return {"run": where, "a": a, "b": b, "samples": len(ids), "metrics": rows}


def markdown(result: dict[str, Any], label_a: str, label_b: str) -> str:
    lines = [
        f"{label_b} vs {label_a} on the same {result['samples']} samples ({result['run']}); "
        "95% paired bootstrap interval of the difference; 'noise' = the interval holds zero.",
        "",
        f"| metric | {label_a} | {label_b} | {label_b} - {label_a} [95% CI] | |",
        "|---|---|---|---|---|",
    ]
    for m, r in result["metrics"].items():
        d = r["b_minus_a"]
        if d["n"] == 0:
            continue
        verdict = "significant" if d["significant"] else "noise"
        lines.append(
            f"| {m} | {r['a']['mean']:.3f} | {r['b']['mean']:.3f} | "
            f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] (n={d['n']}) | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the bench folder")
    p.add_argument("--a", required=True, help="baseline strategy label (a samples/*.jsonl stem)")
    p.add_argument("--b", required=True, help="the other strategy label")
    p.add_argument("--run-b", type=Path, help="B's bench folder, if not the same run")
    p.add_argument("--label-a", default="SFT")
    p.add_argument("--label-b", default="DPO")
    p.add_argument("--out", type=Path, help="Markdown file to write (JSON beside it)")
    args = p.parse_args(argv)
    result = compare(args.run, args.a, args.b, run_b=args.run_b)
    text = markdown(result, args.label_a, args.label_b)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
