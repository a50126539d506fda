"""One writer at a time: an exclusive lock file holding the writer's PID.

``exclusive_lock(lock_path, what)`` takes an OS lock (``flock``) on ``lock_path`` without waiting;
a second writer gets one clear error naming the holder's PID instead of silently interleaving
rows or overwriting an index the first one is extending. The OS drops the lock when its process
ends, however it ends, so a crash never leaves a stale lock behind (the file stays, empty).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from llmapps.errors import InputError, LlmappsError


def lock_path(out: Path | str) -> Path:
    """The lock file of an output (a results file or a folder): ``.NAME.lock`` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


@contextlib.contextmanager
def exclusive_lock(
    lock_path: Path | str, what: str, *, error: type[LlmappsError] = InputError
) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_path`` for the block, or raise ``error`` at once.

    Args:
        lock_path: the lock file (created; its folder too).
        what: the thing being written, for the message (e.g. the output file).
        error: the error class raised when another process holds the lock.
    """
    lock = Path(lock_path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise error(
                f"{what} is being written by another process (PID {holder}, lock {lock}); wait "
                "for it to finish and run again (the lock is released when that process ends)"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)  # the file stays: unlinking it would let two writers race
    finally:
        os.close(fd)  # closing the descriptor releases the lock
