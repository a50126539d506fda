"""The effect of augmentation on the Gemma LoRA writer: the same recipe and step budget trained
with and without ``llmapps data augment`` rows, both benched on the test split, paired bootstrap.

::

    python benchmarks/eval_augmentation.py --steps 12            # the demo recipe, 12 steps each
    python benchmarks/eval_augmentation.py --recipe gemma-3-270m --steps 72

Every stage is kept and skipped on a rerun (augmented rows, each adapter, each bench folder), so
a stopped run resumes. Adapters and augmented rows go under $LLMAPPS_HOME (never committed); the
comparison goes to ``benchmarks/results/augmentation_effect.json`` (and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METRICS = ("rougeL_riddle", "answer_f1", "rougeL_summary", "format_valid", "leakage")


def _run(cmd: list[str]) -> float:
    started = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return round(time.perf_counter() - started, 1)


def _rows(bench: Path) -> dict[str, dict[str, Any]]:
    files = sorted((bench / "samples").glob("*.jsonl"))
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        for line in f.read_text().splitlines():
            row = json.loads(line)
            out[row["id"]] = row
    return out


def main() -> int:
    from llmapps.apps import get_app
    from llmapps.data.augment import augment_rows
    from llmapps.data.cli import fields_of, train_rows
    from llmapps.evaluate.stats import bootstrap_ci, paired_bootstrap
    from llmapps.jsonl import atomic_write, write_jsonl
    from llmapps.settings import get_settings

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", default="gemma-3-270m-demo")
    p.add_argument("--steps", type=int, default=12, help="max_steps of both runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-row", type=int, default=1, help="augmented rows per train row")
    p.add_argument("--transforms", default="entity-swap,sentence-order,sentence-drop")
    p.add_argument("--limit", type=int, help="bench only the first N test articles")
    p.add_argument("--out", type=Path, default=HERE / "results" / "augmentation_effect.json")
    args = p.parse_args()

    home = Path(get_settings().home).expanduser()
    work = home / "augmentation" / f"{args.recipe}-s{args.steps}-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    spec = get_app("news-riddle")
    aug = work / "augmented.jsonl"
    if not aug.exists():
        rows = augment_rows(
            train_rows(spec),
            fields_of(spec),
            transforms=args.transforms.split(","),
            seed=args.seed,
        )
        write_jsonl(aug, rows)
    seconds: dict[str, float] = {}
    arms = {"plain": [], "augmented": ["--set", f"data.augmented={aug}"]}
    if args.per_row is not None:
        arms["augmented"] += ["--set", f"data.augment_per_row={args.per_row}"]
    llmapps = [sys.executable, "-m", "llmapps.cli"]
    for arm, extra in arms.items():
        adapter = work / f"adapter-{arm}"
        if not (adapter / "llmapps-adapter.json").exists():
            seconds[f"train_{arm}"] = _run(
                [*llmapps, "finetune", "lora", "--recipe", args.recipe, "--out", str(adapter),
                 "--overwrite", "-q", "--set", f"training.max_steps={args.steps}",
                 "--set", f"training.seed={args.seed}", *extra]
            )  # fmt: skip
        bench = work / f"bench-{arm}"
        limit = ["--limit", str(args.limit)] if args.limit else []
        seconds[f"bench_{arm}"] = _run(
            [*llmapps, "bench", "news-riddle", "--strategies", "lora", "--adapter", str(adapter),
             "--split", "test", "--no-perplexity", "-q", "--out", str(bench), *limit]
        )  # fmt: skip
    plain, augmented = _rows(work / "bench-plain"), _rows(work / "bench-augmented")
    ids = sorted(set(plain) & set(augmented))
    result: dict[str, Any] = {
        "recipe": args.recipe,
        "steps": args.steps,
        "seed": args.seed,
        "transforms": args.transforms,
        "augment_per_row": args.per_row,
        "augmented_rows_available": sum(1 for _ in aug.open()),
        "test_articles": len(ids),
        "seconds": seconds,
        "metrics": {},
    }
    for m in METRICS:
        a = [plain[i]["metrics"].get(m) for i in ids]
        b = [augmented[i]["metrics"].get(m) for i in ids]
        result["metrics"][m] = {
            "plain": bootstrap_ci(a).as_dict(),
            "augmented": bootstrap_ci(b).as_dict(),
            "augmented_minus_plain": paired_bootstrap(a, b).as_dict(),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Augmentation effect: {args.recipe}, {args.steps} steps, seed {args.seed}, "
        f"{len(ids)} test articles",
        "",
        "| metric | plain | augmented | augmented - plain [95% CI] | significant |",
        "|---|---|---|---|---|",
    ]
    for m, r in result["metrics"].items():
        d = r["augmented_minus_plain"]
        lines.append(
            f"| {m} | {r['plain']['mean']:.3f} | {r['augmented']['mean']:.3f} | "
            f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {d['significant']} |"
        )
    atomic_write(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
