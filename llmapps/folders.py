"""Atomic folder writes: one helper for every folder that must be complete or absent.

Models (tiny, converted GGUF), adapters, merged models and training checkpoints are written into
a staging folder beside their destination and renamed into place, so a crash at any point leaves
either the old folder or the new one, never half of either::

    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        (tmp / "manifest.json").write_text(...)   # write the manifest last
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_folder(final: Path | str, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; rename it to ``final`` when the block ends.

    Args:
        final: the folder to write.
        replace: replace an existing ``final`` (it is renamed aside first, then removed, so
            ``final`` is never missing a moment longer than two renames). With False an existing,
            non-empty ``final`` is an error (``FileExistsError``); an empty one is replaced.

    An exception inside the block removes the staging folder and leaves ``final`` untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not replace and final.exists() and any(final.iterdir()):
        raise FileExistsError(f"{final} exists and is not empty")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
