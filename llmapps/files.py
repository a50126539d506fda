"""The files a command reads and writes: one-line errors in, inputs never clobbered out.

``read_text`` reads a user's text file as UTF-8 (a BOM dropped) and turns every way it can fail
(missing, a folder, latin-1, UTF-16) into one ``InputError`` naming the file and the fix.

``check_output`` is the one check every command that writes ``--out`` runs before it writes: the
path is the right kind (a file where a file is written, a folder where a folder is), and neither
it nor any file it writes is one of the command's inputs (compared by resolved path and by inode,
so a symlink or a hard link to an input is caught too), nor sits inside an input folder (it would
be read back as an input on the next run). ``writing`` adds the lock every writer takes (the
runner's ``.NAME.lock`` beside the output, naming the holder's PID), so a second command on the
same ``--out`` is refused in one line instead of interleaving rows. The writes themselves go
through ``llmapps.jsonl.atomic_write`` (a temp file and a rename) or ``llmapps.folders``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from llmapps.errors import InputError
from llmapps.locks import exclusive_lock, lock_path

PathLike = Path | str


def read_text(path: PathLike, *, what: str = "input") -> str:
    """The text of ``path``, decoded as UTF-8 (a leading BOM dropped).

    Raises:
        InputError: ``path`` is missing, a folder, or not UTF-8 (UTF-16 and latin-1 are named).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; expected a text file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise InputError(f"{what} {path} does not exist") from err
    except OSError as err:
        raise InputError(f"{what} {path} cannot be read ({err.strerror})") from err
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        looks = (
            "UTF-16"
            if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:64]
            else "another encoding (latin-1?)"
        )
        raise InputError(
            f"{what} {path} is not UTF-8 (byte {err.start}; it looks like {looks}); "
            "re-save it as UTF-8"
        ) from err


def _same(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file: the same resolved path, or the same inode (links)."""
    if a.resolve() == b.resolve():
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def _inside(child: Path, folder: Path) -> bool:
    return child.resolve().is_relative_to(folder.resolve())


def check_output(
    out: PathLike,
    inputs: Iterable[PathLike | None] = (),
    *,
    kind: Literal["file", "folder"] = "file",
    writes: Iterable[PathLike] | None = None,
    flag: str = "--out",
) -> Path:
    """Refuse an output path that is the wrong kind of path or would overwrite an input.

    Args:
        out: the output path.
        inputs: every file or folder the command reads (``None`` and URLs are skipped).
        kind: ``"file"`` when ``out`` is a file written whole, ``"folder"`` when it is a folder.
        writes: the files written inside a ``"folder"`` output; None: the command may write
            anything in it, so no input may lie inside it.
        flag: the option's name, for the message.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        InputError: one line naming ``out``, the input it would overwrite, and what to do.
    """
    out = Path(out)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(
                    f"{flag} {out}: {parent} is a file, not a folder; give a path in a folder"
                )
            break
    if kind == "file" and out.is_dir():
        raise InputError(f"{flag} {out} is a folder; give a file path to write")
    if kind == "folder" and out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out} is a file; give a folder to write into")
    targets = [out] if writes is None or kind == "file" else [out / w for w in writes]
    whole_folder = kind == "folder" and writes is None
    for item in inputs:
        if item is None or "://" in str(item):
            continue
        src = Path(item)
        if not src.exists():
            continue
        for target in targets:
            if _same(target, src) if target.exists() else target.resolve() == src.resolve():
                raise InputError(
                    f"{flag} {out} would overwrite the input {src}; write to another path"
                )
            if whole_folder and _inside(src, target):
                raise InputError(
                    f"{flag} {out} would overwrite the input {src} inside it; write to another "
                    "folder"
                )
            if src.is_dir() and _inside(target, src):
                raise InputError(
                    f"{flag} {out} is inside the input folder {src}, so it would be read back "
                    "as an input; write it elsewhere"
                )
    return out


@contextlib.contextmanager
def writing(
    out: PathLike,
    inputs: Iterable[PathLike | None] = (),
    *,
    kind: Literal["file", "folder"] = "file",
    writes: Iterable[PathLike] | None = None,
    flag: str = "--out",
) -> Iterator[Path]:
    """``check_output``, then hold the output's lock (``.NAME.lock`` beside it) for the block.

    Raises:
        InputError: as ``check_output``, or another process holds the lock (its PID named).
    """
    out = check_output(out, inputs, kind=kind, writes=writes, flag=flag)
    what = f"{flag} {out}"
    with exclusive_lock(lock_path(out), what):
        yield out
