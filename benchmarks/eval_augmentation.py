"""The effect of augmentation on the Gemma LoRA writer: the same recipe and step budget trained
with and without ``llmapps data augment`` rows, both benched on the test split, paired bootstrap.

::

    python benchmarks/eval_augmentation.py --steps 12            # the demo recipe, 12 steps each
    python benchmarks/eval_augmentation.py --steps 12 --seed 1   # another seed, added to the file
    python benchmarks/eval_augmentation.py --recipe gemma-3-270m --steps 72

A seed sets both the augmented rows drawn and the training seed of both arms. Every stage is kept
and skipped on a rerun (augmented rows, each adapter, each bench folder), so a stopped run
resumes. Adapters and augmented rows go under $LLMAPPS_HOME (never committed); the comparison goes
to ``benchmarks/results/augmentation_effect.json`` (and ``.md``): one entry per seed (a rerun of a
seed replaces its own entry, the others are kept) with each article's scores, and the seeds
pooled: per article, the mean over seeds of each arm, then the paired bootstrap over articles
(the article stays the unit that is resampled; seeds are not counted as more articles).
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
    from llmapps.data.rows import fields_of, train_rows
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
    assert spec.samples is not None  # news-riddle bundles its samples
    test = spec.samples("test")
    wanted = len(test[: args.limit] if args.limit else test)
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
        if len(_rows(bench)) >= wanted:  # benched before: its seconds stay those of that run
            continue
        seconds[f"bench_{arm}"] = _run(
            [*llmapps, "bench", "news-riddle", "--strategies", "lora", "--adapter", str(adapter),
             "--split", "test", "--no-perplexity", "-q", "--out", str(bench), *limit]
        )  # fmt: skip
    plain, augmented = _rows(work / "bench-plain"), _rows(work / "bench-augmented")
    ids = sorted(set(plain) & set(augmented))
    entry: dict[str, Any] = {
        "seed": args.seed,
        "augmented_rows_available": sum(1 for _ in aug.open()),
        "test_articles": len(ids),
        "seconds": seconds,
        "per_article": {
            i: {m: [plain[i]["metrics"].get(m), augmented[i]["metrics"].get(m)] for m in METRICS}
            for i in ids
        },
    }
    entry["metrics"] = compare(entry["per_article"])
    result = _merge(args.out, args, entry)
    # a seed recorded without its articles' scores (the first run's layout) cannot pool: rerun it
    pooling = {k: v["per_article"] for k, v in result["seeds"].items() if "per_article" in v}
    result["pooled"] = {
        "seeds": sorted(int(k) for k in pooling),
        "metrics": compare(_pooled(list(pooling.values()))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    atomic_write(args.out.with_suffix(".md"), text)
    print(text)
    return 0


def compare(per_article: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """Each metric's plain and augmented means and the paired difference over the articles."""
    from llmapps.evaluate.stats import bootstrap_ci, paired_bootstrap

    out: dict[str, Any] = {}
    ids = sorted(per_article)
    for m in METRICS:
        a = [per_article[i][m][0] for i in ids]
        b = [per_article[i][m][1] for i in ids]
        out[m] = {
            "plain": bootstrap_ci(a).as_dict(),
            "augmented": bootstrap_ci(b).as_dict(),
            "augmented_minus_plain": paired_bootstrap(a, b).as_dict(),
        }
    return out


def _mean(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _pooled(seeds: list[dict[str, dict[str, list[Any]]]]) -> dict[str, dict[str, list[Any]]]:
    """Per article (those every seed has), each arm's mean over the seeds."""
    ids = set.intersection(*(set(s) for s in seeds)) if seeds else set()
    return {
        i: {m: [_mean([s[i][m][arm] for s in seeds]) for arm in (0, 1)] for m in METRICS}
        for i in sorted(ids)
    }


def _merge(path: Path, args: argparse.Namespace, entry: dict[str, Any]) -> dict[str, Any]:
    """The results file with this seed's entry put in (one of another recipe, step budget,
    transforms or rows per train row is refused: their seeds would not pool)."""
    same = {
        "recipe": args.recipe,
        "steps": args.steps,
        "transforms": args.transforms,
        "augment_per_row": args.per_row,
    }
    old: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if "seed" in old and "seeds" not in old:  # the one-seed layout of the first run
        old = {**{k: old[k] for k in same if k in old}, "seeds": {str(old["seed"]): old}}
    differs = [k for k, v in same.items() if k in old and old[k] != v]
    if differs:
        raise SystemExit(
            f"{path} holds seeds of another {', '.join(differs)}; pass --out for a new file"
        )
    seeds = dict(old.get("seeds", {}))
    before = seeds.get(str(args.seed), {}).get("seconds", {})
    # a resumed seed: the stages it skipped keep the seconds of the run that did them
    seeds[str(args.seed)] = {**entry, "seconds": {**before, **entry.get("seconds", {})}}
    return {**same, "seeds": dict(sorted(seeds.items(), key=lambda kv: int(kv[0])))}


def _table(metrics: dict[str, Any]) -> list[str]:
    lines = [
        "| metric | plain | augmented | augmented - plain [95% CI] | significant |",
        "|---|---|---|---|---|",
    ]
    for m, r in metrics.items():
        d = r["augmented_minus_plain"]
        lines.append(
            f"| {m} | {r['plain']['mean']:.3f} | {r['augmented']['mean']:.3f} | "
            f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {d['significant']} |"
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    pooled = result["pooled"]
    n = max((len(v.get("per_article", {})) for v in result["seeds"].values()), default=0)
    seeds = ", ".join(str(s) for s in pooled["seeds"])
    lines = [
        f"# Augmentation effect: {result['recipe']}, {result['steps']} steps, seeds {seeds}, "
        f"{n} test articles",
        "",
        f"## Pooled over seeds {seeds}",
        "",
        "Per article, each arm's mean over the seeds; paired bootstrap over the articles.",
        "",
        *_table(pooled["metrics"]),
    ]
    for key, entry in result["seeds"].items():
        metrics = entry.get("metrics") or compare(entry["per_article"])
        lines += ["", f"## Seed {key}", "", *_table(metrics)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
