"""A small hyperparameter sweep: learning rate x LoRA rank, chosen by validation loss.

    python -m finetune.sweep --recipe boutique-tiny --lr 3e-3,1e-2,3e-2 --r 4,16 \\
        --set training.max_steps=10 --out finetune/sweeps/boutique-tiny

Each run trains the recipe with one (learning rate, rank) pair (``lora.alpha`` = 2 x rank) into
``--work`` (adapters are never written next to the results) and appends its row to
``results.jsonl`` as soon as it ends, so a killed sweep resumes where it stopped. The folder then
gets ``sweep.md`` (the table, best run first), ``sweep.png`` (validation loss against learning
rate, one line per rank) and ``config.json`` (the grid and the overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError, LlmappsError
from llmapps.jsonl import atomic_write

SWEEP_FILES = ("config.json", "results.jsonl", "sweep.md", "sweep.png")


def _grid(raw: str, cast: Any, what: str) -> list[Any]:
    try:
        values = [cast(v) for v in raw.split(",") if v.strip()]
    except ValueError as err:
        raise ConfigError(f"--{what} {raw!r}: expected comma-separated numbers") from err
    if not values:
        raise ConfigError(f"--{what} is empty")
    return values


def run_name(lr: float, r: int) -> str:
    return f"lr{lr:g}-r{r}"


def read_results(path: Path) -> list[dict[str, Any]]:
    from llmapps.runner import read_done

    return list(read_done(path, key="name").values()) if path.exists() else []


def sweep(
    recipe: str,
    lrs: list[float],
    ranks: list[int],
    out: Path,
    work: Path,
    *,
    overrides: dict[str, Any] | None = None,
    max_runs: int = 6,
) -> list[dict[str, Any]]:
    """Train every (lr, rank) pair not done yet; return all result rows, best (lowest loss) first."""
    from finetune.recipe import load_recipe
    from finetune.train import train

    grid = [(lr, r) for lr in lrs for r in ranks]
    if len(grid) > max_runs:
        raise ConfigError(
            f"{len(grid)} runs asked for; this sweep runs at most {max_runs} (fewer values)"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(
        out / "config.json",
        json.dumps(
            {"recipe": recipe, "learning_rates": lrs, "ranks": ranks, "overrides": overrides or {}},
            indent=2,
        )
        + "\n",
    )
    results = out / "results.jsonl"
    done = {row["name"] for row in read_results(results)}
    for lr, r in grid:
        name = run_name(lr, r)
        if name in done:
            continue
        rec = load_recipe(
            recipe,
            **{**(overrides or {}), "training.learning_rate": lr, "lora.r": r, "lora.alpha": 2 * r},
        )
        started = time.perf_counter()
        result = train(rec, work / name, overwrite=True, progress=False)
        m = result.metrics
        row = {
            "name": name,
            "learning_rate": lr,
            "r": r,
            "eval_loss": round(float(m["eval_loss"]), 4),
            "eval_perplexity": round(float(m["eval_perplexity"]), 2),
            "steps": m["steps"],
            "tokens_per_s": m.get("tokens_per_s"),
            "train_s": round(time.perf_counter() - started, 1),
        }
        with results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
    rows = sorted(read_results(results), key=lambda row: row["eval_loss"])
    write_report(rows, out, recipe)
    return rows


def write_report(rows: list[dict[str, Any]], out: Path, recipe: str) -> None:
    """``sweep.md`` (table, best first) and ``sweep.png`` (validation loss vs learning rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        f"# Sweep of `{recipe}`: learning rate x LoRA rank (alpha = 2 x rank)",
        "",
        "| run | learning rate | r | validation loss | perplexity | steps | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, row in enumerate(rows):
        mark = " (chosen)" if n == 0 else ""
        lines.append(
            f"| {row['name']}{mark} | {row['learning_rate']:g} | {row['r']} | {row['eval_loss']:.4f} | "
            f"{row['eval_perplexity']:.2f} | {row['steps']} | {row['train_s']} |"
        )
    if rows:
        lines += [
            "",
            f"Chosen by validation loss: learning rate {rows[0]['learning_rate']:g}, r {rows[0]['r']}.",
        ]
    atomic_write(out / "sweep.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in sorted({row["r"] for row in rows}):
        pts = sorted((row["learning_rate"], row["eval_loss"]) for row in rows if row["r"] == r)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"r={r}")
    ax.set_xscale("log")
    lrs = sorted({row["learning_rate"] for row in rows})
    ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
    ax.minorticks_off()
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss")
    ax.set_title(recipe)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """The script's entry: a typed error is one ``error:`` line and its exit code, as in
    ``llmapps`` (``--debug`` is not a flag here; the library logs the detail)."""
    try:
        return _main(argv)
    except LlmappsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def _main(argv: list[str] | None) -> int:
    from finetune.cli import _overrides
    from llmapps.files import writing
    from llmapps.settings import get_settings

    p = argparse.ArgumentParser(
        prog="python -m finetune.sweep", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--recipe", "-r", required=True, help="recipe name or YAML path")
    p.add_argument("--lr", default="3e-3,1e-2,3e-2", help="learning rates, comma-separated")
    p.add_argument("--r", dest="ranks", default="4,16", help="LoRA ranks, comma-separated")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="recipe overrides"
    )
    p.add_argument(
        "--out", "-o", required=True, help="folder for results.jsonl, sweep.md, sweep.png"
    )
    p.add_argument(
        "--work", help="folder for the runs' adapters (default $LLMAPPS_HOME/sweeps/<recipe>)"
    )
    args = p.parse_args(argv)
    work = Path(args.work) if args.work else get_settings().home / "sweeps" / Path(args.recipe).stem
    # one sweep per folder (a second is refused, naming the first's PID); --out not a file
    with writing(args.out, kind="folder", writes=SWEEP_FILES) as out:
        rows = sweep(
            args.recipe,
            _grid(args.lr, float, "lr"),
            _grid(args.ranks, int, "r"),
            out,
            work,
            overrides=_overrides(args.set),
        )
    print((Path(args.out) / "sweep.md").read_text())
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
