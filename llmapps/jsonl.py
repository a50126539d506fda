"""Read and write JSONL files the one way the whole project does.

Lines end at ``"\\n"`` and nowhere else: ``str.splitlines()`` also splits at U+2028, U+2029,
U+0085, form feeds and other characters that ``json.dumps(..., ensure_ascii=False)`` writes
unescaped inside strings, so a file we wrote could not be read back. A ``"\\r"`` before the
``"\\n"`` is dropped (files edited on Windows), and bytes are decoded line by line, so a file that
is not UTF-8 gets one error naming the line instead of a ``UnicodeDecodeError``.

``parse_jsonl`` splits text into ``(line number, object)`` pairs plus problems (not JSON, not an
object); ``read_jsonl`` adds a per-row ``validate`` step and raises one ``InputError`` listing every
problem at once, so a user fixes a file in one pass. ``dumps_line`` is the one way a row becomes a
line, ``write_jsonl`` replaces a file atomically (a temp file, fsync, rename), and ``scan_jsonl``
gives each line's byte span, so an appender can cut a torn last line without re-encoding anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from llmapps.errors import InputError, format_problems

T = TypeVar("T")


def describe_validation_error(err: Exception) -> str:
    """One line from a pydantic ``ValidationError`` (``field: message; ...``) or any exception."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in errors())
    return str(err)


def dumps_line(row: Any) -> str:
    """``row`` as one JSONL line (with its ``"\\n"``); UTF-8 kept readable, never a raw newline.

    Raises:
        InputError: ``row`` holds a string that cannot be written as UTF-8 (a lone surrogate).
    """
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(
            row, ensure_ascii=True
        )  # \udxxx escapes: still valid JSON, still one line
    return line + "\n"


def split_lines(data: str | bytes) -> list[Any]:
    """``data`` cut at ``"\\n"`` only, each piece without its ``"\\n"`` and a trailing ``"\\r"``."""
    nl, cr = ("\n", "\r") if isinstance(data, str) else (b"\n", b"\r")
    pieces = data.split(nl)  # type: ignore[arg-type]
    if pieces and not pieces[-1]:
        pieces.pop()
    return [p[:-1] if p.endswith(cr) else p for p in pieces]  # type: ignore[arg-type]


@dataclass
class Line:
    """One line of a JSONL file: number, byte span (``end`` past its ``"\\n"``), object or problem."""

    lineno: int
    start: int
    end: int
    row: dict[str, Any] | None
    problem: str | None
    complete: bool  # ended with "\n" (a last line without one may be torn)


def _parse(raw: bytes | str, lineno: int, source: str) -> tuple[dict[str, Any] | None, str | None]:
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return None, (
                f"{source}:{lineno}: not UTF-8 (byte {err.start} of the line); "
                "re-save the file as UTF-8"
            )
    else:
        text = raw
    if lineno == 1:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return None, None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"{source}:{lineno}: not valid JSON ({err.msg})"
    except RecursionError:
        return None, f"{source}:{lineno}: JSON nested too deeply"
    if not isinstance(row, dict):
        return None, f"{source}:{lineno}: expected a JSON object, got {type(row).__name__}"
    return row, None


def scan_jsonl(data: bytes, source: str) -> Iterator[Line]:
    """Every non-blank line of ``data`` with its byte span, parsed (blank lines are skipped)."""
    pos, lineno = 0, 0
    while pos < len(data):
        lineno += 1
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        raw = data[pos : end - 1 if nl >= 0 else end]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        row, problem = _parse(raw, lineno, source)
        if row is not None or problem is not None:
            yield Line(lineno, pos, end, row, problem, nl >= 0)
        pos = end


def _lines(
    data: str | bytes, source: str
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    for lineno, line in enumerate(split_lines(data), start=1):
        row, problem = _parse(line, lineno, source)
        if row is not None or problem is not None:
            yield lineno, row, problem


def parse_jsonl(
    text: str | bytes, source: str
) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
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
    error: type[Exception] = InputError,
) -> list[T]:
    """Rows of the JSONL file ``path``, each passed through ``validate`` (which may raise).

    Raises:
        InputError: the file is missing, or lines are not JSON objects or fail ``validate``; the
            message names the file and the number of every bad line, in order (up to
            ``max_listed``), after a header counting them as ``what``. ``error`` picks another
            class of the family (an index's docstore raises ``RetrievalError``).
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{path} does not exist")
    if path.is_dir():
        raise error(f"{path} is a folder; expected a JSONL file")
    out: list[T] = []
    problems: list[str] = []
    for lineno, row, problem in _lines(path.read_bytes(), str(path)):
        if row is None:
            problems.append(problem or "")
            continue
        try:
            out.append(validate(row) if validate else row)  # type: ignore[arg-type]
        except (
            ValueError,
            TypeError,
            KeyError,
            InputError,
        ) as err:  # ValidationError is a ValueError
            problems.append(f"{path}:{lineno}: {describe_validation_error(err)}")
    if problems:
        header = f"{len(problems)} {what}(s) in {path} (fix or remove them):"
        raise error(format_problems(header, problems[:max_listed]))
    return out


def atomic_write(path: Path | str, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` all at once: a temp file beside it, fsync, rename.

    A reader sees the old content or the new, never a part; a crash or an error leaves the old.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666  # umask applies
    for _ in range(100):  # like mkstemp, but with the permissions a plain open() would give
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise FileExistsError(f"cannot create a temp file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_jsonl(path: Path | str, rows: Iterable[Any]) -> Path:
    """Replace ``path`` atomically with one line per row (see ``dumps_line``)."""
    return atomic_write(path, "".join(dumps_line(r) for r in rows))


def json_checksum(data: dict[str, Any], *, skip: str = "checksum") -> str:
    """SHA-256 of ``data`` without its ``skip`` key, over canonical JSON (sorted keys, no spaces).

    Manifests carry it so an edited or damaged manifest is noticed like a damaged data file.
    """
    body = {k: v for k, v in data.items() if k != skip}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


M = TypeVar("M", bound="BaseModel")


def read_manifest_json(
    path: Path,
    model: type[M],
    *,
    error: type[Exception],
    hint: str,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> M:
    """A folder's JSON manifest, read, validated by ``model`` and checked against its checksum.

    Every fault is one ``error`` naming ``path``, what is wrong and ``hint`` (what to do): not
    UTF-8, not JSON, not an object, a field ``model`` rejects (the first five), or a ``checksum``
    that does not match the content (edited after it was written). ``check`` sees the raw object
    before validation (e.g. to refuse an unknown format with its own message).
    """
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise error(f"{path} is not UTF-8 (byte {err.start}); {hint}") from err
    except (json.JSONDecodeError, RecursionError) as err:
        why = getattr(err, "msg", "nested too deeply")
        raise error(f"{path} is corrupted (not valid JSON: {why}); {hint}") from err
    if not isinstance(data, dict):
        raise error(f"{path} is not a JSON object; {hint}")
    if check is not None:
        check(data)
    try:
        manifest = model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in err.errors()[:5]
        )
        raise error(f"{path} is not a valid manifest ({problems}); {hint}") from err
    checksum = getattr(manifest, "checksum", None)
    if checksum is not None and json_checksum(data) != checksum:
        raise error(
            f"{path} was changed after it was written (its checksum does not match); {hint}"
        )
    return manifest
