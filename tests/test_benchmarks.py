"""The benchmarks' harness, the README speed table behind it, and every benchmark's ``--quick`` run.

- The README's speed table equals what ``benchmarks/readme_table.py`` renders from the results
  files; a figure edited by hand, or a row whose file is gone, fails.
- The harness's statistics on a fake clock: interleaving order, warm-up excluded, median and
  min-max of each figure and of the paired ratios, the repeats it picks, quality (no wall clock).
- Each benchmark's ``--quick`` mode once, on the tiny models, so a benchmark cannot silently rot;
  it writes a results file in the harness's schema (to a temporary folder).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

harness: Any = importlib.import_module("harness")
readme_table: Any = importlib.import_module("readme_table")


def bench(name: str) -> ModuleType:
    return importlib.import_module(name)


# ---------------------------------------------------------------- README table


def test_readme_speed_table_is_the_results_files() -> None:
    problems = readme_table.check(readme_table.README.read_text())
    assert problems == [], "\n".join(problems) + "\nrun: python benchmarks/readme_table.py"


def test_every_row_names_a_results_file_that_exists() -> None:
    for row in readme_table.ROWS:
        assert row.optional or (readme_table.RESULTS / row.file).is_file(), row.file


def test_a_figure_edited_by_hand_fails() -> None:
    text = readme_table.README.read_text()
    shown = readme_table.current(text)
    figure = shown.split("**")[1]  # the first bold figure of the table
    edited = text.replace(f"**{figure}**", "**9.99x**", 1)
    assert readme_table.check(edited)


def test_a_row_with_no_results_file_fails(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(readme_table.RESULTS, results, ignore=shutil.ignore_patterns("quick"))
    (results / readme_table.ROWS[0].file).unlink()
    problems = readme_table.check(readme_table.README.read_text(), results=results)
    assert any(readme_table.ROWS[0].file in p and "no results file" in p for p in problems)


def test_a_row_in_the_readme_with_no_row_behind_it_fails() -> None:
    text = readme_table.README.read_text()
    extra = "| tiny LoRA training | **1.62x** | | | | |\n" + readme_table.END
    assert readme_table.check(text.replace(readme_table.END, extra, 1))


def test_missing_markers_are_named() -> None:
    assert readme_table.check("# no table here")[0].startswith("README has no")


# ---------------------------------------------------------------- harness statistics


class FakeClock:
    """A clock that only moves when a side says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scripted(clock: FakeClock, name: str, durations: list[float], log: list[str], **kw: Any) -> Any:
    """A side whose runs take ``durations`` (warm-up first) on ``clock``, logging its name."""
    it: Iterator[float] = iter(durations)

    def fn() -> Any:
        log.append(name)
        clock.now += next(it)
        return harness.Run(work=kw.get("work", 10.0), texts=kw.get("texts"))

    return fn


def two_sides(
    ours: list[float], peer: list[float], **kw: Any
) -> tuple[list[Any], FakeClock, list[str]]:
    clock, log = FakeClock(), []
    sides = [
        harness.Side("ours", scripted(clock, "ours", ours, log, **kw), role="ours", dtype="bf16"),
        harness.Side("peer", scripted(clock, "peer", peer, log, **kw), dtype="bf16"),
    ]
    return sides, clock, log


def fake_measure(sides: list[Any], clock: FakeClock, **kw: Any) -> Any:
    return harness.measure(
        sides, harness.Metric("tokens/s"), clock=clock, load=lambda: 1.5, memory=False, **kw
    )


def test_sides_run_interleaved_after_a_warm_up() -> None:
    sides, clock, log = two_sides([9.0, 1, 2, 3], [9.0, 4, 5, 6])
    m = fake_measure(sides, clock, repeats=3)
    assert log == ["ours", "peer"] * 4  # warm-up round, then 3 counted rounds, A B A B
    assert m.order == ["ours", "peer"] * 3
    ours, peer = m.sides
    assert ours.warmup_s == [9.0] and ours.seconds == [1, 2, 3]  # the 9 s warm-up is not counted
    assert ours.values == [10.0, 5.0, 10 / 3]
    assert harness.spread(ours.values) == {"median": 5.0, "min": 10 / 3, "max": 10.0}
    assert peer.seconds == [4, 5, 6] and ours.load_before == [1.5] * 3


def test_ratios_are_paired_by_round() -> None:
    sides, clock, _ = two_sides([1, 1, 2, 4], [1, 4, 4, 4])
    (r,) = fake_measure(sides, clock, repeats=3).ratios
    assert r["per_round"] == [4.0, 2.0, 1.0]  # tokens/s ours / peer, round by round
    assert r["speedup"] == {"median": 2.0, "min": 1.0, "max": 4.0}


