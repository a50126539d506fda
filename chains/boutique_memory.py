"""The boutique chat's memory file: one writer per session, and one line for a damaged file.

LangGraph's SQLite checkpointer reads a session's last state, runs the graph (the model answers)
and writes the state extended by that turn; two writers of one session (two ``llmapps chat
--session shared`` processes, or threads) would both extend the same old state, and one's turns
would be lost. ``session_lock`` makes that read-answer-write one writer's at a time (the other
waits); ``history_error`` is the one-line error for a file SQLite cannot use.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from llmapps.errors import InputError
from llmapps.locks import exclusive_lock

SESSION_WAIT_S = 600.0  # how long a turn waits for another process answering in its session


@contextlib.contextmanager
def session_lock(history_db: Path, sid: str) -> Iterator[None]:
    """Hold the session ``sid`` of ``history_db`` alone for the block (waits for another holder;
    ``InputError`` naming it after ``SESSION_WAIT_S``). A lock file per session, beside the file:
    ``.history.sqlite.SID.lock`` (session ids are safe file-name parts)."""
    lock = history_db.parent / f".{history_db.name}.{sid}.lock"
    deadline = time.monotonic() + SESSION_WAIT_S
    held = contextlib.ExitStack()
    while True:
        try:
            held.enter_context(exclusive_lock(lock, f"session {sid!r} of {history_db}"))
            break
        except InputError:  # another process (or thread) is answering in this session
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with held:
        yield


def history_error(history_db: Path, err: sqlite3.Error) -> InputError:
    """One line naming the history file, for a store SQLite cannot use."""
    if isinstance(err, sqlite3.OperationalError):  # a folder, no access, locked too long
        what = f"cannot be used ({err})"
    else:
        what = f"is damaged or not a history database ({err})"
    return InputError(
        f"the chat history {history_db} {what}; move it aside (or delete it) to start with "
        "empty histories, or pass another --history-db"
    )
