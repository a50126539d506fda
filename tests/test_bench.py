"""The bench end to end on the tiny models: per-sample JSONL, summary files, plots, resume after a
failed strategy and after SIGKILL, the CLI and script, and what it measures (memory, cost)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testkit import bench_args, bench_two_strategies, cli_command, few_shot_bench

from llmapps.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MISSING = "/nonexistent/llmapps-test-model"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path
) -> tuple[Path, list[dict]]:
    """few-shot works; zero-shot points at a model that does not exist."""
    out = tmp_path_factory.mktemp("bench")
    options = {"few-shot": {"max_new_tokens": 32}, "zero-shot": {"instruct_model": MISSING}}
    return out, bench_two_strategies(out, 2, options)


def test_a_failing_strategy_is_a_row_with_its_error_and_the_others_finish(
    first_run: tuple[Path, list[dict]],
) -> None:
    out, rows = first_run
    by = {r["strategy"]: r for r in rows}
    assert (
        by["few-shot"]["status"] == "ran"
        and by["few-shot"]["samples"] == 3
        and by["few-shot"]["failures"] == 0
    )
    assert by["zero-shot"]["status"] == "failed" and by["zero-shot"]["failures"] == 3
    assert MISSING in by["zero-shot"]["error"]
    assert not (
        out / "samples" / "zero-shot.jsonl"
    ).exists()  # nothing written, so a rerun retries it


def test_bench_folder_holds_rows_summary_plots_config_and_versions(
    first_run: tuple[Path, list[dict]],
) -> None:
    out, rows = first_run
    samples = [json.loads(x) for x in _lines(out / "samples" / "few-shot.jsonl")]
    assert len(samples) == 3 and len({s["id"] for s in samples}) == 3
    for s in samples:
        assert s["strategy"] == "few-shot" and s["batch_size"] in (1, 2) and s["latency_s"] > 0
        assert s["output_tokens"] > 0 and s["cost_usd"] == 0.0
        m = s["metrics"]
        assert {
            "rougeL_riddle",
            "bleu_riddle",
            "semsim_riddle",
            "format_valid",
            "solvability@1",
            "solvability@3",
            "words_riddle",
            "ppl_nll",
            "ppl_tokens",
        } <= set(m)
        assert m["ppl_tokens"] > 0
    fs = next(r for r in rows if r["strategy"] == "few-shot")
    assert isinstance(fs["perplexity"], float) and fs["perplexity"] > 1
    assert fs["latency_p50_s"] <= fs["latency_p95_s"] and fs["tokens_per_s"] > 0
    assert fs["peak_rss_mb"] > 0 and fs["cost_per_1k_usd"] == 0.0
    assert json.loads((out / "summary.json").read_text()) == json.loads(
        json.dumps(rows, default=str)
    )
    assert (out / "summary.csv").read_text().splitlines()[0].startswith("strategy,status")
    md = (out / "summary.md").read_text()
    assert "| few-shot | 3/3 | 0 |" in md and "| zero-shot | 0/3 | 3 |" in md
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {"bar_rougeL_riddle.png", "bar_latency_p50_s.png", "bar_peak_rss_mb.png"} <= plots
    assert any(p.startswith("quality_vs_latency_") for p in plots)
    assert all((out / "plots" / p).stat().st_size > 1000 for p in plots)
    config = json.loads((out / "config.json").read_text())
    assert config["bench"]["app"] == "news-riddle" and config["bench"]["limit"] == 3
    assert config["versions"]["torch"] and config["metrics"]["primary_field"] == "riddle"
    assert len(_lines(out / "references.jsonl")) == 3


def test_rerun_skips_done_samples_and_retries_the_failed_strategy(
    first_run: tuple[Path, list[dict]],
) -> None:
    from llmapps.bench import BenchConfig, run_bench

    out, _ = first_run
    before = (out / "samples" / "few-shot.jsonl").read_bytes()
    with (out / "samples" / "few-shot.jsonl").open("a") as f:  # what a kill in mid-write leaves
        f.write('{"id": "a0')
    rows = run_bench(
        BenchConfig(
            app="news-riddle",
            strategies=["few-shot", "zero-shot"],
            limit=3,
            batch_size=3,
            strategy_options={"zero-shot": {"max_new_tokens": 32}},
        ),
        out,
        progress=False,
    )
    assert (out / "samples" / "few-shot.jsonl").read_bytes() == before  # nothing repeated
    by = {r["strategy"]: r for r in rows}
    assert by["zero-shot"]["status"] == "ran" and by["zero-shot"]["samples"] == 3
    assert by["zero-shot"]["failures"] == 0 and by["zero-shot"]["error"] is None
    assert json.loads((out / "config.json").read_text())["runs"][-1]["strategies"] == [
        "few-shot",
        "zero-shot",
    ]
    with pytest.raises(ConfigError, match="another --out"):
        run_bench(
            BenchConfig(app="news-riddle", strategies=["few-shot"], split="validation", limit=3),
            out,
        )


def test_a_bench_killed_with_sigkill_loses_and_repeats_nothing(
    tmp_path: Path, tiny_models: Path
) -> None:
    from llmapps.bench import run_bench

    out = tmp_path / "killed"
    rows_file = out / "samples" / "few-shot.jsonl"
    cmd = cli_command(*bench_args(4, 1, 24, "--out", str(out), "--quiet", "--no-perplexity"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    try:
        while len(_lines(rows_file)) < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kept = _lines(rows_file)
    assert 1 <= len(kept) < 4, "the bench must be killed mid-run"
    with rows_file.open("a") as f:  # what a kill in the middle of a write leaves
        f.write('{"id": "torn", "strat')
    rows = run_bench(
        few_shot_bench(4, 2, 24),
        out,
        progress=False,
    )
    after = _lines(rows_file)
    assert after[: len(kept)] == kept  # written rows stay as they were
    ids = [json.loads(x)["id"] for x in after]
    assert len(ids) == 4 and len(set(ids)) == 4  # none lost, none repeated, the torn line gone
    assert rows[0]["samples"] == 4 and rows[0]["perplexity"] == "n/a"


def test_cli_prints_the_table_and_writes_the_reports(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "bench",
            "news-riddle",
            "--strategies",
            "few-shot",
            "--limit",
            "2",
            "--out",
            str(out),
            "-q",
            "--judge",
            "zero-shot",
            "--max-new-tokens",
            "8",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "speed, cost, memory" in printed and "few-shot" in printed and "p50 s" in printed
    assert (out / "summary.md").exists()
    row = json.loads(_lines(out / "samples" / "few-shot.jsonl")[0])
    assert "judge_score" in row["metrics"]
    code = main(
        [
            "evaluate",
            "--predictions",
            str(out / "samples" / "few-shot.jsonl"),
            "--references",
            str(out / "references.jsonl"),
            "--no-semantic",
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    assert code == 0 and "rougeL_riddle" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["few-shot"]["samples"] == 2


def test_cli_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmapps.cli import main

    assert (
        main(
            ["bench", "news-riddle", "--strategies", "few-shot,zero-shoot", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "did you mean 'zero-shot'" in capsys.readouterr().err.lower()
    try:
        import mlflow  # noqa: F401
    except ImportError:
        assert main(["bench", "news-riddle", "--mlflow", "--out", str(tmp_path)]) == 2
        assert "pip install 'llmapps[mlflow]'" in capsys.readouterr().err


def test_script_has_the_same_flags() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert (
        done.returncode == 0 and "--strategies" in done.stdout and "--retry-failed" in done.stdout
    )


def test_peak_memory_sees_an_allocation_and_cost_uses_reported_cost_then_prices() -> None:
    import mmap

    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    from llmapps.bench.measure import CostTracker, PeakMemory, Price
    from llmapps.settings import load_settings

    with PeakMemory() as mem:
        # An anonymous mapping, touched page by page: always fresh resident memory, whatever
        # pages the allocator kept from earlier tests (np.ones could reuse those and not grow RSS).
        block = mmap.mmap(-1, 64 * 2**20)
        block.write(b"x" * (64 * 2**20))
        time.sleep(0.1)
    block.close()
    assert mem.delta_mb >= 48 and mem.peak_mb >= mem.start_mb
    tracker = CostTracker()
    msg = AIMessage(
        "x",
        usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        response_metadata={"cost_usd": 0.002},
    )
    tracker.on_llm_end(
        LLMResult(generations=[[ChatGeneration(message=msg)]], llm_output={"cost_usd": 0.002})
    )
    row = tracker.as_dict()
    assert row == {
        "input_tokens": 10,
        "output_tokens": 5,
        "llm_calls": 1,
        "reported_cost_usd": 0.002,
    }
    price = Price(usd_per_1k_input_tokens=1.0, usd_per_1k_output_tokens=2.0, usd_per_hour=36.0)
    assert price.cost(row) == pytest.approx(0.002)  # the endpoint's own figure wins over the table
    assert price.cost(
        {"input_tokens": 1000, "output_tokens": 500, "sample_s": 10}
    ) == pytest.approx(2.0 + 0.1)
    settings = load_settings(bench={"prices": {"service": {"usd_per_1k_tokens": 1.0}}})
    with pytest.raises(ConfigError, match="usd_per_1k_tokens"):
        Price.for_strategy("service", settings)


def _labels(adapters: list[str]) -> list[str]:
    """The row labels of a lora bench swept over these adapter paths."""
    from llmapps.bench.run import BenchConfig

    config = BenchConfig(app="x", strategies=["lora"], sweep={"adapter": adapters})
    return [label for _, label, _ in config.runs()]


def test_sweep_labels_of_paths_name_files_not_folders() -> None:
    adapters = ["/home/me/adapters/sft/", "/home/me/adapters/dpo"]
    labels = _labels(adapters)
    assert labels == ["lora[adapter=sft]", "lora[adapter=dpo]"]
    same_tail = ["/a/run1/adapter", "/b/run2/adapter"]
    labels = _labels(same_tail)
    assert labels == ["lora[adapter=a_run1_adapter]", "lora[adapter=b_run2_adapter]"]
    assert all("/" not in label for label in labels)


def test_an_engine_is_one_class_and_a_retried_batch_is_written_once(
    tmp_path: Path, tiny_models: Path
) -> None:
    """Any object with ``name`` and ``run(work, todo)`` is an engine: this one answers through
    the local engine and hands every batch over twice, as a retried remote batch would be."""
    from llmapps.bench.engine import LocalEngine
    from llmapps.bench.run import Bench

    class Twice:
        name = "twice"

        def run(self, work, todo):  # type: ignore[no-untyped-def]
            for rows in LocalEngine().run(work, todo):
                yield rows
                yield rows

    bench = Bench(few_shot_bench(2, 1, 8), tmp_path, progress=False, engine=Twice())
    (row,) = bench.run()
    ids = [json.loads(x)["id"] for x in _lines(tmp_path / "samples" / "few-shot.jsonl")]
    assert row["status"] == "ran" and len(ids) == 2 and len(set(ids)) == 2
    assert json.loads((tmp_path / "strategies.json").read_text())["few-shot"]["peak_rss_mb"] > 0
