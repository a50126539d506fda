"""boutique: the shop assistant of Lisa's Boutique, a chat with memory over a catalog, on any strategy.

    from llmapps import load_chain
    chat = load_chain("boutique", strategy="zero-shot")
    cfg = {"configurable": {"session_id": "alice"}}
    chat.invoke("How much is the white linen shirt?", config=cfg)   # -> {"answer", "citations", ...}
    chat.invoke("And in blue?", config=cfg)                          # the shirt comes from memory

Each turn: the question (with the conversation, for follow-ups such as "and in blue?") is resolved
to catalog items by deterministic code (``boutique_guard.Catalog.resolve``), the items and the
``k`` best catalog/policy documents of a FAISS index (built with ``llmapps.retrieval``) become the
numbered sources, the strategy answers, and the guard checks every price, size, stock and policy
claim against the catalog before the answer is returned. Something not in the catalog gets a plain
"not in our catalog" whatever the model wrote.

Memory: a LangGraph graph with a SQLite checkpointer (``langgraph-checkpoint-sqlite``), one thread
per ``session_id``. We chose it over ``RunnableWithMessageHistory`` because LangChain 1.x points
memory to LangGraph persistence, and the SQL chat history that ``RunnableWithMessageHistory``
would need lives in ``langchain-community``, which is being sunset; the checkpointer is maintained
with LangGraph itself and also gives ``delete_thread`` for ``/reset``. Without a ``session_id``
the chain is stateless and takes the history in the input (``{"question", "history"}``, as OpenAI
clients send it), so ``batch`` runs one real batched generation.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnablePassthrough
from pydantic import Field

from chains import boutique_data as data
from chains.boutique_guard import Catalog, Resolution
from chains.boutique_memory import history_error, session_lock
from chains.boutique_metrics import METRICS, score
from llmapps.api.strategies import Strategy
from llmapps.errors import InputError
from llmapps.files import read_text
from llmapps.models.batching import BatchCall, OneBatch
from llmapps.options import AppOptions

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 2000  # a shop question; longer is refused before anything is stored
HISTORY_TURNS = 3  # question/answer pairs of the conversation shown to the model
_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CITE_RE = re.compile(r"\b(LB-\d{3}|P-[A-Z]+)\b")
NO_ANSWER = (
    "Sorry, I cannot answer that from our catalog. Ask me about an item, its price, sizes or "
    "stock, or about our opening hours, returns, shipping and payment."
)


@lru_cache(maxsize=1)
def shop() -> Catalog:
    """The bundled catalog and policies, indexed for resolution and the guard."""
    return Catalog(data.catalog(), data.policies())


# ---------------------------------------------------------------- input checks


def check_session_id(session_id: Any) -> str:
    """A session id safe as a database key and a file-name part, or ``InputError``."""
    if not isinstance(session_id, str) or not _SESSION_RE.match(session_id):
        raise InputError(
            f"session id {str(session_id)[:80]!r} is not allowed: use 1-64 letters, digits, '-', '_' "
            "or '.', starting with a letter or digit (no slashes or other path characters)"
        )
    return session_id


def check_message(message: Any) -> str:
    """The customer's message, whitespace-normalised, or ``InputError`` (empty or too long)."""
    if not isinstance(message, str):
        raise InputError(f"the message must be text, got {type(message).__name__}")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InputError(
            f"the message has {len(message):,} characters; the shop assistant takes at most "
            f"{MAX_MESSAGE_CHARS:,}: ask a shorter question"
        )
    text = data.clean_text(message)
    if not text:
        raise InputError("the message is empty: type a question about the shop")
    return text


