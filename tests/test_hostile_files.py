"""Hostile ``--out`` paths and concurrent writers (issue 22, items 5, 6 and the ``run`` part of 11).

Every command that writes ``--out`` goes through ``llmapps.files``: it refuses to overwrite any of
its inputs (the same path, a symlink or a hard link to it, a file its output folder would
replace, an output inside an input folder), gives one line for a wrong kind of path (a folder
where a file is written and the reverse, a file as a parent folder), replaces files atomically
(a new inode, no temp file left) and holds the runner's lock (``.NAME.lock`` naming the PID), so a
second writer is refused in one line; two real ``llmapps bench`` processes on one folder leave
one row per sample. ``run --no-retry-failed`` exits 4 while failed rows remain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmapps.cli import main
from llmapps.locks import exclusive_lock, lock_path

ROOT = Path(__file__).resolve().parent.parent
KEY = {"strategies": ["a", "b"], "items": {"q0001": {"id": "x1", "A": "a", "B": "b"}}}
SHEET = "item,context,A,B,preference,rater\r\nq0001,ctx,one,two,A,ann\r\n"


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def files(tmp_path: Path, test_articles: list[dict[str, Any]]) -> Path:
    """One folder holding an input of every kind the commands read."""
    rows = [{k: a[k] for k in ("id", "title", "text")} for a in test_articles[:2]]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "feed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    riddles = [{"id": a["id"], "riddle": f"what is {a['id']}?"} for a in test_articles[:2]]
    for name in ("preds.jsonl", "refs.jsonl", "e.rows.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in riddles))
    (tmp_path / "sheet.csv").write_text(SHEET)
    (tmp_path / "key.json").write_text(json.dumps(KEY))
    dialogues = (ROOT / "data" / "boutique" / "dialogues.jsonl").read_text().splitlines()[:2]
    (tmp_path / "d.jsonl").write_text("\n".join(dialogues) + "\n")
    run = tmp_path / "bench"
    (run / "samples").mkdir(parents=True)
    (run / "references.jsonl").write_text(json.dumps({"id": "x1", "title": "t", "text": "x"}))
    for name in ("a", "b"):
        (run / "samples" / f"{name}.jsonl").write_text(json.dumps({"id": "x1", "riddle": name}))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "docstore-1.jsonl").write_text((tmp_path / "in.jsonl").read_text())
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<html><h1>Feed</h1><p>words</p></html>")
    return tmp_path


EVALUATE = ["evaluate", "-p", "preds.jsonl", "-r", "refs.jsonl", "--fields", "riddle"]
EVALUATE += ["--no-semantic"]
FETCH = ["news", "fetch", "--feed", "feed.jsonl", "-q"]

# (case, argv with paths relative to the fixture folder, the input that must stay whole)
CLOBBERS: list[tuple[str, list[str], str]] = [
    ("run-same-file", ["run", "news-riddle", "-i", "in.jsonl", "-o", "in.jsonl"], "in.jsonl"),
    ("run-symlink", ["run", "news-riddle", "-i", "in.jsonl", "-o", "@link"], "in.jsonl"),
    ("run-hard-link", ["run", "news-riddle", "-i", "in.jsonl", "-o", "@hard"], "in.jsonl"),
    ("run-in-input-folder", ["run", "news-riddle", "-i", "idx", "-o", "idx/out.jsonl"], "idx"),
    ("evaluate-predictions", [*EVALUATE, "--out", "preds.jsonl"], "preds.jsonl"),
    ("evaluate-references", [*EVALUATE, "--out", "refs.jsonl"], "refs.jsonl"),
    (
        "evaluate-rows-file",
        [*EVALUATE[:2], "e.rows.jsonl", *EVALUATE[3:], "--out", "e.json"],
        "e.rows.jsonl",
    ),
    (
        "import-key",
        ["human-eval", "import", "sheet.csv", "--key", "key.json", "--out", "key.json"],
        "key.json",
    ),
    (
        "import-sheet",
        ["human-eval", "import", "sheet.csv", "--key", "key.json", "--out", "sheet.csv"],
        "sheet.csv",
    ),
    (
        "import-symlink",
        ["human-eval", "import", "sheet.csv", "--key", "key.json", "--out", "@keylink"],
        "key.json",
    ),
    ("annotate-format", ["annotate", "format", "d.jsonl", "--out", "d.jsonl"], "d.jsonl"),
    ("news-fetch-feed", [*FETCH, "--out", "feed.jsonl"], "feed.jsonl"),
    ("news-fetch-report", [*FETCH, "--out", "new.jsonl", "--report", "feed.jsonl"], "feed.jsonl"),
    (
        "daily-feed-page",
        ["daily", "--feed", "site/index.html", "--out", "site", "-q"],
        "site/index.html",
    ),
    (
        "index-build-docs",
        ["index", "build", "-i", "idx/docstore-1.jsonl", "-o", "idx", "-q"],
        "idx/docstore-1.jsonl",
    ),
    (
        "finetune-merge-adapter",
        ["finetune", "merge", "adapter", "--out", "adapter"],
        "adapter/adapter_config.json",
    ),
]


def _argv(folder: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``argv`` run from inside ``folder`` (its paths are relative), ``@NAME`` made a link."""
    monkeypatch.chdir(folder)
    links = {"@link": "in.jsonl", "@hard": "in.jsonl", "@keylink": "key.json"}
    for arg in argv:
        if arg in links:
            link = folder / arg[1:]
            if arg == "@hard":
                os.link(folder / links[arg], link)
            else:
                link.symlink_to(folder / links[arg])
    return [a[1:] if a in links else a for a in argv]


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return {str(path): path.read_bytes()}


