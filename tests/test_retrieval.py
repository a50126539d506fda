"""The FAISS index, its persistence and checks, the embedding cache, loaders, CLI and LlamaIndex adapter.

Real parts throughout: the offline all-MiniLM-L6-v2, real FAISS indexes written to and read from
disk, LlamaIndex's reader and sentence splitter. Vector-level tests use random unit vectors.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document

from llmapps.errors import InputError, RetrievalError
from llmapps.retrieval.embeddings import MINILM, CachedEmbeddings, SentenceTransformerEmbeddings
from llmapps.retrieval.loaders import load_documents
from llmapps.retrieval.store import IndexParams, VectorIndex
from llmapps.retrieval.vectorstore import FaissVectorStore

ROWS = [
    {
        "id": "n1",
        "title": "Fuel prices climb",
        "text": "Petrol and diesel prices rose ten cents a litre after a refinery fire.",
    },
    {
        "id": "n2",
        "title": "Cup final",
        "text": "A late header gave the visitors a two-one win in the cup final.",
    },
    {
        "id": "n3",
        "title": "Comet spotted",
        "text": "An amateur astronomer found a comet that may be visible next month.",
    },
    {
        "id": "n4",
        "title": "Flood warning",
        "text": "Heavy rain flooded three villages and closed the coast road.",
    },
    {"id": "n5", "title": "Empty", "text": "   "},
]


@lru_cache(maxsize=1)
def _model() -> SentenceTransformerEmbeddings:
    return SentenceTransformerEmbeddings(MINILM, batch_size=32, device="cpu")


def cached(cache_dir: Path) -> CachedEmbeddings:
    return CachedEmbeddings(_model(), MINILM, cache_dir=cache_dir)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "news.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (folder / "more.csv").write_text(
        "id,title,text\nc1,Bakery merger,Two bakery chains agreed to merge into one group.\n"
    )
    (folder / "note.md").write_text(
        "# Glacier retreat\nThe glacier lost forty metres of ice this summer.\n"
    )
    (folder / "sub" / "page.html").write_text(
        "<html><head><title>Rail strike</title></head><body><article><p>Train drivers walked out on Monday, "
        "cancelling most services across the region for the whole day.</p></article></body></html>"
    )
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    return folder


def random_unit(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ------------------------------------------------------------------ loaders
def test_loader_reads_every_format_and_names_empty_documents(
    corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        docs = load_documents(corpus)
    ids = sorted(d.id for d in docs)
    assert ids == ["c1", "n1", "n2", "n3", "n4", "note.md", "sub/page.html"]
    assert "n5" in caplog.text and "empty" in caplog.text
    page = next(d for d in docs if d.id == "sub/page.html")
    assert page.metadata["title"] == "Rail strike" and "Train drivers" in page.page_content
    assert next(d for d in docs if d.id == "note.md").metadata["title"] == "Glacier retreat"


def test_loader_splits_long_documents_with_the_model_tokenizer(tmp_path: Path) -> None:
    long = " ".join(
        f"Sentence number {i} talks about the harbour and its boats." for i in range(60)
    )
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"id": "L", "title": "Harbour", "text": long}) + "\n")
    docs = load_documents(f, chunk_tokens=64, chunk_overlap=8)
    assert len(docs) > 3
    assert [d.id for d in docs[:2]] == ["L#0", "L#1"]
    assert all(d.metadata["doc_id"] == "L" and d.page_content.startswith("Harbour\n") for d in docs)


def test_loader_errors_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_documents(tmp_path / "nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "title": "t", "text": "ok"}\nnot json\n{"title": "no text"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        load_documents(bad)
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(InputError, match="unsupported file type"):
        load_documents(tmp_path / "x.pdf")


# ------------------------------------------------------------------ store with the real model
def test_build_save_load_search_and_cache(corpus: Path, tmp_path: Path) -> None:
    emb = cached(tmp_path / "cache")
    docs = load_documents(corpus)
    store = FaissVectorStore(emb, path=tmp_path / "idx")
    store.add_documents(docs, skip_duplicates=True)
    store.save()
    assert emb.stats["misses"] == len(docs)

    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["embedding_model"] == MINILM and manifest["dimension"] == 384
    assert manifest["count"] == len(docs) and manifest["normalized"] is True
    assert all(len(h) == 64 for h in manifest["files"].values())

    again = cached(tmp_path / "cache")  # a fresh process would see the same on-disk cache
    loaded = FaissVectorStore.load(tmp_path / "idx", again)
    top = loaded.similarity_search_with_score("how much does petrol cost now?", k=2)
    assert top[0][0].id == "n1" and top[0][1] > top[1][1]
    assert loaded.as_retriever(k=1).invoke("heavy rain and floods")[0].id == "n4"

    rebuilt = FaissVectorStore(again)
    rebuilt.add_documents(docs)
    assert (
        again.stats["misses"] == 2
    )  # only the two queries above; every document came from the cache


def test_add_skips_duplicates_by_content(corpus: Path, tmp_path: Path) -> None:
    store = FaissVectorStore(cached(tmp_path / "cache"))
    docs = load_documents(corpus)
    store.add_documents(docs, skip_duplicates=True)
    copy = [Document(page_content=docs[0].page_content, metadata={}, id="other-id")]
    assert store.add_documents(copy, skip_duplicates=True) == []
    assert store.last_skipped == ["other-id"]
    assert len(store) == len(docs)


def test_wrong_model_and_missing_index_are_clear_errors(corpus: Path, tmp_path: Path) -> None:
    store = FaissVectorStore(cached(tmp_path / "cache"))
    store.add_documents(load_documents(corpus))
    store.save(tmp_path / "idx")
    with pytest.raises(
        RetrievalError,
        match=r"built with embedding model 'sentence-transformers/all-MiniLM-L6-v2'.*'other/model'",
    ):
        VectorIndex.load(tmp_path / "idx", expected_model="other/model")
    with pytest.raises(RetrievalError, match=r"no index at .*llmapps index build"):
        FaissVectorStore.load(tmp_path / "missing")
    empty = FaissVectorStore(cached(tmp_path / "cache"), path=tmp_path / "e")
    with pytest.raises(RetrievalError, match="is empty; build one with: llmapps index build"):
        empty.require_documents()


# ------------------------------------------------------------------ vector-level index
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_delete_by_id_survives_save_and_load(kind: str, tmp_path: Path) -> None:
    vecs = random_unit(400)
    idx = VectorIndex(32, "test-model", IndexParams(kind=kind, ivf_nlist=8))
    ids = [f"d{i}" for i in range(400)]
    idx.add(ids, [f"text {i}" for i in range(400)], vecs)
    assert idx.delete(["d0", "d1", "missing"]) == 2
    idx.save(tmp_path / kind)
    back = VectorIndex.load(tmp_path / kind, expected_model="test-model")
    assert len(back) == back.ntotal == 398 and back.params.kind == kind
    hits = back.search(vecs[[5]], 3)[0]
    assert hits[0][0].id == "d5" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert all(r.id not in ("d0", "d1") for r, _ in back.search(vecs[[0, 1]], 5)[0])
    assert back.recall_at_k(10, n_queries=50) >= (1.0 if kind == "flat" else 0.8)


def test_tune_ef_search_reaches_the_requested_recall_and_is_saved(tmp_path: Path) -> None:
    idx = VectorIndex(32, "m", IndexParams(kind="hnsw", hnsw_m=8, hnsw_ef_construction=16))
    idx.add([f"d{i}" for i in range(2000)], [""] * 2000, random_unit(2000))
    for target in (0.5, 0.95):
        reached = idx.tune_ef_search(target, k=10)
        ef = idx.params.hnsw_ef_search
        assert reached >= target and 16 <= ef <= 1024
        assert idx.recall_at_k(10) == reached  # the chosen efSearch is the one searches use
        if ef > 16:  # and it is the smallest power of two that reaches the target
            idx.params.hnsw_ef_search = ef // 2
            idx._apply_search_params()
            assert idx.recall_at_k(10) < target
            idx.params.hnsw_ef_search = ef
            idx._apply_search_params()
    idx.save(tmp_path / "h")
    assert VectorIndex.load(tmp_path / "h").params.hnsw_ef_search == idx.params.hnsw_ef_search
    with pytest.raises(RetrievalError, match="target_recall must be in"):
        idx.tune_ef_search(1.5)
    with pytest.raises(RetrievalError, match="efSearch applies to hnsw"):
        VectorIndex(32, "m").tune_ef_search()


def test_upsert_replaces_and_saves_are_atomic_generations(tmp_path: Path) -> None:
    idx = VectorIndex(32, "m")
    idx.add(["a", "b"], ["A", "B"], random_unit(2))
    idx.save(tmp_path / "i")
    idx.add(["a"], ["A2"], random_unit(1, seed=3))
    idx.save()
    files = sorted(p.name for p in (tmp_path / "i").iterdir())
    assert files == ["docstore-2.jsonl", "index-2.faiss", "manifest.json"]
    back = VectorIndex.load(tmp_path / "i")
    assert len(back) == 2 and back.get(["a"])[0].text == "A2"


def test_corruption_and_dimension_mismatch_are_detected(tmp_path: Path) -> None:
    idx = VectorIndex(32, "m")
    idx.add(["a"], ["A"], random_unit(1))
    with pytest.raises(
        RetrievalError, match=r"shape \(1, 16\) do not fit this index of dimension 32"
    ):
        idx.add(["b"], ["B"], random_unit(1, d=16))
    folder = idx.save(tmp_path / "i")
    doc = next(folder.glob("docstore-*.jsonl"))
    doc.write_text(doc.read_text().replace('"A"', '"X"'))
    with pytest.raises(RetrievalError, match=r"is corrupted .*SHA-256"):
        VectorIndex.load(folder)
    idx.save(folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["dimension"] = 64
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RetrievalError, match=r"manifest\.json was changed after it was written"):
        VectorIndex.load(folder)
    from llmapps.jsonl import json_checksum

    m["checksum"] = json_checksum(m)  # an edit that also fixes the checksum
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RetrievalError, match="dimension 32 but the manifest says 64"):
        VectorIndex.load(folder)
    (folder / "manifest.json").write_text("{oops")
    with pytest.raises(RetrievalError, match=r"manifest.json is corrupted"):
        VectorIndex.load(folder)


# ------------------------------------------------------------------ CLI and LlamaIndex
def test_cli_build_add_info_search_delete(
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llmapps.cli import main

    monkeypatch.setenv("LLMAPPS_RETRIEVAL__CACHE_DIR", str(tmp_path / "cache"))
    out = str(tmp_path / "idx")
    assert main(["index", "build", "--input", str(corpus / "news.jsonl"), "--out", out, "-q"]) == 0
    assert main(["index", "build", "--input", str(corpus / "news.jsonl"), "--out", out]) == 2
    assert "already holds an index" in capsys.readouterr().err
    assert main(["index", "add", "--index", out, "--input", str(corpus), "-q"]) == 0
    assert "added 3 chunks" in capsys.readouterr().err  # the 4 JSONL rows were already there
    assert main(["index", "info", "--index", out, "--check"]) == 0
    info = capsys.readouterr().out
    assert "all-MiniLM-L6-v2" in info and "recall@10" in info
    assert main(["index", "search", "petrol prices", "--index", out, "-k", "2", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["id"] == "n1" and len(rows) == 2
    assert main(["index", "delete", "n1", "--index", out]) == 0
    assert main(["index", "search", "petrol prices", "--index", out, "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] != "n1"
    assert main(["index", "search", "x", "--index", str(tmp_path / "none")]) == 2
    assert "llmapps index build" in capsys.readouterr().err


def test_llamaindex_retriever_and_query_engine(corpus: Path, tmp_path: Path) -> None:
    from llama_index.core.llms import MockLLM

    from llmapps.retrieval.llama import LlamaFaissRetriever, as_query_engine

    store = FaissVectorStore(cached(tmp_path / "cache"))
    store.add_documents(load_documents(corpus))
    store.save(tmp_path / "idx")
    nodes = LlamaFaissRetriever.from_path(tmp_path / "idx", k=2).retrieve(
        "a comet in the night sky"
    )
    assert nodes[0].node.id_ == "n3" and nodes[0].score >= nodes[1].score
    # MockLLM only echoes the prompt: this checks the wiring, the retrieval is the real index.
    response = as_query_engine(store, llm=MockLLM(), k=1).query("a comet in the night sky")
    assert response.source_nodes[0].node.id_ == "n3"
