"""``llmapps run`` (incremental JSONL, resume, torn last line) and the CLI's manners: one-line
errors with exit codes, ``--debug`` tracebacks, a ``--help`` that imports no torch, and
``strategies``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from testkit import cli_command, run_args

from llmapps.cli import main
from llmapps.errors import InputError
from llmapps.runner import read_done, run_file


def _write_inputs(path: Path, articles: list[dict[str, Any]]) -> None:
    path.write_text(
        "".join(json.dumps({k: a[k] for k in ("id", "title", "text")}) + "\n" for a in articles)
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_jsonl_and_rerun_skips_done(
    tiny_models: Path,
    test_articles: list[dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_inputs(inp, test_articles[:3])
    args = [
        *run_args(str(inp), str(out)),
        "-q",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
    ]
    assert main(args) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == [a["id"] for a in test_articles[:3]]
    assert all(
        {"summary", "riddle", "answer", "valid", "latency_s", "output_tokens"} <= set(r)
        for r in rows
    )
    assert all(r["strategy"] == "few-shot" for r in rows)
    assert "3 done, 0 already in" in capsys.readouterr().err

    # one more input, and a torn last line as a kill mid-write leaves it
    _write_inputs(inp, test_articles[:4])
    with out.open("a") as f:
        f.write('{"id": "' + test_articles[3]["id"] + '", "summ')
    assert main(args) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == [a["id"] for a in test_articles[:4]]
    assert "1 done, 3 already in" in capsys.readouterr().err
    assert main(args) == 0
    assert "0 done, 4 already in" in capsys.readouterr().err
    assert len(_rows(out)) == 4


def test_run_file_writes_each_batch_as_done(tmp_path: Path) -> None:
    from langchain_core.runnables import RunnableLambda

    out = tmp_path / "out.jsonl"
    seen_sizes: list[int] = []

    def fn(x: dict[str, Any]) -> dict[str, Any]:
        seen_sizes.append(len(_rows(out)) if out.exists() else 0)
        if x["id"] == "bad":
            raise ValueError("boom")
        return {"value": x["id"].upper()}

    inputs = [{"id": i} for i in ("a", "b", "bad", "d")]
    s = run_file(RunnableLambda(fn), inputs, out, batch_size=2, progress=False)
    assert (s.done, s.skipped, s.failed) == (4, 0, 1)
    rows = _rows(out)
    assert [r.get("value") for r in rows] == ["A", "B", None, "D"]
    assert rows[2]["valid"] is False and "ValueError: boom" in rows[2]["error"]
    assert max(seen_sizes) == 2  # the first batch was on disk before the second ran


def test_read_done_drops_only_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "x"')
    assert list(read_done(out)) == ["a", "b"]
    assert out.read_text() == '{"id": "a"}\n{"id": "b"}\n'  # truncated so appends stay aligned
    out.write_text('{"id": "a"}\nbroken\n{"id": "c"}\n')
    with pytest.raises(
        InputError, match=r"out.jsonl:2: not valid JSON \(.*\); fix or remove the line"
    ):
        read_done(out)


def test_cli_error_is_one_line_with_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(run_args(str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl")))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: input ") and "does not exist" in err
    assert "Traceback" not in err and err.count("\n") == 1
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "x", "title": "T", "text": "Body."}) + "\n")
    code = main(
        ["run", "news-riddle", "-s", "fewshot", "-i", str(inp), "-o", str(tmp_path / "o.jsonl")]
    )
    assert code == 2
    assert "Did you mean 'few-shot'" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        cli_command(
            "--debug",
            "run",
            "news-riddle",
            "-i",
            str(tmp_path / "missing.jsonl"),
            "-o",
            str(tmp_path / "o.jsonl"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "InputError" in proc.stderr


def test_help_imports_no_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from llmapps.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
        "heavy = ('torch', 'transformers', 'langchain_core', 'faiss')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"llmapps --help imported {proc.stdout.strip()}"


def test_strategies_lists_names(capsys: pytest.CaptureFixture[str]) -> None:
    from llmapps.strategies.base import STRATEGIES

    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name in STRATEGIES.names():
        assert name in out
