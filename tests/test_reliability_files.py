"""Fault injection on the files ``llmapps run`` reads and writes (issue 17, items 3, 4, 5, 11).

One test per class of fault, each over many cases: line-separator characters inside strings
round-trip through our own files; damaged results files (CRLF, not UTF-8, torn multi-byte last
line, rows without ``id``, arrays) give one-line errors or resume exactly, losing no finished
row; failed rows are retried on resume and counted in the exit code; a second writer on the same
file is refused with the first one's PID. Each test counts what it tried and what was lost.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from langchain_core.runnables import RunnableLambda

from llmapps.errors import InputError
from llmapps.jsonl import dumps_line, parse_jsonl, read_jsonl, split_lines
from llmapps.runner import lock_path, run_file

# every character str.splitlines() splits at, and a few more JSON writes unescaped
SEPARATORS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"]


def _echo(suffix: str) -> RunnableLambda:
    return RunnableLambda(lambda x: {"riddle": f"what {suffix} is {x['id']}?", "valid": True})


def test_line_separators_inside_strings_round_trip_through_our_files(tmp_path: Path) -> None:
    from llmapps.retrieval.store import VectorIndex

    tried = lost = 0
    for n, sep in enumerate(SEPARATORS):
        out = tmp_path / f"run-{n}.jsonl"
        inputs = [{"id": f"a{sep}{i}", "title": f"t{sep}x"} for i in range(3)]
        assert run_file(_echo(sep), inputs, out, progress=False).done == 3
        again = run_file(_echo(sep), inputs, out, progress=False)  # reads its own output
        assert (again.done, again.skipped) == (0, 3)
        rows = read_jsonl(out)
        lost += 3 - len(rows)
        assert [r["riddle"] for r in rows] == [f"what {sep} is a{sep}{i}?" for i in range(3)]
        tried += 1
        # an index's docstore holds the same characters
        import numpy as np

        index = VectorIndex(4, "test-model")
        vecs = np.eye(4, dtype=np.float32)[:2]
        index.add([f"d{sep}0", "d1"], [f"text{sep}zero", "one"], vecs, [{"t": sep}, {}])
        index.save(tmp_path / f"index-{n}")
        loaded = VectorIndex.load(tmp_path / f"index-{n}")
        assert loaded.records[f"d{sep}0"].text == f"text{sep}zero"
        tried += 1
    assert split_lines(dumps_line({"a": "\u2028"}) + "\r\n" + '{"b": 1}\r\n') == [
        '{"a": "\u2028"}',
        "",
        '{"b": 1}',
    ]
    rows, problems = parse_jsonl(b'{"a": 1}\r\n\xff\xfe\n{"b": 2}', "f")
    assert [r for _, r in rows] == [{"a": 1}, {"b": 2}] and problems == [
        "f:2: not UTF-8 (byte 0 of the line); re-save the file as UTF-8"
    ]
    print(f"separators: {tried} round trips, {lost} rows lost")
    assert lost == 0


GOOD = [{"id": f"r{i}", "riddle": f"riddle {i} \u00e9\u2028"} for i in range(4)]


def _good_bytes(newline: str = "\n") -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + newline for r in GOOD).encode("utf-8")


# resumable damage: (name, file bytes, the prefix that must survive byte for byte)
RESUMABLE: list[tuple[str, bytes, bytes]] = [
    ("crlf", _good_bytes("\r\n"), _good_bytes("\r\n")),
    ("crlf-torn-tail", _good_bytes("\r\n") + b'{"id": "r9", "rid', _good_bytes("\r\n")),
    (
        "torn-multibyte",
        _good_bytes() + '{"id": "r9", "riddle": "\u00e9'.encode()[:-1],
        _good_bytes(),
    ),
    ("no-final-newline", _good_bytes()[:-1], _good_bytes()),
    (
        "blank-lines",
        _good_bytes().replace(b"\n", b"\n\n"),
        _good_bytes().replace(b"\n", b"\n\n")[:-1],
    ),
    ("bom", b"\xef\xbb\xbf" + _good_bytes(), b"\xef\xbb\xbf" + _good_bytes()),
]
# damage a resume must not guess about: (name, file bytes, the one-line error)
FATAL: list[tuple[str, bytes, str]] = [
    (
        "latin-1-row",
        _good_bytes() + '{"id": "r9", "riddle": "caf\u00e9"}\n'.encode("latin-1"),
        r":5: not UTF-8",
    ),
    (
        "row-without-id",
        _good_bytes() + b'{"riddle": "x"}\n',
        r":5: a results row needs a string or number 'id'",
    ),
    ("null-id", _good_bytes() + b'{"id": null}\n', r":5: a results row needs"),
    ("array-row", _good_bytes() + b"[1, 2]\n", r":5: expected a JSON object, got list"),
    ("number-row", _good_bytes() + b"7\n", r":5: expected a JSON object, got int"),
    ("broken-middle", _good_bytes().replace(b"\n", b"\n{oops\n", 1), r":2: not valid JSON"),
    ("deep-nesting", _good_bytes() + b"[" * 100_000 + b"\n", r":5: "),
]


def _results_file(folder: Path, data: bytes) -> Path:
    """A results file holding ``data``, as an interrupted or damaged run left it."""
    out = folder / "out.jsonl"
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("name,data,prefix", RESUMABLE, ids=[d[0] for d in RESUMABLE])
def test_damaged_results_files_resume_exactly(
    tmp_path: Path, name: str, data: bytes, prefix: bytes
) -> None:
    out = _results_file(tmp_path, data)
    summary = run_file(_echo("x"), [{"id": f"r{i}"} for i in range(6)], out, progress=False)
    assert (summary.done, summary.skipped) == (2, 4)
    assert out.read_bytes().startswith(prefix)  # every finished row kept, byte for byte
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(6)]  # 4 kept + 2 new, none lost
    assert rows[0]["riddle"] == GOOD[0]["riddle"]


@pytest.mark.parametrize("name,data,error", FATAL, ids=[d[0] for d in FATAL])
def test_damaged_results_files_fail_in_one_line_and_stay_untouched(
    tmp_path: Path, name: str, data: bytes, error: str
) -> None:
    out = _results_file(tmp_path, data)
    with pytest.raises(InputError, match=error) as info:
        run_file(_echo("x"), [{"id": f"r{i}"} for i in range(6)], out, progress=False)
    assert "\n" not in str(info.value)
    assert out.read_bytes() == data  # nothing touched, nothing lost


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_failed_rows_are_retried_on_resume_and_the_exit_code_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main
    from llmapps.cli.run import ROWS_FAILED_EXIT
    from llmapps.serving.fake_endpoint import FakeEndpointState, create_fake_app
    from llmapps.serving.server import serve_in_thread

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(
        "".join(
            json.dumps({"id": f"a{i}", "title": f"Story {i}", "text": "The council met."}) + "\n"
            for i in range(5)
        )
    )

    def args(url: str) -> list[str]:
        return [
            "run",
            "news-riddle",
            "-s",
            "service",
            "-i",
            str(inp),
            "-o",
            str(out),
            "-q",
            "--set",
            f"base_url={url}",
            "--set",
            "model=fake-model",
            "--set",
            "max_retries=0",
            "--set",
            "timeout=2",
            "--set",
            "cache=false",
        ]

    assert main(args(f"http://127.0.0.1:{_dead_port()}/v1")) == ROWS_FAILED_EXIT
    assert "5 failed" in capsys.readouterr().err
    assert all(r.get("error") for r in read_jsonl(out))
    with serve_in_thread(create_fake_app(FakeEndpointState())) as url:
        assert main(args(url + "/v1")) == 0
    err = capsys.readouterr().err
    assert "5 done, 0 already" in err and "5 failed before and retried" in err
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"a{i}" for i in range(5)]  # one row per id
    assert not any(r.get("error") for r in rows) and all(r["riddle"] for r in rows)
    # with --no-retry-failed a failed row stays as it is, and the exit status still says so
    out.write_text(dumps_line({"id": "a0", "error": "old"}))
    with serve_in_thread(create_fake_app(FakeEndpointState())) as url:
        assert main([*args(url + "/v1"), "--no-retry-failed"]) == ROWS_FAILED_EXIT
    assert read_jsonl(out)[0].get("error") == "old"


HOLDER = textwrap.dedent(
    """
    import sys, time
    from llmapps.locks import exclusive_lock
    with exclusive_lock(sys.argv[1], "test"):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    from llmapps.locks import exclusive_lock

    out = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path(out))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(
            InputError, match=rf"being written by another process \(PID {holder.pid}"
        ):
            run_file(_echo("x"), [{"id": "a"}], out, progress=False)
        assert not out.exists()  # the refused writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process: no stale lock file blocks the next run
    assert run_file(_echo("x"), [{"id": "a"}], out, progress=False).done == 1
    # within one process too (two threads): the second is refused, naming this PID
    with (
        exclusive_lock(tmp_path / "x.lock", "x"),
        pytest.raises(InputError, match=str(os.getpid())),
    ):
        exclusive_lock(tmp_path / "x.lock", "x").__enter__()