def _as_turns(history: Any) -> list[dict[str, Any]]:
    """History as ``[{"role": "user"|"assistant", "content"}]`` from dicts, messages or pairs."""
    from langchain_core.messages import BaseMessage

    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise InputError("'history' must be a list of {'role', 'content'} messages")
    out = []
    for n, msg in enumerate(history):
        items: Any = None
        if isinstance(msg, BaseMessage):
            role, content = {"human": "user", "ai": "assistant"}.get(msg.type, msg.type), msg.text
            items = msg.additional_kwargs.get("items")
        elif isinstance(msg, dict):
            role, content, items = (
                str(msg.get("role", "")),
                msg.get("content", ""),
                msg.get("items"),
            )
        elif isinstance(msg, (list, tuple)) and len(msg) == 2:
            role, content = str(msg[0]), msg[1]
        else:
            raise InputError(f"history[{n}] is not a message: give {{'role', 'content'}} objects")
        role = {"human": "user", "ai": "assistant"}.get(role, role)
        if role in ("user", "assistant") and isinstance(content, str) and content.strip():
            turn: dict[str, Any] = {
                "role": role,
                "content": data.clean_text(content)[:MAX_MESSAGE_CHARS],
            }
            if isinstance(items, list) and all(isinstance(i, str) for i in items):
                turn["items"] = (
                    items  # what the turn was resolved to: memory even when the reply names nothing
                )
            out.append(turn)
    return out


def history_text(history: Sequence[dict[str, str]], turns: int = HISTORY_TURNS) -> str:
    """The last ``turns`` question/answer pairs as ``Customer: ...`` / ``Assistant: ...`` lines."""
    recent = list(history)[-2 * turns :]
    if not recent:
        return "(start of the conversation)"
    who = {"user": "Customer", "assistant": "Assistant"}
    return "\n".join(f"{who[m['role']]}: {m['content']}" for m in recent)


# ---------------------------------------------------------------- retrieval


def documents() -> list[Any]:
    """One LangChain ``Document`` per catalog item and per policy section."""
    from langchain_core.documents import Document

    cat = shop()
    docs = [
        Document(
            page_content=cat.describe(i),
            id=i["id"],
            metadata={"doc_id": i["id"], "title": f"{i['name']}, {i['color']}", "kind": "item"},
        )
        for i in cat.items
    ]
    docs += [
        Document(
            page_content=f"[{p['id']}] {p['title']}: {p['text']}",
            id=p["id"],
            metadata={"doc_id": p["id"], "title": p["title"], "kind": "policy"},
        )
        for p in cat.policies
    ]
    return docs


def _fingerprint() -> str:
    import hashlib

    return hashlib.sha256("\n".join(d.page_content for d in documents()).encode()).hexdigest()[:12]


def open_index(index: str | Path | Any | None = None) -> Any:
    """A ``FaissVectorStore`` from a store, a folder, or (None) the bundled catalog, built once
    under ``$LLMAPPS_HOME/indexes/boutique-<content hash>`` (a changed catalog gets a new one)."""
    from llmapps.retrieval.vectorstore import open_store
    from llmapps.settings import get_settings

    path = get_settings().home / "indexes" / f"boutique-{_fingerprint()}"
    return open_store(index, path, documents, what="the boutique catalog")


def gather_sources(store: Any, question: str, res: Resolution, k: int) -> list[str]:
    """Source ids: the resolved items first, then the ``k`` best documents for the question."""
    query = question
    if res.from_history and res.product:
        query = f"{question} {res.color or ''} {res.product}".strip()
    ids = [i["id"] for i in res.items[:6]] + [i["id"] for i in res.alternatives[:4]]
    for doc in store.similarity_search(query, k=k):
        doc_id = str(doc.metadata.get("doc_id") or doc.id)
        if doc_id not in ids:
            ids.append(doc_id)
    return ids


