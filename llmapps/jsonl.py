"""Read JSONL files the one way the whole project does: every bad line named with its number.

``parse_jsonl`` splits text into ``(line number, object)`` pairs plus problems (not JSON, not an
object); ``read_jsonl`` adds a per-row ``validate`` step and raises one ``InputError`` listing every
problem at once, so a user fixes a file in one pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from llmapps.errors import InputError, format_problems

T = TypeVar("T")


def describe_validation_error(err: Exception) -> str:
    """One line from a pydantic ``ValidationError`` (``field: message; ...``) or any exception."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in errors())
    return str(err)


def _lines(text: str, source: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield lineno, None, f"{source}:{lineno}: not valid JSON ({err.msg})"
            continue
        if not isinstance(row, dict):
            yield lineno, None, f"{source}:{lineno}: expected a JSON object, got {type(row).__name__}"
            continue
        yield lineno, row, None


def parse_jsonl(text: str, source: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """JSON objects of ``text`` with their line numbers, and a problem line for each bad line."""
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[str] = []
    for lineno, row, problem in _lines(text, source):
        if row is not None:
            rows.append((lineno, row))
        else:
            problems.append(problem or "")
    return rows, problems


def read_jsonl(
    path: Path | str,
    validate: Callable[[dict[str, Any]], T] | None = None,
    *,
    what: str = "bad row",
    max_listed: int = 50,
) -> list[T]:
    """Rows of the JSONL file ``path``, each passed through ``validate`` (which may raise).

    Raises:
        InputError: the file is missing, or lines are not JSON objects or fail ``validate``; the
            message names the file and the number of every bad line, in order (up to
            ``max_listed``), after a header counting them as ``what``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    out: list[T] = []
    problems: list[str] = []
    for lineno, row, problem in _lines(path.read_text(encoding="utf-8"), str(path)):
        if row is None:
            problems.append(problem or "")
            continue
        try:
            out.append(validate(row) if validate else row)  # type: ignore[arg-type]
        except (ValueError, TypeError, KeyError, InputError) as err:  # ValidationError is a ValueError
            problems.append(f"{path}:{lineno}: {describe_validation_error(err)}")
    if problems:
        header = f"{len(problems)} {what}(s) in {path} (fix or remove them):"
        raise InputError(format_problems(header, problems[:max_listed]))
    return out
