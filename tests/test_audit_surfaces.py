"""The audit on the surfaces that run strategies: ``llmapps audit fairness`` with the ``service``
strategy against a real ``llmapps serve`` on loopback (started for the audit, as the bench and the
demo start one, or given by its URL), and ``llmapps bench --audit``. Tiny models throughout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

KEY = "audit-test-key"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _check_service_rows(out: Path) -> list[dict[str, Any]]:
    rows = _rows(out / "service.jsonl")
    assert rows and len(rows) % 2 == 0
    assert {r["id"].rsplit("|", 1)[1] for r in rows} == {"a", "b"}
    assert all(not r.get("error") and r["output_tokens"] > 0 for r in rows), rows[0]
    assert all({"summary", "riddle", "answer", "valid"} <= set(r) for r in rows)
    report = json.loads((out / "report.json").read_text())
    service = report["strategies"]["service"]
    assert sum(f["pairs"] for f in service["fairness"].values()) == len(rows) // 2
    assert service["privacy"]["outputs"] == len(rows)
    return rows


def test_audit_runs_service_on_the_local_server_the_bench_would_start(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ``service.base_url``: the strategy's shared defaults (``llmapps serve`` on loopback
    running the instruct model, for the audit's length) answer, as in ``llmapps bench``."""
    from llmapps.cli import main

    out = tmp_path / "audit"
    args = ["audit", "fairness", "news-riddle", "--out", str(out), "--limit", "2",
            "--strategies", "zero-shot,service", "--opt", "zero-shot.max_new_tokens=12",
            "--opt", "service.max_new_tokens=12", "--batch-size", "4"]  # fmt: skip
    code = main(args)
    printed = capsys.readouterr().out
    assert code == 0
    rows = _check_service_rows(out)
    assert len(_rows(out / "zero-shot.jsonl")) == len(rows)  # the same twins through both
    assert "| service | gender |" in printed and "| zero-shot | gender |" in printed
    assert f"service: {len(rows)} outputs in" in printed
    report = json.loads((out / "report.json").read_text())
    for took in report["timings"].values():  # model loading and CPU time recorded apart
        assert took["load_seconds"] >= 0 and took["cpu_seconds"] > 0 and took["done"] == len(rows)
    assert report["run_seconds"] >= sum(t["seconds"] for t in report["timings"].values())
    assert "Last run:" in (out / "report.md").read_text()


def test_audit_runs_service_on_a_given_endpoint(
    tiny_instruct: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--opt service.base_url=URL``: that endpoint answers every output (its own counters say
    so), and the run resumes with nothing left to ask it."""
    from llmapps.cli import main
    from llmapps.serving.server import serve_model

    out = tmp_path / "audit"
    with serve_model(tiny_instruct, api_key=KEY) as url:
        args = ["audit", "fairness", "news-riddle", "--out", str(out), "--limit", "2",
                "--strategies", "service", "--opt", f"service.base_url={url}/v1",
                "--opt", f"service.api_key={KEY}", "--opt", f"service.model={tiny_instruct}",
                "--opt", "service.cache=false", "--opt", "service.max_new_tokens=12"]  # fmt: skip
        assert main(args) == 0
        rows = _check_service_rows(out)
        asked = httpx.get(f"{url}/health", timeout=10).json()["batching"]["requests"]
        assert asked == len(rows)
        assert main(args) == 0  # resumed: nothing asked again
        assert httpx.get(f"{url}/health", timeout=10).json()["batching"]["requests"] == asked
    assert "service: 0 outputs" in capsys.readouterr().out


def test_audit_checks_every_strategy_before_any_runs(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    out = tmp_path / "audit"
    args = ["audit", "fairness", "news-riddle", "--out", str(out), "--strategies",
            "zero-shot,lora", "--opt", f"lora.adapter={tmp_path / 'no-such-adapter'}"]  # fmt: skip
    code = main(args)
    assert code == 2
    err = capsys.readouterr().err
    assert "lora cannot run" in err and "no-such-adapter" in err and len(err.splitlines()) == 1
    assert not list(out.glob("*.jsonl"))  # zero-shot did not run first


def test_bench_audit_writes_the_audit_beside_the_report(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llmapps bench --audit``: the strategies that ran are audited with the bench's options,
    split and limit; ``audit.md`` lies beside ``summary.md``, the outputs under ``audit/``."""
    from llmapps.cli import main

    out = tmp_path / "bench"
    args = ["bench", "news-riddle", "--strategies", "zero-shot,service", "--limit", "2",
            "--out", str(out), "-q", "--no-perplexity", "--max-new-tokens", "12",
            "--audit"]  # fmt: skip
    code = main(args)
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / "summary.md").exists() and (out / "audit.md").exists()
    table = (out / "audit.md").read_text()
    assert "| zero-shot | gender |" in table and "| service | gender |" in table
    assert "| service | gender |" in printed and "audit.md" in printed
    _check_service_rows(out / "audit")
    report = json.loads((out / "audit" / "report.json").read_text())
    assert report["split"] == "test" and report["inputs"] == 2
    # the bench's --max-new-tokens reached the audit's strategies too
    for name in ("zero-shot", "service"):
        assert max(r["output_tokens"] for r in _rows(out / "audit" / f"{name}.jsonl")) <= 12