@pytest.mark.parametrize("case, argv, kept", CLOBBERS, ids=[c[0] for c in CLOBBERS])
def test_out_never_overwrites_an_input(
    case: str,
    argv: list[str],
    kept: str,
    files: Path,
    tiny_models: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = _snapshot(files / kept)
    code = main(_argv(files, argv, monkeypatch))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2, line
    assert "input" in line and ("--out" in line or "--report" in line)
    assert _snapshot(files / kept) == before


# (case, argv, the path made a file or a folder first)
WRONG_KIND: list[tuple[str, list[str], str, str]] = [
    (
        "run-out-folder",
        ["run", "news-riddle", "-i", "in.jsonl", "-o", "outdir"],
        "outdir",
        "folder",
    ),
    (
        "run-parent-is-a-file",
        ["run", "news-riddle", "-i", "in.jsonl", "-o", "plain.txt/o.jsonl"],
        "plain.txt",
        "file",
    ),
    ("evaluate-out-folder", [*EVALUATE, "--out", "outdir"], "outdir", "folder"),
    (
        "import-out-folder",
        ["human-eval", "import", "sheet.csv", "--key", "key.json", "--out", "outdir"],
        "outdir",
        "folder",
    ),
    (
        "annotate-out-folder",
        ["annotate", "format", "d.jsonl", "--out", "outdir"],
        "outdir",
        "folder",
    ),
    ("news-fetch-out-folder", [*FETCH, "--out", "outdir"], "outdir", "folder"),
    (
        "bench-out-file",
        [
            "bench",
            "news-riddle",
            "--strategies",
            "zero-shot",
            "--limit",
            "1",
            "--out",
            "plain.txt",
            "-q",
        ],
        "plain.txt",
        "file",
    ),
    (
        "daily-out-file",
        ["daily", "--feed", "feed.jsonl", "--out", "plain.txt", "-q"],
        "plain.txt",
        "file",
    ),
    (
        "export-out-file",
        ["human-eval", "export", "bench", "--out", "plain.txt"],
        "plain.txt",
        "file",
    ),
    (
        "index-build-out-file",
        ["index", "build", "-i", "in.jsonl", "-o", "plain.txt", "-q"],
        "plain.txt",
        "file",
    ),
    (
        "finetune-merge-out-file",
        ["finetune", "merge", "adapter", "--out", "plain.txt"],
        "plain.txt",
        "file",
    ),
]


@pytest.mark.parametrize("case, argv, path, kind", WRONG_KIND, ids=[c[0] for c in WRONG_KIND])
def test_a_wrong_kind_of_out_path_is_one_line(
    case: str,
    argv: list[str],
    path: str,
    kind: str,
    files: Path,
    tiny_models: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = files / path
    if kind == "folder":
        target.mkdir()
    else:
        target.write_text("keep me\n")
    code = main(_argv(files, argv, monkeypatch))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and ("is a folder" in line or "is a file" in line), line
    assert target.is_dir() if kind == "folder" else target.read_text() == "keep me\n"


def test_the_sweep_script_gives_one_line_for_a_file_as_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from finetune.sweep import main as sweep_main

    (tmp_path / "plain.txt").write_text("keep me\n")
    assert sweep_main(["--recipe", "tiny", "--out", str(tmp_path / "plain.txt")]) == 2
    assert "is a file" in _one_error_line(capsys.readouterr().err)
    assert (tmp_path / "plain.txt").read_text() == "keep me\n"


# commands whose --out is replaced whole: (case, argv, the file written)
ATOMIC: list[tuple[str, list[str], str]] = [
    ("evaluate", [*EVALUATE, "--out", "e2.json"], "e2.json"),
    ("evaluate-rows", [*EVALUATE, "--out", "e2.json"], "e2.rows.jsonl"),
    (
        "human-eval-import",
        ["human-eval", "import", "sheet.csv", "--key", "key.json", "--out", "r.json"],
        "r.json",
    ),
    ("annotate-format", ["annotate", "format", "d.jsonl", "--out", "rows.jsonl"], "rows.jsonl"),
    ("human-eval-export", ["human-eval", "export", "bench", "--out", "sheet"], "sheet/key.json"),
]


@pytest.mark.parametrize("case, argv, written", ATOMIC, ids=[c[0] for c in ATOMIC])
def test_outputs_are_replaced_atomically(
    case: str,
    argv: list[str],
    written: str,
    files: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A temp file renamed over the old one: a new inode (a reader holding the old file keeps
    it whole), nothing left beside it, and the lock file beside the output."""
    out = files / written
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("old\n")
    old_inode = out.stat().st_ino
    held = out.open("rb")  # a reader of the old file, as `tail -f` or a browser would hold it
    try:
        assert main(_argv(files, argv, monkeypatch)) == 0, capsys.readouterr().err
        assert out.stat().st_ino != old_inode and out.read_text() != "old\n"
        assert held.read() == b"old\n"
    finally:
        held.close()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


# the commands that take the output's lock: (case, argv, the --out path)
LOCKED: list[tuple[str, list[str], str]] = [
    ("evaluate", [*EVALUATE, "--out", "e3.json"], "e3.json"),
    (
        "human-eval-import",
        ["human-eval", "import", "sheet.csv", "--key", "key.json", "--out", "r.json"],
        "r.json",
    ),
    ("human-eval-export", ["human-eval", "export", "bench", "--out", "sheet"], "sheet"),
    ("annotate-format", ["annotate", "format", "d.jsonl", "--out", "rows.jsonl"], "rows.jsonl"),
    ("news-fetch", [*FETCH, "--out", "new.jsonl"], "new.jsonl"),
    ("daily", ["daily", "--feed", "feed.jsonl", "--out", "site2", "-q"], "site2"),
    (
        "bench",
        ["bench", "news-riddle", "--strategies", "zero-shot", "--limit", "1", "--out", "b2", "-q"],
        "b2",
    ),
    ("run", ["run", "news-riddle", "-i", "in.jsonl", "-o", "o.jsonl", "-q"], "o.jsonl"),
]


@pytest.mark.parametrize("case, argv, out", LOCKED, ids=[c[0] for c in LOCKED])
def test_a_second_writer_is_refused_naming_the_first(
    case: str,
    argv: list[str],
    out: str,
    files: Path,
    tiny_models: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with exclusive_lock(lock_path(files / out), "the test's hold"):
        code = main(_argv(files, argv, monkeypatch))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and f"PID {os.getpid()}" in line, line
    assert not (files / out).exists()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_two_real_benches_on_one_folder(tmp_path: Path, tiny_models: Path) -> None:
    """The first bench holds the folder; a second one, started while the first is mid-run
    (stopped with SIGSTOP so the overlap is certain), is refused in one line naming the
    first's PID; the first then finishes with one row per sample."""
    out = tmp_path / "bench"
    rows_file = out / "samples" / "few-shot.jsonl"
    cmd = [sys.executable, "-m", "llmapps.cli", "bench", "news-riddle", "--strategies", "few-shot"]
    cmd += ["--limit", "4", "--batch-size", "1", "--max-new-tokens", "8", "--out", str(out)]
    cmd += ["--quiet", "--no-perplexity"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    try:
        while not _lines(rows_file) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None and _lines(rows_file), "the first bench must be mid-run"
        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate(timeout=180)
    assert second.returncode == 2
    assert f"PID {first.pid}" in _one_error_line(second.stderr)
    assert first.returncode == 0, first_err
    ids = [json.loads(x)["id"] for x in _lines(rows_file)]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_run_without_retrying_failed_rows_exits_4(
    tmp_path: Path,
    tiny_models: Path,
    test_articles: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--no-retry-failed`` keeps a failed row as it is, and the exit status says it is there."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    arts = test_articles[:2]
    inp.write_text(
        "".join(json.dumps({k: a[k] for k in ("id", "title", "text")}) + "\n" for a in arts)
    )
    out.write_text(
        json.dumps({"id": arts[0]["id"], "riddle": "r", "valid": True})
        + "\n"
        + json.dumps({"id": arts[1]["id"], "valid": False, "error": "BackendError: boom"})
        + "\n"
    )
    before = out.read_bytes()
    argv = ["run", "news-riddle", "-i", str(inp), "-o", str(out), "-q", "--max-new-tokens", "4"]
    assert main([*argv, "--no-retry-failed"]) == 4
    err = capsys.readouterr().err
    assert "0 done, 2 already" in err and "1 failed before and were not retried" in err
    assert out.read_bytes() == before
    assert main([*argv, "--no-retry-failed"]) == 4  # still there, still said
    capsys.readouterr()