def format_sources(ids: Sequence[str]) -> str:
    cat = shop()
    lines = []
    for i in ids:
        if i in cat.by_id:
            lines.append(cat.describe(cat.by_id[i]))
        elif i in cat.policy_by_id:
            p = cat.policy_by_id[i]
            lines.append(f"[{i}] {p['title']}: {p['text']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- worked examples (few-shot, LoRA)


def examples(
    split: str = "train", rows: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Cleaned dialogue turns (of ``rows``, else the bundled ``split``) formatted as the prompt's
    variables (``sources``, ``history``, ``question``) plus the gold ``answer``.

    The sources are the turn's annotated items and the items it resolves to: deterministic, so
    the training data does not depend on the embedding model.
    """
    out = []
    for t in data.turns_with_history(split, rows):
        res = shop().resolve(t["question"], t["history"])
        ids = list(
            dict.fromkeys(
                [
                    *t["items"],
                    *(i["id"] for i in res.items[:3]),
                    *(i["id"] for i in res.alternatives[:3]),
                ]
            )
        )
        out.append(
            {
                "id": t["id"],
                "question": t["question"],
                "history": history_text(t["history"]),
                "sources": format_sources(ids) or "(nothing in the catalog matches)",
                "answer": t["answer"],
            }
        )
    return out


# ---------------------------------------------------------------- the chain


def _to_text(raw: Any) -> str:
    from langchain_core.messages import BaseMessage

    if isinstance(raw, BaseMessage):
        return raw.text if not isinstance(raw.content, str) else raw.content
    return str(raw)


def finish(x: dict[str, Any]) -> dict[str, Any]:
    """Guard the model's answer and cite the items it names."""
    cat = shop()
    raw = _to_text(x["_raw"]).strip()
    lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
    first = re.sub(r"^(?:\[?assistant\]?|shop)\s*:\s*", "", lines[0], flags=re.I) if lines else ""
    res: Resolution = x["_res"]
    answer, report = cat.guard(first, res)
    errors = []
    # about an item, yet it names none and no claim of it was checked: not an answer (e.g. "TheThe")
    off_topic = (
        bool(res.items) and not res.missing and not cat.items_in(answer) and not report["checked"]
    )
    if (
        not answer.strip() or off_topic
    ):  # nothing usable from the model: the catalog's own lines, else a plain no
        errors = [
            "answer names none of the items asked about"
            if off_topic and answer.strip()
            else "answer withheld by the guard"
            if first
            else "empty answer"
        ]
        facts = [cat.fact_sentence(i, res.size) for i in res.items[:2]]
        top = x["_ids"][0] if x["_ids"] else None
        if facts:
            answer = "From our catalog: " + " ".join(facts)
        elif top in cat.policy_by_id:
            answer = f"From our policies: {cat.policy_by_id[top]['text']} [{top}]"
        else:
            answer = NO_ANSWER
    cited = [
        i
        for i in dict.fromkeys(_CITE_RE.findall(answer))
        if i in cat.by_id or i in cat.policy_by_id
    ]
    for sentence in re.split(r"(?<=[.!?;])\s+", answer):
        named = cat.items_in(sentence)
        if 0 < len(named) <= 2:
            cited += [i["id"] for i in named if i["id"] not in cited]
    citations = [
        {
            "id": i,
            "title": f"{cat.by_id[i]['name']}, {cat.by_id[i]['color']}",
            "price": cat.by_id[i]["price"],
        }
        if i in cat.by_id
        else {"id": i, "title": cat.policy_by_id[i]["title"]}
        for i in cited
    ]
    return {
        "answer": answer,
        "citations": citations,
        "sources": x["_ids"],
        "resolution": res.as_dict(),
        "guard": report,
        "in_catalog": res.missing is None,
        "valid": not errors,
        "errors": errors,
        "raw": raw,
        "question": x["question"],
    }


def _stateless(strategy: Strategy, store: Any, k: int) -> Runnable[Any, dict[str, Any]]:
    from prompts import load_task

    task = load_task("boutique/answer", examples("train"))
    gen = strategy.build(task)

    def prepare(inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, str):
            inputs = {"question": inputs}
        if not isinstance(inputs, dict):
            raise InputError(
                f"the boutique chain takes a question or {{'question', 'history'}}, got {type(inputs).__name__}"
            )
        question = check_message(inputs.get("question", ""))
        history = _as_turns(inputs.get("history"))
        res = shop().resolve(question, history)
        ids = gather_sources(store, question, res, k)
        return {
            "question": question,
            "history": history_text(history),
            "sources": format_sources(ids),
            "_res": res,
            "_ids": ids,
        }

    pick = RunnableLambda[dict[str, Any], dict[str, Any]](
        lambda x: {"sources": x["sources"], "history": x["history"], "question": x["question"]}
    )
    return (
        RunnableLambda(prepare, name="resolve_and_retrieve")
        | RunnablePassthrough.assign(_raw=pick | gen)
        | RunnableLambda(finish, name="guard")
    )


class BoutiqueChat(OneBatch, Runnable[Any, dict[str, Any]]):
    """The shop assistant: stateless on ``{"question", "history"}``, or with memory per
    ``config={"configurable": {"session_id": ...}}`` kept in SQLite by a LangGraph checkpointer."""

    def __init__(
        self, stateless: Runnable[Any, dict[str, Any]], history_db: Path, name: str
    ) -> None:
        self.stateless = stateless
        self.history_db = Path(history_db)
        self.name = name
        self._graph: Any = None
        self._saver: Any = None
        self._lock = threading.Lock()

    # the graph and its database are opened on the first call that names a session
    def graph(self) -> Any:
        with self._lock:
            if self._graph is None:
                self._graph = self._compile()
            return self._graph

    @contextlib.contextmanager
    def _store(self, sid: str | None = None) -> Iterator[Any]:
        """The compiled graph, every SQLite fault one ``InputError`` naming the file; with ``sid``,
        held alone: one session's read-answer-write runs in one process and thread at a time, or
        two writers both extend the same old history and one's turns are lost."""
        try:
            if sid is None:
                yield self.graph()
                return
            with session_lock(self.history_db, sid):
                yield self.graph()
        except sqlite3.Error as err:
            raise history_error(self.history_db, err) from err

    def _compile(self) -> Any:
        from langchain_core.messages import AIMessage
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, START, MessagesState, StateGraph

        class State(MessagesState):
            result: dict[str, Any]

        stateless = self.stateless

        def answer(state: State, config: RunnableConfig) -> dict[str, Any]:
            msgs = state["messages"]
            out = stateless.invoke({"question": msgs[-1].text, "history": msgs[:-1]}, config)
            reply = AIMessage(
                out["answer"], additional_kwargs={"items": out["resolution"]["items"]}
            )
            return {"messages": [reply], "result": out}

        self.history_db.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.history_db), check_same_thread=False)
        saver = SqliteSaver(conn)
        saver.setup()  # reads the file now: a damaged one is refused before any turn is answered
        self._saver = saver
        g = StateGraph(State)
        g.add_node("answer", answer)
        g.add_edge(START, "answer")
        g.add_edge("answer", END)
        return g.compile(checkpointer=self._saver)

    @staticmethod
    def _session(config: RunnableConfig | None) -> str | None:
        sid = ((config or {}).get("configurable") or {}).get("session_id")
        return None if sid is None else check_session_id(sid)

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        sid = self._session(config)
        if sid is None:
            return self.stateless.invoke(input, config, **kwargs)
        from langchain_core.messages import HumanMessage

        if isinstance(input, dict):
            if input.get("history"):
                raise InputError(
                    "pass either a session_id (memory kept for you) or a 'history', not both"
                )
            input = input.get("question", "")
        question = check_message(
            input
        )  # before anything is stored: bad input leaves history intact
        cfg = {
            **(config or {}),
            "configurable": {**(config or {}).get("configurable", {}), "thread_id": sid},
        }
        with self._store(sid) as graph:
            state = graph.invoke({"messages": [HumanMessage(question)]}, cfg)
        return dict(state["result"])

    def _batch_once(self, call: BatchCall) -> list[Any]:
        if all(((c.get("configurable") or {}).get("session_id")) is None for c in call.configs):
            return self.stateless.batch(
                call.inputs,
                call.configs,
                return_exceptions=call.return_exceptions,
                **call.kwargs,
            )
        out: list[Any] = []
        for x, c in zip(
            call.inputs, call.configs, strict=True
        ):  # in order: a session's turns depend on each other
            try:
                out.append(self.invoke(x, c))
            except Exception as err:
                if not call.return_exceptions:
                    raise
                out.append(err)
        return out

    def history(self, session_id: str) -> list[dict[str, Any]]:
        """The session's messages, oldest first (empty for a new session)."""
        cfg = {"configurable": {"thread_id": check_session_id(session_id)}}
        with self._store() as graph:
            msgs = graph.get_state(cfg).values.get("messages", [])
        return _as_turns(msgs)

    def reset(self, session_id: str) -> None:
        """Forget a session's history."""
        sid = check_session_id(session_id)
        with self._store(sid):
            self._saver.delete_thread(sid)

    def sessions(self) -> list[str]:
        with self._store():
            return sorted({c.config["configurable"]["thread_id"] for c in self._saver.list(None)})


