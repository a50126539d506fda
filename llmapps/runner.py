"""Run a chain over many inputs, writing each result as it is done, resuming where a run stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.runnables import Runnable

from llmapps.errors import InputError, format_problems
from llmapps.jsonl import dumps_line, scan_jsonl, write_jsonl
from llmapps.locks import exclusive_lock, lock_path
from llmapps.observe import UsageTracker

log = logging.getLogger(__name__)


def read_done(path: Path, key: str = "id") -> dict[str, dict[str, Any]]:
    """Rows already written to a JSONL results file, by ``key`` (a later row of an id wins).

    A torn last line (a kill mid-write, even one cut inside a multi-byte character) is cut off
    the file so appends stay line-aligned; byte offsets come from the file itself, so CRLF files
    are cut exactly. Any other bad line (not UTF-8, not JSON, not an object, no ``key``) is an
    ``InputError`` naming every such line, not a traceback.
    """
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a JSONL results file as --out")
    data = path.read_bytes()
    lines = list(scan_jsonl(data, str(path)))
    problems: list[str] = []
    kept_end, kept_complete = 0, True
    for i, line in enumerate(lines):
        if line.problem is not None:
            if i == len(lines) - 1 and not line.complete and not problems:
                log.warning("%s: dropping a half-written last line", path)
                break
            problems.append(line.problem)
            continue
        row = line.row or {}
        if row.get(key) is None or isinstance(row[key], (dict, list)):
            problems.append(f"{path}:{line.lineno}: a results row needs a string or number {key!r}")
            continue
        done[str(row[key])] = row
        kept_end, kept_complete = line.end, line.complete
    if len(problems) == 1:
        raise InputError(
            f"{problems[0]}; fix or remove the line to resume, or write to another --out"
        )
    if problems:
        raise InputError(
            format_problems(
                f"{len(problems)} bad line(s) in {path}, so the run cannot resume (fix or remove "
                "them, or write to another --out):",
                problems[:20],
            )
        )
    if kept_end != len(data) or not kept_complete:
        with path.open("r+b") as f:  # cut the torn tail (or blank lines), end on a newline
            f.truncate(kept_end)
            if kept_end and not kept_complete:
                f.seek(kept_end)
                f.write(b"\n")
    return done


class JsonlWriter:
    """Appends rows to a JSONL file, flushed and fsynced per row."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", encoding="utf-8", newline="\n")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(dumps_line(row))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """``items`` in consecutive slices of ``size`` (the last one shorter)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_batches(
    chain: Runnable[Any, Any],
    inputs: Sequence[dict[str, Any]],
    *,
    batch_size: int = 16,
    on_result: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    progress: bool = True,
    desc: str = "generating",
) -> list[dict[str, Any]]:
    """Batch ``inputs`` through ``chain``; each result carries ``latency_s`` and token usage.

    A failing input becomes a row with ``error`` (the others in its batch finish). ``latency_s``
    is the wall time of the input's batch; ``batch_size`` is recorded beside it.
    """
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(inputs), desc=desc, disable=not progress, unit="item")
    for chunk in batched(inputs, batch_size):
        trackers = [UsageTracker() for _ in chunk]
        started = time.perf_counter()
        outs = chain.batch(
            list(chunk), config=[{"callbacks": [t]} for t in trackers], return_exceptions=True
        )
        elapsed = time.perf_counter() - started
        for inp, out, tracker in zip(chunk, outs, trackers, strict=True):
            if isinstance(out, Exception):
                row = {"valid": False, "error": f"{type(out).__name__}: {out}"}
            elif isinstance(out, dict):
                row = dict(out)
            else:
                row = {"output": out}
            row.update(
                {"latency_s": round(elapsed, 4), "batch_size": len(chunk), **tracker.as_dict()}
            )
            rows.append(row)
            if on_result:
                on_result(inp, row)
        bar.update(len(chunk))
    bar.close()
    return rows


@dataclass
class RunSummary:
    """What ``run_file`` did: rows written now, ids skipped as already done, and failures.

    ``failed`` counts the rows written now with an ``error``; ``retried`` the earlier failed rows
    that were run again (they are removed from the file first, so each id keeps one row);
    ``kept_failed`` the earlier failed rows of these inputs left as they were (not retried).
    """

    done: int
    skipped: int
    failed: int = 0
    retried: int = 0
    kept_failed: int = 0

    @property
    def unfinished(self) -> int:
        """Rows of these inputs that still hold an ``error`` after the run."""
        return self.failed + self.kept_failed

    def describe(self, out: Path | str) -> str:
        text = f"{self.done} done, {self.skipped} already in {out}"
        if self.retried:
            text += f"; {self.retried} failed before and retried"
        if self.failed:
            text += f"; {self.failed} failed (see their 'error'; run again to retry them)"
        if self.kept_failed:
            text += (
                f"; {self.kept_failed} failed before and were not retried (run again without "
                "--no-retry-failed to retry them)"
            )
        return text


@dataclass
class ResultsFile:
    """An open results file of a run: what is left to do, and the one way a result is written.

    Made by ``open_results``; both engines (``run_file`` here and ``llmapps.bench.ray_engine``) write
    through it, so a row has the same keys and the file the same layout whichever ran it.
    ``extra`` is added to every row; ``failed`` and ``written`` count this run's rows.
    """

    KEEP: ClassVar[tuple[str, ...]] = ("id", "title", "url", "source", "date")  # input keys copied

    writer: JsonlWriter
    todo: list[dict[str, Any]]
    skipped: int
    retried: int
    extra: dict[str, Any] | None = None
    kept_failed: int = 0
    failed: int = field(default=0, init=False)
    written: int = field(default=0, init=False)

    def write(self, inp: dict[str, Any], row: dict[str, Any]) -> None:
        """Append the result ``row`` of input ``inp`` (flushed and fsynced)."""
        self.failed += bool(row.get("error"))
        self.written += 1
        self.writer.write(
            {**{k: inp[k] for k in self.KEEP if k in inp}, **row, **(self.extra or {})}
        )

    def summary(self) -> RunSummary:
        return RunSummary(len(self.todo), self.skipped, self.failed, self.retried, self.kept_failed)


@contextlib.contextmanager
def open_results(
    inputs: Sequence[dict[str, Any]],
    out: Path,
    *,
    extra: dict[str, Any] | None = None,
    retry_failed: bool = True,
) -> Iterator[ResultsFile]:
    """Lock ``out``, read what it holds, and yield the inputs still to do with a row writer.

    Rows that failed before (an ``error``) are removed from the file and run again unless
    ``retry_failed`` is false. One writer at a time: a second run on the same ``out`` gets an
    ``InputError`` naming the first.
    """
    missing = [n for n, x in enumerate(inputs, 1) if x.get("id") is None]
    if missing:
        raise InputError(f"inputs {missing[:10]} have no 'id'; every input needs one to resume")
    with exclusive_lock(lock_path(out), f"the results file {out}"):
        done = read_done(out)
        retried = 0
        failed_ids = {k for k, r in done.items() if r.get("error")}
        wanted = {str(x["id"]) for x in inputs}
        kept_failed = 0 if retry_failed else len(failed_ids & wanted)
        if retry_failed:
            retried = len(failed_ids & wanted)
            if retried:
                kept = {k: r for k, r in done.items() if k not in failed_ids or k not in wanted}
                write_jsonl(out, kept.values())  # atomically: each id keeps one row
                done = kept
        todo = [x for x in inputs if str(x["id"]) not in done]
        with JsonlWriter(out) as writer:
            yield ResultsFile(writer, todo, len(inputs) - len(todo), retried, extra, kept_failed)


def run_file(
    chain: Runnable[Any, Any],
    inputs: Sequence[dict[str, Any]],
    out: Path,
    *,
    batch_size: int = 16,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    retry_failed: bool = True,
) -> RunSummary:
    """Run ``inputs`` (each with an ``id``) into the JSONL ``out``; skip ids already there.

    Rows that failed before (an ``error``) are run again unless ``retry_failed`` is false. One
    writer at a time: a second run on the same ``out`` gets an ``InputError`` naming the first.
    """
    with open_results(inputs, out, extra=extra, retry_failed=retry_failed) as results:
        run_batches(
            chain, results.todo, batch_size=batch_size, on_result=results.write, progress=progress
        )
    return results.summary()