def test_a_kill_at_any_byte_loses_only_the_row_being_written(tmp_path: Path) -> None:
    """Cut a results file (CRLF and LF rows, multi-byte text) at every byte: resume keeps every
    complete row, drops only the torn one, and the file reads back whole afterwards."""
    emoji = "\U0001f600"
    rows = [{"id": f"k{i}", "riddle": f"caf\u00e9 \u2028 {emoji * i}"} for i in range(4)]
    lines = [
        json.dumps(r, ensure_ascii=False) + ("\r\n" if i % 2 else "\n") for i, r in enumerate(rows)
    ]
    data = "".join(lines).encode("utf-8")
    ends = [len("".join(lines[: i + 1]).encode("utf-8")) for i in range(len(lines))]
    inputs = [{"id": r["id"]} for r in rows]
    tried = lost = 0
    for cut in range(len(data) + 1):
        out = tmp_path / f"cut-{cut}.jsonl"
        out.write_bytes(data[:cut])
        complete = sum(end <= cut for end in ends)
        summary = run_file(_echo("x"), inputs, out, progress=False)
        tried += 1
        # a row whose JSON is whole but whose newline was not written yet is kept: no loss
        lost += summary.skipped < complete  # a complete row was not recognised as done
        assert summary.skipped <= complete + 1
        assert out.read_bytes().startswith(data[: ends[complete - 1]] if complete else b"")
        assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r in rows]
    print(f"kill at every byte: {tried} cuts, {lost} complete rows lost")
    assert lost == 0


def test_any_row_round_trips_through_one_line(tmp_path: Path) -> None:
    """Property (hypothesis): any JSON object of any Unicode text is one line and reads back equal."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
    scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
    value = st.recursive(
        scalar,
        lambda v: st.lists(v, max_size=3) | st.dictionaries(text, v, max_size=3),
        max_leaves=8,
    )
    seen = []

    @given(rows=st.lists(st.dictionaries(text, value, max_size=4), min_size=1, max_size=4))
    @settings(
        max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def check(rows: list[dict]) -> None:
        blob = "".join(dumps_line(r) for r in rows)
        assert blob.count("\n") == len(rows)
        parsed, problems = parse_jsonl(blob.encode("utf-8"), "x")
        assert not problems and [r for _, r in parsed] == rows
        seen.append(len(rows))

    check()
    print(f"JSONL property: {len(seen)} examples, {sum(seen)} rows, 0 mismatches")
