"""benchmarks/eval_augmentation.py's results file: one entry per seed, the first run's one-seed
layout taken in, seeds of another setup refused, and the pooled comparison resampling articles
(each arm's mean over the seeds per article), not seeds x articles."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "eval_augmentation", ROOT / "benchmarks" / "eval_augmentation.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(seed: int, steps: int = 12) -> argparse.Namespace:
    return argparse.Namespace(
        recipe="gemma-3-270m-demo",
        steps=steps,
        seed=seed,
        transforms="entity-swap,sentence-order,sentence-drop",
        per_row=1,
    )


def _entry(mod: Any, seed: int, shift: float) -> dict[str, Any]:
    per = {f"a{i:03d}": {m: [0.1 * i, 0.1 * i + shift] for m in mod.METRICS} for i in range(1, 9)}
    return {"seed": seed, "per_article": per, "metrics": mod.compare(per)}


def test_seeds_merge_pool_by_article_and_refuse_another_setup(tmp_path: Path) -> None:
    mod = _module()
    path = tmp_path / "effect.json"
    # the first run's layout: one seed's figures at the top level, kept as seed 0
    first = {**vars(_args(0)), "augment_per_row": 1, "metrics": {"x": 1}, "seed": 0}
    del first["per_row"]
    path.write_text(json.dumps(first))
    merged = mod._merge(path, _args(1), _entry(mod, 1, 0.2))
    assert list(merged["seeds"]) == ["0", "1"] and merged["seeds"]["0"]["metrics"] == {"x": 1}
    path.write_text(json.dumps(merged))
    merged = mod._merge(path, _args(2), _entry(mod, 2, -0.1))
    assert list(merged["seeds"]) == ["0", "1", "2"]
    # a rerun of a seed replaces its own entry only
    again = mod._merge(path, _args(2), _entry(mod, 2, 0.0))
    assert again["seeds"]["1"] == merged["seeds"]["1"] and again["seeds"]["2"]["seed"] == 2
    with pytest.raises(SystemExit, match="steps"):
        mod._merge(path, _args(3, steps=72), _entry(mod, 3, 0.0))

    seeds = [_entry(mod, 1, 0.2)["per_article"], _entry(mod, 2, -0.1)["per_article"]]
    pooled = mod._pooled(seeds)
    assert len(pooled) == 8  # articles, not seeds x articles
    assert pooled["a003"]["answer_f1"] == pytest.approx([0.3, 0.35])  # means over the seeds
    diff = mod.compare(pooled)["answer_f1"]["augmented_minus_plain"]
    assert diff["mean"] == pytest.approx(0.05) and diff["n"] == 8


def test_markdown_shows_pooled_then_each_seed(tmp_path: Path) -> None:
    mod = _module()
    seeds = {str(s): _entry(mod, s, d) for s, d in ((0, 0.1), (1, -0.1))}
    result = {
        **{k: v for k, v in vars(_args(0)).items() if k != "seed"},
        "seeds": seeds,
        "pooled": {
            "seeds": [0, 1],
            "metrics": mod.compare(mod._pooled([v["per_article"] for v in seeds.values()])),
        },
    }
    text = mod.markdown(result)
    assert (
        text.index("## Pooled over seeds 0, 1") < text.index("## Seed 0") < text.index("## Seed 1")
    )
    assert "| answer_f1 | 0.450 | 0.450 | +0.000" in text  # the two seeds' shifts cancel
