"""news-qa: answer a question from retrieved news articles, with citations, on any strategy.

    from llmapps import load_chain
    chain = load_chain("news-qa", strategy="zero-shot", app_options={"index": "indexes/news"})
    chain.invoke({"question": "What happened with fuel prices?"})
    # -> {"answer", "citations": [{"n", "id", "title"}], "sources": [...], "valid", ...}

The question is embedded, the ``k`` best articles (one chunk each) are retrieved from a FAISS
index (``llmapps index build``) and numbered as sources; the strategy answers from them and the
``[n]`` markers in its answer become citations. Without an ``index`` option the bundled articles
are indexed once under ``$LLMAPPS_HOME/indexes/news-bundled``.

Worked examples (for ``few-shot``) come from the bundled hand-written data: the question asks
what happened with a riddle's answer ("What happened with fuel prices?"), the source is the
article and the reference answer its one-sentence summary, cited ``[1]``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from pydantic import Field

from chains import news_data
from chains.news_riddle import to_text
from llmapps.api.strategies import Strategy
from llmapps.errors import InputError
from llmapps.files import read_text
from llmapps.options import AppOptions
from prompts import load_task

log = logging.getLogger(__name__)

_CITE_RE = re.compile(r"\[(\d{1,2})\]")
EXAMPLE_WORDS = (
    60  # worked examples quote the start of their article, to leave room for the real sources
)


def question_for(topic: str) -> str:
    return f"What happened with {topic.strip().rstrip('.?')}?"


def format_source(n: int, title: str, doc_id: str, text: str, date: str = "") -> str:
    when = f", {date}" if date else ""
    body = text[len(title) :].strip() if title and text.startswith(title) else text.strip()
    return f"[{n}] {title} ({doc_id}{when}): {' '.join(body.split())}"


def examples(split: str = "train") -> list[dict[str, Any]]:
    """Worked question/sources/answer examples derived from the bundled riddles of ``split``."""
    out = []
    for ex in news_data.examples(split):
        text = " ".join(ex["text"].split()[:EXAMPLE_WORDS])
        out.append(
            {
                "id": ex["id"],
                "question": question_for(ex["answer"]),
                "sources": format_source(1, ex["title"], ex["id"], text, ex.get("date", "")),
                "answer": f"{ex['summary']} [1]",
            }
        )
    return out


def samples(split: str = "test") -> list[dict[str, Any]]:
    """Bundled questions of ``split`` with a reference answer and the article that answers them."""
    return [
        {
            "id": f"q-{ex['id']}",
            "question": question_for(ex["answer"]),
            "reference_answer": ex["summary"],
            "reference_ids": [ex["id"]],
        }
        for ex in news_data.examples(split)
    ]


def read_questions(path: Path) -> list[dict[str, Any]]:
    """Questions from a JSONL file (``question`` field) or a text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path} is not a file; pass a .jsonl file with 'question' fields or a .txt file"
        )
    if path.suffix == ".jsonl":  # the project's one JSONL reader: every bad line named at once
        from llmapps.jsonl import parse_jsonl

        parsed, problems = parse_jsonl(path.read_bytes(), str(path))
        problems += [
            f"{path}:{n}: expected an object with a non-empty 'question'"
            for n, row in parsed
            if not str(row.get("question", "")).strip()
        ]
        if problems:
            raise InputError("; ".join(problems[:20]))
        return [{"id": str(row.get("id") or f"q{n}"), **row} for n, row in parsed]
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            rows.append({"id": f"q{n}", "question": line.strip()})
    return rows


def bundled_index_path() -> Path:
    from llmapps.settings import get_settings

    return get_settings().home / "indexes" / "news-bundled"


def open_index(index: str | Path | Any | None) -> Any:
    """A ``FaissVectorStore`` from a store, a folder, or (None) the bundled articles, built once."""
    from llmapps.retrieval.loaders import load_documents
    from llmapps.retrieval.vectorstore import open_store

    return open_store(
        index,
        bundled_index_path(),
        lambda: load_documents(news_data.data_dir() / "articles.jsonl"),
        what="the bundled articles",
    )


