"""The news-qa app on real strategies (tiny models) over a real index, and few-shot example selection.

The index holds a handful of bundled articles embedded with the offline all-MiniLM-L6-v2; answers
come from the tiny models, so the tests check retrieval, citations and selection, not answer quality.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chains import news_qa
from llmapps.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from langchain_core.documents import Document

    from chains.news_data import examples
    from llmapps.retrieval.vectorstore import FaissVectorStore

    rows = examples("train")[:12]
    docs = [
        Document(
            page_content=f"{r['title']}\n{r['text']}",
            id=r["id"],
            metadata={"doc_id": r["id"], "title": r["title"], "date": r["date"]},
        )
        for r in rows
    ]
    path = tmp_path_factory.mktemp("qa") / "idx"
    FaissVectorStore.build(docs, path=path)
    return path


def test_examples_and_samples_come_from_the_bundled_riddles() -> None:
    ex = news_qa.examples("train")[0]
    assert ex["question"].startswith("What happened with ") and ex["answer"].endswith("[1]")
    assert ex["sources"].startswith("[1] ")
    s = news_qa.samples("test")[0]
    assert s["reference_ids"][0] in s["id"]


def test_retrieve_numbers_one_chunk_per_article(small_index: Path) -> None:
    from chains.news_data import examples
    from llmapps.retrieval.vectorstore import FaissVectorStore

    first = examples("train")[0]
    found = news_qa.retrieve(
        FaissVectorStore.load(small_index), news_qa.question_for(first["answer"]), 3
    )
    assert [s["n"] for s in found] == [1, 2, 3]
    assert found[0]["id"] == first["id"] and len({s["id"] for s in found}) == 3


def test_parse_answer_turns_markers_into_citations() -> None:
    sources = [{"n": 1, "id": "a1", "title": "One"}, {"n": 2, "id": "a2", "title": "Two"}]
    out = news_qa.parse_answer("Prices rose [2] and fell [1] [7].\n\nignored", sources)
    assert [c["id"] for c in out["citations"]] == ["a2", "a1"] and out["valid"]
    assert news_qa.parse_answer("No idea.", sources)["errors"] == ["no citation"]


@pytest.mark.parametrize("strategy", ["zero-shot", "few-shot"])
def test_news_qa_answers_with_sources_on_any_strategy(
    strategy: str, small_index: Path, tiny_base: str, tiny_instruct: str
) -> None:
    from llmapps.apps import load_chain

    opts = (
        {"instruct_model": tiny_instruct} if strategy == "zero-shot" else {"base_model": tiny_base}
    )
    chain = load_chain(
        "news-qa",
        strategy,
        app_options={"index": str(small_index), "k": 2},
        max_new_tokens=24,
        **opts,
    )
    out = chain.invoke({"question": "What happened with the mayoral recount?"})
    assert out["sources"][0]["id"] == "a001" and len(out["sources"]) == 2
    assert isinstance(out["answer"], str) and {"citations", "valid", "errors"} <= set(out)
    with pytest.raises(InputError, match="non-empty 'question'"):
        chain.invoke({"question": "  "})


def test_ask_cli_prints_answer_and_sources(
    small_index: Path, tiny_instruct: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    rc = main(
        [
            "ask",
            "What happened with the mayoral recount?",
            "--index",
            str(small_index),
            "--strategy",
            "zero-shot",
            "--instruct-model",
            tiny_instruct,
            "--max-new-tokens",
            "16",
            "-k",
            "2",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "sources:" in out and "(a001, score" in out


def test_ask_on_a_missing_index_says_how_to_build_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    assert (
        main(["ask", "anything?", "--index", str(tmp_path / "none"), "--strategy", "zero-shot"])
        == 2
    )
    assert "llmapps index build" in capsys.readouterr().err


def test_similarity_and_mmr_rankers(caplog: pytest.LogCaptureFixture) -> None:
    from llmapps.strategies.selection import make_ranker
    from prompts import load_task

    bank = news_qa.examples("train")[:10]
    task = load_task("news_qa/answer", bank)
    target = bank[3]
    # the same article quoted shorter: close to example 3 but not identical (identical text is excluded)
    probe = {"question": target["question"], "sources": " ".join(target["sources"].split()[:30])}
    with caplog.at_level(logging.DEBUG, logger="llmapps.strategies.selection"):
        order = make_ranker("similarity", task)(probe, bank)
    assert (
        sorted(order) == list(range(10)) and order[0] == 3
    )  # nothing excludes it: no id on the probe
    assert "few-shot similarity ranking" in caplog.text and bank[3]["id"] in caplog.text
    order = make_ranker("similarity", task)({**probe, "id": target["id"]}, bank)
    assert 3 not in order and len(order) == 9  # the input itself is never its own example
    assert 3 not in make_ranker("similarity", task)(dict(target), bank)  # nor is an identical text
    mmr = make_ranker("mmr", task)(probe, bank)
    assert sorted(mmr) == list(range(10)) and mmr[0] == 3
    with pytest.raises(ConfigError, match="unknown example selection 'nearest'"):
        make_ranker("nearest", task)


def test_few_shot_packs_similar_examples_first(tiny_base: str, test_articles: list[dict]) -> None:
    from chains import news_data
    from llmapps.strategies.base import make_strategy
    from prompts import load_task

    strat = make_strategy(
        "few-shot", base_model=tiny_base, example_selection="similarity", max_new_tokens=8
    )
    bank = news_data.examples("train")
    task = load_task("news_riddle/one_step", bank)
    strat.build(task)
    selector = strat.selectors[task.name]
    article = test_articles[0]
    # a short input leaves the tiny model's context room for several worked examples
    probe = {
        "title": article["title"],
        "text": " ".join(article["text"].split()[:40]),
        "id": article["id"],
    }
    chosen = selector.select_examples(probe)
    order = strat.ranker(task)(probe, bank)
    positions = [order.index(i) for i in selector.last_selection]
    assert chosen and positions == sorted(positions)  # packed in ranking order, most similar first
