"""``benchmarks/physical_limits.py``: the cost model behind each side's floor (FLOPs, bytes) checked
against brute-force counts on Gemma 3 270M's real shape, the roofline's arithmetic, and its
``--quick`` run (peaks measured on small shapes, the results file written)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
pl: Any = importlib.import_module("physical_limits")

# Gemma 3 270M's shape (config.json of the packaged model), no weights needed
GEMMA = {
    "hidden_size": 640,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "vocab_size": 262144,
    "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
}

# measured peaks as physical_limits.py records them (round figures for the arithmetic tests)
PEAKS = {
    "matmul": {
        "float32": {"peak_gflops": 200.0},
        "bfloat16": {"peak_gflops": 800.0},
        "int8": {"peak_gops": 900.0},
    },
    "bandwidth": {"read_peak_gbs": 12.0},
}


def test_gemma_parameter_counts() -> None:
    cost = pl.ModelCost.from_config(GEMMA)
    # q 640x1024, k and v 640x256, o 1024x640, gate/up/down 640x2048 per layer
    assert cost.linear_params == 18 * (2 * 640 * 1024 + 2 * 640 * 256 + 3 * 640 * 2048)
    assert cost.linear_params == 100_270_080
    assert cost.head_params == 262144 * 640
    assert cost.windows.count(None) == 3 and cost.windows.count(512) == 15


def test_keys_seen_matches_brute_force() -> None:
    cost = pl.ModelCost.from_config(GEMMA)
    for start, end, window in [(0, 700, None), (0, 700, 512), (300, 1300, 512), (5, 9, 4)]:
        brute = sum(min(i + 1, window or i + 1) for i in range(start, end))
        assert cost.keys_seen(start, end, window) == brute


def test_prefill_and_decode_costs() -> None:
    cost = pl.ModelCost.from_config(GEMMA)
    one = cost.prefill_flops(2000)
    # the linear layers dominate; attention adds, the head is counted for one position only
    assert 2 * cost.linear_params * 2000 < one < 2 * cost.linear_params * 2000 * 1.3
    # a prefix already cached: only the rest is computed
    assert cost.prefill_flops(2000, start=1000) < one
    # one decode step's KV read: sliding layers see at most their window
    per_key = 2 * 1 * 256 * 2  # k and v, one kv head, bf16
    assert cost.kv_bytes(2000, 2) == per_key * (15 * 512 + 3 * 2000)
    assert cost.decode_flops(16, 100) == 16 * cost.decode_flops(1, 100)


def test_floor_is_a_roofline() -> None:
    cost = pl.ModelCost.from_config(GEMMA)
    work = pl.Work(prompt_tokens=[2000] * 16, completion_tokens=16 * 64, rows_together=16)
    kw = {"read_gbs": 10.0, "weight_bytes": 536e6, "kv_itemsize": 2.0, "share_prefix": False}
    slow = pl.floor_seconds(cost, work, peak_gflops=500.0, **kw)
    fast = pl.floor_seconds(cost, work, peak_gflops=1000.0, **kw)
    assert fast["prefill_s"] == pytest.approx(slow["prefill_s"] / 2, rel=1e-3)
    # decode on 10 GB/s: every step reads the weights at least once
    assert slow["decode_s"] >= 64 * 536e6 / 10e9
    # one row at a time reads the weights 16 times as often
    alone = pl.Work(prompt_tokens=[2000] * 16, completion_tokens=16 * 64, rows_together=1)
    single = pl.floor_seconds(cost, alone, peak_gflops=500.0, **kw)
    assert single["decode_s"] > 10 * slow["decode_s"]
    # a shared prefix prefilled once lowers the task floor
    shared = pl.Work([2000] * 16, 16 * 64, 16, shared_prefix=1500)
    once = pl.floor_seconds(cost, shared, peak_gflops=500.0, **{**kw, "share_prefix": True})
    assert once["prefill_s"] < slow["prefill_s"] / 3


def test_side_floors_read_a_harness_results_file() -> None:
    cost = pl.ModelCost.from_config(GEMMA)
    peaks = PEAKS
    doc = {
        "name": "bench_generation_gemma",
        "config": {"n": 2, "prompt_tokens": [1000, 1200]},
        "sides": [
            {
                "name": "ours",
                "dtype": "bfloat16",
                "batch_size": 32,
                "inputs": 2,
                "seconds": [10.0, 12.0, 11.0],
                "work": [128, 128, 128],
                "info": {},
            },
            {
                "name": "q4",
                "dtype": "GGUF Q4_K_M",
                "batch_size": None,
                "inputs": 2,
                "seconds": [20.0, 20.0, 20.0],
                "work": [120, 120, 120],
                "info": {},
            },
        ],
    }
    gguf = {"step_bytes": 200e6}
    rows = pl.side_floors(doc, cost, peaks, gguf)
    assert [r["side"] for r in rows] == ["ours", "q4"]
    ours, q4 = rows
    assert ours["measured_s"] == 11.0 and ours["work"]["prompt_tokens"] == 2200
    assert 0 < ours["fraction_task"] <= 1 and ours["fraction_as_run"] == ours["fraction_task"]
    # the GGUF side decodes one row at a time as run: a higher floor than the task's
    assert q4["floor_as_run"]["decode_s"] > q4["floor_task"]["decode_s"]
    assert "taken as 1" in q4["read"]


def test_quick_run_writes_peaks(tmp_path: Path) -> None:
    out = tmp_path / "pl.json"
    assert pl.main(["--quick", "--results", str(tmp_path), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    mm = doc["peaks"]["matmul"]
    assert mm["float32"]["peak_gflops"] > 0 and mm["bfloat16"]["peak_gflops"] > 0
    assert doc["peaks"]["bandwidth"]["read_peak_gbs"] > 0
    assert doc["quick"] and doc["threads"] == 2 and doc["floors"] == []


def test_a_recorded_prefix_and_prefill_count_lower_the_floors() -> None:
    cost = pl.ModelCost.from_config(GEMMA)
    peaks = PEAKS
    side = {"dtype": "bfloat16", "batch_size": 16, "inputs": 4, "seconds": [9.0], "work": [64]}
    doc = {
        "name": "b",
        "config": {"n": 4, "prompt_tokens": [2000] * 4},
        "sides": [
            {
                **side,
                "name": "cached",
                "info": {"shared_prefix_tokens": 1500, "prefilled_tokens": 3500},
            },
            {**side, "name": "plain", "info": {}},
        ],
    }
    cached, plain = pl.side_floors(doc, cost, peaks, None)
    # the prefix one side recorded is the prompts': both task floors prefill it once
    assert cached["floor_task"] == plain["floor_task"]
    assert cached["floor_task"]["prefill_s"] < plain["floor_as_run"]["prefill_s"] / 2
    # as run: the side that prefilled 3,500 of 8,000 tokens has that share of the prefill
    ratio = cached["floor_as_run"]["prefill_tflop"] / plain["floor_as_run"]["prefill_tflop"]
    assert ratio == pytest.approx(3500 / 8000, rel=1e-2)