def retrieve(store: Any, question: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` best articles for ``question``: the best chunk of each, numbered from 1."""
    hits = store.similarity_search_with_score(question, k=max(k * 4, k))
    seen: dict[str, dict[str, Any]] = {}
    for doc, score in hits:
        doc_id = str(doc.metadata.get("doc_id") or doc.id)
        if doc_id not in seen:
            seen[doc_id] = {
                "id": doc_id,
                "chunk_id": doc.id,
                "title": str(doc.metadata.get("title", "")),
                "date": str(doc.metadata.get("date", "")),
                "score": round(float(score), 4),
                "text": doc.page_content,
            }
        if len(seen) == k:
            break
    return [{"n": n, **s} for n, s in enumerate(seen.values(), 1)]


def parse_answer(raw: Any, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer text and the sources it cites (``[n]`` markers or document ids); never raises."""
    text = to_text(raw).strip()
    answer = " ".join(text.split("\n\n")[0].split())
    by_n = {s["n"]: s for s in sources}
    cited_ns = [int(m) for m in _CITE_RE.findall(answer) if int(m) in by_n]
    cited_ns += [s["n"] for s in sources if s["id"] in answer and s["n"] not in cited_ns]
    citations = [
        {"n": n, "id": by_n[n]["id"], "title": by_n[n]["title"]} for n in dict.fromkeys(cited_ns)
    ]
    errors = [] if answer else ["empty answer"]
    if answer and not citations:
        errors.append("no citation")
    return {
        "answer": answer,
        "citations": citations,
        "valid": not errors,
        "errors": errors,
        "raw": text,
    }


def build(
    strategy: Strategy, *, index: str | Path | Any | None = None, k: int = 4
) -> Runnable[Any, dict[str, Any]]:
    """The news-qa chain on ``strategy``: ``{"question"}`` in, answer with citations and sources out.

    Args:
        strategy: any registered strategy.
        index: an index folder, a ``FaissVectorStore``, or None for the bundled articles.
        k: articles retrieved per question.
    """
    k = int(k)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    store = open_index(index)
    task = load_task("news_qa/answer", examples())
    gen = strategy.build(task)

    def gather(inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, str):
            inputs = {"question": inputs}
        question = str(inputs.get("question", "")).strip() if isinstance(inputs, dict) else ""
        if not question:
            raise InputError("news-qa needs a non-empty 'question'")
        found = retrieve(store, question, k)
        if not found:
            raise InputError(
                f"the index at {store.path} returned nothing for {question!r}; is it empty?"
            )
        block = "\n".join(
            format_source(s["n"], s["title"], s["id"], s["text"], s["date"]) for s in found
        )
        return {**inputs, "question": question, "sources": block, "_found": found}

    def finish(x: dict[str, Any]) -> dict[str, Any]:
        found = x["_found"]
        out = parse_answer(x["_raw"], found)
        out["question"] = x["question"]
        out["sources"] = [{k_: s[k_] for k_ in ("n", "id", "title", "score")} for s in found]
        return out

    pick = RunnableLambda[dict[str, Any], dict[str, Any]](
        lambda x: {"question": x["question"], "sources": x["sources"]}
    )
    answer = pick | gen
    chain = (
        RunnableLambda(gather, name="retrieve")
        | RunnablePassthrough.assign(_raw=answer)
        | RunnableLambda(finish, name="cite")
    )
    return chain.with_config(run_name=f"news-qa[{strategy.name}]")


class NewsQaOptions(AppOptions):
    """What ``build`` accepts (``llmapps run news-qa -O index=indexes/news -O k=6``)."""

    index: str | Path | Any | None = Field(
        None, description="index folder (default: the bundled articles, indexed once)"
    )
    k: int = Field(4, ge=1, description="articles retrieved per question")


def _app() -> Any:
    from llmapps.apps import AppSpec, MetricFields

    return AppSpec(
        name="news-qa",
        description="question -> answer from retrieved news articles, with citations",
        build=build,
        samples=samples,
        read_inputs=read_questions,
        input_keys=("question",),
        reference_keys=("answer",),
        options=NewsQaOptions,
        metric_fields=MetricFields(answer="answer"),
    )


APP = _app()
