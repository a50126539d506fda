"""Hostile files on the command line (issue 22, item 9): one line on stderr, never a traceback.

Every case hands the real CLI a damaged file where it promises a one-line error: a sheet's
``key.json`` that is not JSON, empty, a list, without ``items``, with an item missing ``B`` or an
item that is a string, not UTF-8, missing or a folder; a filled sheet CSV that is not UTF-8 or
holds a field over the csv module's 131,072-character limit; ``llmapps ui --run`` on a bench whose
blinded sheet or key is damaged; an ``LLMAPPS_CONFIG`` that is a list, not YAML, carries a
``!!python`` tag, is not UTF-8, is missing or is a folder; a latin-1 or UTF-16 ``.txt`` input.
Each must end with its exit status and exactly one ``error:`` line naming the file. The in-process
cases run through ``llmapps.cli.main`` (an exception would escape it); a subprocess sample runs
the real entry point, and ``ui`` always runs as a subprocess (a miss would serve a page).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llmapps.cli import main

ROOT = Path(__file__).resolve().parent.parent
KEY = {"strategies": ["few-shot", "zero-shot"], "items": {"q0001": {"id": "a", "A": "x", "B": "y"}}}
SHEET = "item,context,A,B,preference,rater\r\nq0001,ctx,one,two,A,ann\r\n"


def _key_bytes(data: object) -> bytes:
    return json.dumps(data).encode()


# name -> what key.json holds (bytes), or a callable making the path (missing, folder)
KEYS: dict[str, bytes | Callable[[Path], None]] = {
    "bad-json": b'{"items": ',
    "empty": b"",
    "a-list": _key_bytes([KEY]),
    "no-items": _key_bytes({"strategies": ["a", "b"]}),
    "item-without-B": _key_bytes({"items": {"q0001": {"id": "a", "A": "x"}}}),
    "string-item": _key_bytes({"items": {"q0001": "few-shot"}}),
    "not-utf8": b'{"items": {"q0001": {"id": "caf\xe9", "A": "x", "B": "y"}}}',
    "missing": lambda p: None,
    "folder": lambda p: p.mkdir(),
}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("case", KEYS)
def test_a_damaged_key_is_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet, key = tmp_path / "sheet.csv", tmp_path / "key.json"
    sheet.write_text(SHEET, encoding="utf-8")
    made = KEYS[case]
    if callable(made):
        made(key)
    else:
        key.write_bytes(made)
    assert main(["human-eval", "import", str(sheet), "--key", str(key)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(key) in line


@pytest.mark.parametrize(
    "case, data",
    [
        (
            "not-utf8",
            "item,context,A,B,preference,rater\nq0001,caf\xe9,one,two,A,ann\n".encode("latin-1"),
        ),
        (
            "huge-field",
            f'item,context,A,B,preference,rater\nq0001,"{"x" * 131_073}",a,b,A,ann\n'.encode(),
        ),
        ("missing", None),
        ("folder", None),
    ],
    ids=["not-utf8", "huge-field", "missing", "folder"],
)
def test_a_damaged_sheet_is_one_line(
    case: str, data: bytes | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet, key = tmp_path / "sheet.csv", tmp_path / "key.json"
    key.write_text(json.dumps(KEY))
    if data is not None:
        sheet.write_bytes(data)
    elif case == "folder":
        sheet.mkdir()
    assert main(["human-eval", "import", str(sheet), "--key", str(key)]) == 2
    assert str(sheet) in _one_error_line(capsys.readouterr().err)


def _run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "llmapps.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize("damaged", ["key", "sheet"])
def test_ui_run_with_a_damaged_sheet_or_key_is_one_line(damaged: str, tmp_path: Path) -> None:
    run = tmp_path / "bench"
    folder = run / "human-eval"
    folder.mkdir(parents=True)
    (folder / "key.json").write_text("{not json" if damaged == "key" else json.dumps(KEY))
    (folder / "sheet.csv").write_bytes(
        SHEET.encode() if damaged == "key" else SHEET.replace("ctx", "caf\xe9").encode("latin-1")
    )
    code, err = _run_cli(["ui", "--run", str(run), "--strategies", "zero-shot", "--port", "0"])
    assert code == 2
    assert str(folder / f"{'key.json' if damaged == 'key' else 'sheet.csv'}") in _one_error_line(
        err
    )


CONFIGS: dict[str, bytes | None] = {
    "a-list": b"- base_model: tiny-base\n",
    "syntax-error": b"generation: [\n  batch_size: 4\n",
    "python-tag": b"base_model: !!python/object/apply:os.system ['true']\n",
    "not-utf8": b"base_model: caf\xe9\n",
    "missing": None,
    "folder": None,
}


@pytest.mark.parametrize("case", CONFIGS)
def test_a_bad_settings_file_is_one_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    if CONFIGS[case] is not None:
        config.write_bytes(CONFIGS[case])  # type: ignore[arg-type]
    elif case == "folder":
        config.mkdir()
    monkeypatch.setenv("LLMAPPS_CONFIG", str(config))
    assert main(["models", "list"]) == 2
    assert str(config) in _one_error_line(capsys.readouterr().err)


def test_settings_files_that_are_fine_still_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmapps.settings import get_settings

    monkeypatch.setenv("LLMAPPS_HOME", str(tmp_path / "home"))  # no default config.yaml: fine
    monkeypatch.delenv("LLMAPPS_CONFIG", raising=False)
    assert get_settings().home == tmp_path / "home"
    config = tmp_path / "c.yaml"
    for text in ("", "# only a comment\n", "\ufeffgeneration:\n  batch_size: 3\n"):
        config.write_text(text, encoding="utf-8")
        monkeypatch.setenv("LLMAPPS_CONFIG", str(config))
        assert get_settings().generation.batch_size == (3 if "batch" in text else 32)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_text_input_in_another_encoding_is_one_line(
    encoding: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    article = tmp_path / "article.txt"
    article.write_bytes("Caf\xe9 owners vote\nThe caf\xe9 on the square voted.\n".encode(encoding))
    code = main(["run", "news-riddle", "-i", str(article), "-o", str(tmp_path / "out.jsonl")])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(article) in line and "UTF-8" in line
    assert ("UTF-16" in line) == (encoding == "utf-16")
    assert not (tmp_path / "out.jsonl").exists()


def test_the_real_entry_point_prints_one_line(tmp_path: Path) -> None:
    """A sample of the cases above through ``python -m llmapps.cli``: the same single line."""
    key = tmp_path / "key.json"
    key.write_text("[]")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(SHEET)
    code, err = _run_cli(["human-eval", "import", str(sheet), "--key", str(key)])
    assert code == 2 and str(key) in _one_error_line(err)
    config = tmp_path / "config.yaml"
    config.write_bytes(CONFIGS["python-tag"])  # type: ignore[arg-type]
    code, err = _run_cli(["models", "list"], env={"LLMAPPS_CONFIG": str(config)})
    assert code == 2 and "python" in _one_error_line(err)