def default_history_db() -> Path:
    from llmapps.settings import get_settings

    return get_settings().home / "boutique" / "history.sqlite"


def build(
    strategy: Strategy,
    *,
    index: str | Path | Any | None = None,
    k: int = 4,
    history_db: str | Path | None = None,
) -> BoutiqueChat:
    """The boutique assistant on ``strategy``.

    Args:
        strategy: any registered strategy.
        index: an index folder or ``FaissVectorStore`` of catalog/policy documents (default: the
            bundled catalog, indexed once).
        k: documents retrieved per question, besides the items the question resolves to.
        history_db: SQLite file of the sessions' histories (default
            ``$LLMAPPS_HOME/boutique/history.sqlite``).
    """
    k = int(k)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    store = open_index(index)
    stateless = _stateless(strategy, store, k).with_config(run_name=f"boutique[{strategy.name}]")
    return BoutiqueChat(
        stateless,
        Path(history_db) if history_db else default_history_db(),
        name=f"boutique[{strategy.name}]",
    )


# ---------------------------------------------------------------- app hooks


def read_questions(path: Path) -> list[dict[str, Any]]:
    """Questions from a text file (one per line) or JSONL (``question``, optional ``history``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a file; pass a .txt file of questions or a .jsonl file")
    if path.suffix == ".jsonl":
        from llmapps.jsonl import read_jsonl

        def row(r: dict[str, Any]) -> dict[str, Any]:
            if not isinstance(r.get("question"), str) or not r["question"].strip():
                raise InputError("expected a non-empty 'question'")
            return r

        rows = read_jsonl(path, row, what="bad question")
        return [{"id": str(r.get("id") or f"q{n}"), **r} for n, r in enumerate(rows, 1)]
    lines = [ln.strip() for ln in read_text(path).splitlines()]
    return [{"id": f"q{n}", "question": ln} for n, ln in enumerate(lines, 1) if ln]


def chat_reply(chain: Runnable[Any, Any], messages: list[dict[str, str]]) -> str:
    """Answer an OpenAI-style message list: the last user message, the rest as history.

    System messages from the client are ignored: the shop's own prompt and guard decide.
    """
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        raise InputError("the last message must be the customer's (role 'user')")
    out = chain.invoke({"question": turns[-1]["content"], "history": turns[:-1]})
    return str(out["answer"])


class BoutiqueOptions(AppOptions):
    """What ``build`` accepts (``llmapps chat boutique -O k=6``)."""

    index: str | Path | Any | None = Field(
        None, description="index folder (default: the bundled catalog, indexed once)"
    )
    k: int = Field(4, ge=1, description="documents retrieved per question")
    history_db: str | Path | None = Field(
        None,
        description="SQLite file of chat histories (default $LLMAPPS_HOME/boutique/history.sqlite)",
    )


def _app() -> Any:
    from llmapps.apps import AppSpec, MetricFields

    return AppSpec(
        name="boutique",
        description="Lisa's Boutique shop assistant: chat with memory, answers from the catalog, fact-guarded",
        build=build,
        samples=data.samples,
        read_inputs=read_questions,
        input_keys=("question", "history"),
        reference_keys=("answer",),
        options=BoutiqueOptions,
        metric_fields=MetricFields(answer="answer"),
        score=score,
        metrics=METRICS,
        chat=chat_reply,
        training_examples=examples,
    )


APP = _app()