def test_a_time_metric_is_a_speedup_the_other_way() -> None:
    metric = harness.Metric("ms/query", kind="time", scale=1000)
    assert metric.value(2.0, 4) == 500.0
    assert metric.speedup(ours=100.0, peer=300.0) == 3.0


def test_repeats_are_5_for_short_runs_3_for_long_ones() -> None:
    sides, clock, _ = two_sides([59.0] + [1] * 5, [1.0] * 6)
    assert fake_measure(sides, clock).repeats == 5
    sides, clock, _ = two_sides([61.0] + [1] * 3, [1.0] * 4)
    assert fake_measure(sides, clock).repeats == 3


def test_fewer_than_3_repeats_or_no_warm_up_is_refused() -> None:
    sides, clock, _ = two_sides([1.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="at least 3"):
        fake_measure(sides, clock, repeats=2)
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        fake_measure(sides, clock, repeats=3, warmup=0)
    with pytest.raises(ValueError, match="must differ"):
        fake_measure([sides[0], sides[0]], clock, repeats=3)


def test_quality_counts_valid_and_identical_texts() -> None:
    clock, log = FakeClock(), []
    ours = ["ok a", "ok b", "bad"]
    sides = [
        harness.Side("ours", scripted(clock, "o", [1] * 4, log, texts=ours), role="ours"),
        harness.Side("peer", scripted(clock, "p", [1] * 4, log, texts=["ok a", "x", "bad"])),
    ]
    m = fake_measure(sides, clock, repeats=3, valid=lambda t: t.startswith("ok"), reference="peer")
    assert m.sides[0].quality == {
        "of": 3,
        "identical_to": "peer",
        "identical": 2,
        "repeats_with_other_texts": 0,
        "valid": 2,
    }
    assert m.ratios[0]["quality"]["peer"]["valid"] == 1  # a ratio carries both sides' quality


def test_a_side_without_texts_against_one_with_them_is_refused() -> None:
    clock, log = FakeClock(), []
    sides = [
        harness.Side("ours", scripted(clock, "o", [1] * 4, log, texts=["a"]), role="ours"),
        harness.Side("peer", scripted(clock, "p", [1] * 4, log)),
    ]
    with pytest.raises(ValueError, match="compare like with like"):
        fake_measure(sides, clock, repeats=3)


def test_a_harness_result_renders_with_spread_dtype_and_quality(tmp_path: Path) -> None:
    sides, clock, _ = two_sides([1, 1, 2, 4], [1, 4, 4, 4], texts=["t"])
    m = fake_measure(sides, clock, repeats=3)
    doc = harness.result_document("bench_x", m, config={}, quick=False, what="x", argv=[])
    harness.write_result(tmp_path / "bench_x.json", doc)
    row = readme_table.Row("bench_x.json", "x", "python benchmarks/bench_x.py")
    fig, dtype, qual, runs = readme_table.row_cells(row, tmp_path)
    assert "**2.00x** (1.00x-4.00x)" in fig
    assert dtype == "bf16 (every side)"
    assert "ours: the reference for identical texts" in qual and "identical to ours 1/1" in qual
    assert runs.startswith("3 interleaved repeats after 1 warm-up")
    with pytest.raises(ValueError, match="smoke test"):
        readme_table.harness_cells({**doc, "quick": True})


# ---------------------------------------------------------------- --quick runs


def check_result(path: Path, sides: int, texts: bool, ratios: int | None = None) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    assert doc["schema"] == harness.SCHEMA and doc["quick"] is True
    assert doc["repeats"] >= 3 and len(doc["sides"]) == sides
    assert doc["machine"]["cores"] and doc["command"].startswith("python benchmarks/")
    for s in doc["sides"]:
        assert len(s["samples"]) == doc["repeats"] and s["min"] <= s["median"] <= s["max"]
        assert s["versions"]["llmapps"] and s["load_1m_before"]
        assert (s["quality"] is not None) or not texts
    assert len(doc["ratios"]) == (sides - 1 if ratios is None else ratios)
    return doc


def test_bench_generation_quick(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen.json"
    assert bench("bench_generation").main(["--quick", "--repeats", "3", "--out", str(out)]) == 0
    doc = check_result(out, sides=3, texts=True)
    assert {s["dtype"] for s in doc["sides"]} == {doc["sides"][0]["dtype"]}  # same dtype
    assert all("valid" in s["quality"] for s in doc["sides"])


def test_bench_service_client_quick(tmp_path: Path) -> None:
    out = tmp_path / "service.json"
    assert bench("bench_service_client").main(["--quick", "--repeats", "3", "--out", str(out)]) == 0
    doc = check_result(out, sides=3, texts=True)
    assert [r["peer"].split(",")[0] for r in doc["ratios"]] == [
        "ChatOpenAI.batch",
        "AsyncOpenAI + asyncio.gather",
    ]
    assert all(s["quality"]["valid"] == 16 for s in doc["sides"])


def test_bench_retrieval_quick(tmp_path: Path) -> None:
    out = tmp_path / "retrieval.json"
    assert bench("bench_retrieval").main(["--quick", "--repeats", "3", "--out", str(out)]) == 0
    doc = check_result(out, sides=4, texts=False, ratios=4)  # 2 of ours x 2 peers
    assert doc["sides"][0]["quality"] == {"recall@10": 1.0}
    assert len({s["inputs_sha256"] for s in doc["sides"]}) == 1  # the same queries everywhere


def test_bench_embeddings_quick(tmp_path: Path) -> None:
    out = tmp_path / "embeddings.json"
    assert bench("bench_embeddings").main(["--quick", "--repeats", "3", "--out", str(out)]) == 0
    doc = check_result(out, sides=2, texts=False)
    assert all(s["quality"]["min cosine to ours"] > 0.999 for s in doc["sides"])
    rebuild = check_result(tmp_path / "embeddings_rebuild.json", sides=2, texts=False)
    warm, cold = rebuild["sides"]
    assert warm["quality"]["misses"] == 0 and cold["quality"]["hits"] == 0


def test_bench_server_batching_quick(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "server.json"
    argv = ["--quick", "--repeats", "3", "--out", str(out)]
    assert bench("bench_server_batching").main(argv) == 0
    doc = check_result(out, sides=2, texts=True)  # tiny-instruct: ours and the one-by-one line
    assert doc["ratios"][0]["peer_role"] == "reference"
    assert doc["sides"][0]["peak_rss_mb"] > 0  # the server process's, not this one's


@pytest.mark.slow
def test_bench_server_batching_quick_against_llama_cpp_server(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    pytest.importorskip("sse_starlette", reason="llama_cpp.server needs llama-cpp-python[server]")
    out = tmp_path / "server.json"
    argv = ["--quick", "--model", str(smollm2_gguf), "--repeats", "3", "--out", str(out)]
    assert bench("bench_server_batching").main(argv) == 0
    doc = check_result(out, sides=3, texts=True)
    assert doc["sides"][1]["name"].startswith("llama_cpp.server")


def test_run_all_runs_every_benchmark_on_the_harness() -> None:
    run_all = bench("run_all")
    on_harness = sorted(
        p.stem for p in BENCH.glob("bench_*.py") if "import harness" in p.read_text()
    )
    assert sorted(run_all.RUNS) == on_harness
    quick = run_all.commands(quick=True, only=None)
    assert len(quick) == len(on_harness) and all(c[-1] == "--quick" for c in quick)
    with pytest.raises(SystemExit, match="unknown benchmarks"):
        run_all.commands(quick=True, only=["bench_nothing"])


def test_a_child_side_runs_in_its_own_process_and_reports_its_rss(tmp_path: Path) -> None:
    script = tmp_path / "side.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "import harness\n"
        "calls = []\n"
        "def run():\n"
        "    calls.append(1)\n"
        "    print('library chatter')  # must not reach the results channel\n"
        "    return harness.Run(work=3, texts=[str(len(calls))], info={'pid': os.getpid()})\n"
        "raise SystemExit(harness.serve_side(run))\n"
    )
    with harness.ChildSide([sys.executable, str(script)]) as side:
        first, second = side(), side()
    assert (first.texts, second.texts) == (["1"], ["2"])  # one process, kept between runs
    assert first.info["pid"] == second.info["pid"] != os.getpid()
    assert first.work == 3 and (first.peak_rss_mb or 0) > 1
    clock, log = FakeClock(), []
    sides = [
        harness.Side("ours", scripted(clock, "o", [1] * 4, log), role="ours"),
        harness.Side("child", lambda: harness.Run(peak_rss_mb=123.0)),
    ]
    _ = bytearray(200 * 2**20)  # this process is bigger than the child says it is
    m = harness.measure(sides, harness.Metric("x/s"), repeats=3, clock=clock, load=lambda: 0.0)
    doc = harness.side_document(m.sides[1], m.metric, {})
    assert doc["peak_rss_mb"] == 123.0 and doc["rss_method"].startswith("ru_maxrss")


@pytest.mark.slow
def test_bench_lora_training_quick(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora.json"
    assert bench("bench_lora_training").main(["--quick", "--repeats", "3", "--out", str(out)]) == 0
    doc = check_result(out, sides=2, texts=False)
    for s in doc["sides"]:
        assert s["timed_by"].startswith("the side") and s["rss_method"].startswith("ru_maxrss")
        assert s["quality"]["validation loss"] > 0 and s["dtype"]


@pytest.mark.slow
def test_bench_local_backends_quick(tmp_path: Path) -> None:
    """Needs the packaged Gemma GGUF: there is no tiny GGUF model."""
    from llmapps.errors import ModelNotFoundError
    from llmapps.models.packaged import gguf_path

    try:
        gguf_path("gemma-3-270m")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    out = tmp_path / "local.json"
    assert bench("bench_local_backends").main(["--quick", "--repeats", "3", "--out", str(out)]) == 0
    doc = check_result(out, sides=3, texts=True, ratios=2)  # our two backends vs plain
    assert {s["quality"]["identical_to"] for s in doc["sides"]} == {"plain-llama.cpp"}
    assert all("valid" in s["quality"] for s in doc["sides"])


def test_bench_dpo_training_quick(tiny_models: Path, tmp_path: Path) -> None:
    """Ours, our loop with full-vocabulary logits and (when trl is installed, as the dev extra
    does) TRL's own DPOTrainer, on a 4-step tiny adapter: the same work on every side."""
    out = tmp_path / "dpo.json"
    assert bench("bench_dpo_training").main(["--quick", "--repeats", "3", "--out", str(out)]) == 0
    trl = importlib.util.find_spec("trl") is not None
    doc = check_result(out, sides=3 if trl else 2, texts=False)
    losses = [s["quality"]["final_loss"] for s in doc["sides"]]
    assert max(losses) - min(losses) < 0.01, losses  # the same steps on the same pairs
    assert all(s["dtype"] == "float32" for s in doc["sides"])


def test_bench_structured_quick(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "structured.json"
    assert bench("bench_structured").main(["--quick", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["runs"], "no backend ran"
    for run in doc["runs"].values():
        assert {"off", "on"} <= set(run) and run["on"]["tok_s_median"] > 0


def test_sampled_metrics_averages_each_article_then_pairs_them(tmp_path) -> None:
    """``benchmarks/sampled_metrics.py``: an article's mean over its replies (a failed reply
    skipped), articles weighted equally, the difference to the first file paired by article."""
    mod = bench("sampled_metrics")

    def write(name: str, leaks: dict[str, list[float | None]]) -> Path:
        path = tmp_path / name
        rows = [
            {"id": i, "replies": [
                {"metrics": {} if v is None else {"leakage": v}, "error": "x" if v is None else None}
                for v in vals
            ]}
            for i, vals in leaks.items()
        ]  # fmt: skip
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    base = write("sft.samples.jsonl", {"a1": [0.2, 0.0], "a2": [0.4, 0.4, None]})
    other = write("dpo.samples.jsonl", {"a1": [0.0, 0.0], "a2": [0.2, 0.2]})
    rows = mod.compare([base, other], ("leakage",))
    assert rows[0]["leakage"] == 0.25 and rows[1]["leakage"] == 0.1
    assert rows[1]["leakage_diff"][0] == -0.15
    assert rows[1]["leakage_diff"][1] <= -0.15 <= rows[1]["leakage_diff"][2]
    assert "0.100 (-0.150 [" in mod.markdown(rows, ("leakage",))
    short = write("short.samples.jsonl", {"a1": [0.0]})
    with pytest.raises(SystemExit, match="no replies for a2"):
        mod.compare([base, short], ("leakage",))


def test_leak_words_counts_riddles_by_the_fields_they_leak(tmp_path) -> None:
    """``benchmarks/leak_words.py`` on a hand-written bench folder: the reply's own answer and the
    article's title, as the leakage metric reads them, each riddle counted once."""
    mod = bench("leak_words")
    metrics = {"target_field": "riddle", "leak_fields": ["answer", "title"]}
    (tmp_path / "config.json").write_text(json.dumps({"metrics": metrics}))
    refs = [{"id": "a1", "title": "Harbour Ferry Returns"}, {"id": "a2", "title": "Old Mill Sold"}]
    (tmp_path / "references.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    (tmp_path / "samples").mkdir()
    replies = [
        {"id": "a1", "riddle": "The ferry sails home to me", "answer": "the harbour"},
        {"id": "a2", "riddle": "Grain ground by the old stones", "answer": "the mill"},
    ]
    (tmp_path / "samples" / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in replies))
    (row,) = mod.breakdown(tmp_path)
    assert row["riddles"] == 2 and row["leaking"] == 2
    assert row["by_fields"] == {"title": 2}
    assert dict(row["top_words"]) == {"ferry": 1, "old": 1}
    assert "| s | 2 of 2 | 2 |" in mod.markdown([row])
