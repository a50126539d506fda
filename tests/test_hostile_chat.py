"""Hostile chat memory: concurrent writers to one boutique session, and damaged history files.

Two ``llmapps chat boutique --session shared`` processes of 6 questions each kept 8 of the 12
questions (issue 22, item 4): each read the same old history, answered, and wrote it back extended
by its own turn only. Now a session's read-answer-write holds a lock, so real processes (and
threads, each with its own connection) on one real SQLite file lose no turn. A garbage, truncated,
header-damaged history file, or a folder in its place, is one ``InputError`` naming the file (a
``sqlite3.DatabaseError`` traceback before). The model is a stand-in that answers after a short
delay (the window in which turns were lost); the LangGraph checkpointer and SQLite are real.
"""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda

from chains.boutique import BoutiqueChat
from chains.boutique_cli import run_chat
from llmapps.errors import InputError

QUESTIONS = 6


def _answer(inputs: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.05)  # a model at work: the moment another writer used to slip in
    return {"answer": f"answer to {inputs['question']}", "resolution": {"items": []}}


def _chat(db: Path) -> BoutiqueChat:
    return BoutiqueChat(RunnableLambda(_answer), db, name="boutique[stand-in]")


def _ask(db: Path, who: str, session: str = "shared") -> None:
    chat = _chat(db)
    for i in range(QUESTIONS):
        chat.invoke(f"question {who}-{i}", config={"configurable": {"session_id": session}})


_WORKER = """
import sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from test_hostile_chat import _ask
_ask(Path(sys.argv[1]), sys.argv[2])
"""


def _questions(db: Path, session: str = "shared") -> list[str]:
    return [t["content"] for t in _chat(db).history(session) if t["role"] == "user"]


def _expected(*who: str) -> list[str]:
    return sorted(f"question {w}-{i}" for w in who for i in range(QUESTIONS))


def test_two_processes_on_one_session_lose_no_turn(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(db), who, here], env=os.environ)
        for who in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    questions = _questions(db)
    assert sorted(questions) == _expected("a", "b"), questions
    for who in ("a", "b"):  # each process's own turns in the order it asked them
        mine = [q for q in questions if q.startswith(f"question {who}-")]
        assert mine == [f"question {who}-{i}" for i in range(QUESTIONS)]
    turns = _chat(db).history("shared")
    assert [t["role"] for t in turns] == ["user", "assistant"] * 2 * QUESTIONS
    pairs = zip(turns[::2], turns[1::2], strict=True)
    assert all(a["content"] == f"answer to {q['content']}" for q, a in pairs)


def test_threads_with_their_own_connections_lose_no_turn(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    threads = [threading.Thread(target=_ask, args=(db, who)) for who in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(_questions(db)) == _expected("a", "b", "c")


def test_one_instance_shared_by_threads_loses_no_turn(tmp_path: Path) -> None:
    chat = _chat(tmp_path / "history.sqlite")
    cfg = {"configurable": {"session_id": "shared"}}

    def ask(who: str) -> None:
        for i in range(QUESTIONS):
            chat.invoke(f"question {who}-{i}", config=cfg)

    threads = [threading.Thread(target=ask, args=(who,)) for who in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(_questions(tmp_path / "history.sqlite")) == _expected("a", "b")


def _damage(kind: str, db: Path) -> None:
    if kind == "folder":
        db.mkdir()
        return
    _ask(db, "x", session="s")  # a real history first
    gc.collect()  # its connection closes: the WAL is folded into the file, as when a process ends
    assert not db.with_name(db.name + "-wal").exists()
    data = db.read_bytes()
    if kind == "garbage":
        db.write_bytes(os.urandom(len(data)))
    elif kind == "truncated":
        db.write_bytes(data[: len(data) // 3])
    elif kind == "header damaged":
        db.write_bytes(b"\xff" * 100 + data[100:])
    elif kind == "text file":
        db.write_text("these are not the droids\n" * 50)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "header damaged", "text file", "folder"])
def test_a_damaged_history_file_is_one_line_naming_it(kind: str, tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    _damage(kind, db)
    cfg = {"configurable": {"session_id": "s"}}
    where = rf"the chat history {db} (is damaged|cannot be used).*move it aside"
    with pytest.raises(InputError, match=where) as caught:
        _chat(db).invoke("a question", config=cfg)
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match=where):
        _chat(db).history("s")
    out = io.StringIO()
    with pytest.raises(InputError, match=where):  # the CLI loop stops before the first question
        run_chat(_chat(db), "s", io.StringIO("a question\n"), out)
    assert "shop:" not in out.getvalue()
