"""Run a chain over many inputs, writing each result as it is done, resuming where a run stopped."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable

from llmapps.errors import InputError
from llmapps.observe import UsageTracker

log = logging.getLogger(__name__)


def read_done(path: Path, key: str = "id") -> dict[str, dict[str, Any]]:
    """Rows already written to a JSONL results file (a torn last line, from a kill, is dropped)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    good = 0
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                log.warning("%s: dropping a half-written last line", path)
                break
            raise InputError(f"{path}:{i + 1}: not valid JSON; fix or remove the line to resume") from None
        done[str(row[key])] = row
        good += len(line.encode()) + 1
    if good != path.stat().st_size:  # truncate the torn tail so appends stay line-aligned
        with path.open("r+b") as f:
            f.truncate(good)
    return done


class JsonlWriter:
    """Appends rows to a JSONL file, flushed and fsynced per row."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
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
        outs = chain.batch(list(chunk), config=[{"callbacks": [t]} for t in trackers], return_exceptions=True)
        elapsed = time.perf_counter() - started
        for inp, out, tracker in zip(chunk, outs, trackers, strict=True):
            if isinstance(out, Exception):
                row = {"valid": False, "error": f"{type(out).__name__}: {out}"}
            elif isinstance(out, dict):
                row = dict(out)
            else:
                row = {"output": out}
            row.update({"latency_s": round(elapsed, 4), "batch_size": len(chunk), **tracker.as_dict()})
            rows.append(row)
            if on_result:
                on_result(inp, row)
        bar.update(len(chunk))
    bar.close()
    return rows


def run_file(
    chain: Runnable[Any, Any],
    inputs: Sequence[dict[str, Any]],
    out: Path,
    *,
    batch_size: int = 16,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Run ``inputs`` (each with an ``id``) into the JSONL ``out``; skip ids already there.

    Returns (newly done, skipped).
    """
    done = read_done(out)
    todo = [x for x in inputs if str(x["id"]) not in done]
    keep = ("id", "title", "url", "source", "date")
    with JsonlWriter(out) as writer:
        def write(inp: dict[str, Any], row: dict[str, Any]) -> None:
            writer.write({**{k: inp[k] for k in keep if k in inp}, **row, **(extra or {})})

        run_batches(chain, todo, batch_size=batch_size, on_result=write, progress=progress)
    return len(todo), len(inputs) - len(todo)
