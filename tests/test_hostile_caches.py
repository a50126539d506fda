"""Hostile caches: a file llmapps wrote and keeps is verified before it is used again.

The llama.cpp LoRA file ``lora_gguf_for`` converts once (issue 22, item 3): overwritten with
another adapter's conversion (``lora_b`` x100, same size), truncated, random bytes, empty, a
symlink to the base GGUF, or its record removed: each is converted again and the result matches
its record; a folder in its place is one ``ConfigError`` naming it. Real conversions of a
hand-written PEFT adapter on the packaged SmolLM2 GGUF; nothing is mocked.

The Gemma GGUF its package assembles under ``$LLMAPPS_HOME/gguf`` is the same kind of cache:
truncated, random or a symlink to another file, it is assembled again (it used to be refused
with "reinstall its package"); a folder in its place is one ``BackendError``. A converted model
folder under ``$LLMAPPS_HOME/models`` is taken as built only while every file matches the digest
its manifest records. The embeddings cache (real MiniLM): a damaged SQLite file is set aside and
rebuilt, a damaged vector (NaN, not unit length, another dimension, odd bytes) is embedded again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmapps.errors import BackendError, ConfigError, ModelNotFoundError
from llmapps.hashing import sha256_file


@pytest.fixture(scope="module")
def converted(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One adapter converted once, its good bytes kept; and a second adapter's conversion."""
    pytest.importorskip("gguf", reason="converting a LoRA for llama.cpp needs the gguf package")
    from test_gguf_lora import write_adapter

    from llmapps.models.gguf_lora import export_lora_gguf, lora_gguf_for
    from llmapps.settings import Settings

    root = tmp_path_factory.mktemp("caches")
    settings = Settings(home=root / "home")
    adapter = write_adapter(root / "adapter", smollm2_gguf, scale_b=0.5)
    out = lora_gguf_for(adapter, smollm2_gguf, settings)
    loud = export_lora_gguf(
        write_adapter(root / "loud", smollm2_gguf, scale_b=50.0), smollm2_gguf, root / "loud.gguf"
    )
    return {
        "settings": settings,
        "adapter": adapter,
        "out": out,
        "good": out.read_bytes(),
        "loud": loud.read_bytes(),
    }


def _tamper(kind: str, out: Path, good: bytes, loud: bytes, base: Path) -> None:
    out.unlink()
    if kind == "lora_b x100":
        assert len(loud) == len(good) and loud != good
        out.write_bytes(loud)
    elif kind == "truncated":
        out.write_bytes(good[: len(good) // 2])
    elif kind == "random bytes":
        out.write_bytes(os.urandom(len(good)))
    elif kind == "empty":
        out.write_bytes(b"")
    elif kind == "symlink to the base":
        out.symlink_to(base)
    elif kind == "record removed":
        out.write_bytes(loud)
        out.with_name(out.name + ".json").unlink()


@pytest.mark.parametrize(
    "kind",
    ["lora_b x100", "truncated", "random bytes", "empty", "symlink to the base", "record removed"],
)
def test_a_damaged_converted_lora_is_converted_again(
    kind: str, converted: dict, smollm2_gguf: Path
) -> None:
    from llmapps.models.gguf_lora import lora_gguf_for

    out: Path = converted["out"]
    _tamper(kind, out, converted["good"], converted["loud"], smollm2_gguf)
    base_digest = sha256_file(smollm2_gguf)
    again = lora_gguf_for(converted["adapter"], smollm2_gguf, converted["settings"])
    assert again == out and not out.is_symlink() and out.read_bytes() == converted["good"]
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["sha256"] == sha256_file(out) and record["base_sha256"] == base_digest
    assert sha256_file(smollm2_gguf) == base_digest  # the symlink's target was not written


def test_a_verified_file_is_reused_without_converting(converted: dict, smollm2_gguf: Path) -> None:
    from llmapps.models.gguf_lora import lora_gguf_for

    out: Path = converted["out"]
    lora_gguf_for(converted["adapter"], smollm2_gguf, converted["settings"])
    stamp = out.stat().st_mtime_ns
    assert lora_gguf_for(converted["adapter"], smollm2_gguf, converted["settings"]) == out
    assert out.stat().st_mtime_ns == stamp


def test_a_folder_in_the_cache_files_place_is_one_error(
    converted: dict, smollm2_gguf: Path
) -> None:
    from llmapps.models.gguf_lora import lora_gguf_for

    out: Path = converted["out"]
    out.unlink()
    (out / "inner").mkdir(parents=True)
    try:
        with pytest.raises(ConfigError, match=r"is not a file \(a folder\?\).*remove it"):
            lora_gguf_for(converted["adapter"], smollm2_gguf, converted["settings"])
    finally:
        shutil.rmtree(out)


GEMMA = "gemma-3-270m"


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "symlink to another file"])
def test_a_damaged_assembled_gguf_is_assembled_again(kind: str, tmp_path: Path) -> None:
    from llmapps.errors import ModelNotFoundError
    from llmapps.models.packaged import get_packaged, gguf_path
    from llmapps.settings import Settings

    settings = Settings(home=tmp_path / "home")
    try:
        target = gguf_path(GEMMA, settings)
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    size = target.stat().st_size
    if kind == "truncated":
        with target.open("r+b") as fh:
            fh.truncate(size // 3)
    elif kind == "random bytes":
        target.write_bytes(os.urandom(4096))
    else:
        other = tmp_path / "other.gguf"
        other.write_bytes(b"GGUF" + os.urandom(64))
        target.unlink()
        target.symlink_to(other)
    assert gguf_path(GEMMA, settings) == target and not target.is_symlink()
    assert target.stat().st_size == size and sha256_file(target) == get_packaged(GEMMA).sha256


def test_a_folder_in_place_of_the_assembled_gguf_is_one_error(tmp_path: Path) -> None:
    from llmapps.models.packaged import get_packaged, gguf_path
    from llmapps.settings import Settings

    settings = Settings(home=tmp_path / "home")
    if not get_packaged(GEMMA).assemble:
        pytest.skip("the Gemma package is not assembled")
    (settings.home / "gguf" / get_packaged(GEMMA).gguf_file / "inner").mkdir(parents=True)
    with pytest.raises(BackendError, match=r"is a folder where llmapps keeps .* remove it"):
        gguf_path(GEMMA, settings)


# --------------------------------------------------------------- converted model folders

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def converted_model() -> Path:
    """The packaged SmolLM2 converted into the test home once (kept across runs, as the
    ``real_models`` fixture keeps it)."""
    from llmapps.errors import ModelNotFoundError
    from llmapps.models.packaged import ensure_packaged_model

    try:
        return ensure_packaged_model(SMOL, progress=False)
    except ModelNotFoundError as err:
        pytest.skip(str(err))


def _damage_folder(kind: str, folder: Path) -> None:
    weights = folder / "model.safetensors"
    if kind == "weights truncated":
        with weights.open("r+b") as fh:
            fh.truncate(weights.stat().st_size // 2)
    elif kind == "weights replaced, same size":
        with weights.open("r+b") as fh:
            fh.seek(weights.stat().st_size // 2)
            fh.write(b"\x7f" * 64)
    elif kind == "config edited":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    elif kind == "a file added":
        (folder / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 16)
    elif kind == "a file replaced by a symlink":
        (folder / "tokenizer.json").unlink()
        (folder / "tokenizer.json").symlink_to(folder / "config.json")
    elif kind == "a file removed":
        (folder / "tokenizer.json").unlink()
    elif kind == "an old manifest without digests":
        manifest = json.loads((folder / "llmapps-model.json").read_text())
        manifest.pop("files")
        (folder / "llmapps-model.json").write_text(json.dumps({**manifest, "format": 1}))


@pytest.mark.parametrize(
    "kind",
    [
        "intact",
        "weights truncated",
        "weights replaced, same size",
        "config edited",
        "a file added",
        "a file replaced by a symlink",
        "a file removed",
        "an old manifest without digests",
    ],
)
def test_a_changed_converted_model_is_not_taken_as_built(
    kind: str, converted_model: Path, tmp_path: Path
) -> None:
    """``ensure_packaged_model`` converts again (the atomic, locked ``convert_gguf``) whenever
    ``_is_built`` is false; the conversion itself is ~50 s here, so the decision is what is shown."""
    from llmapps.models.packaged import _is_built, get_packaged

    copy = tmp_path / SMOL
    shutil.copytree(converted_model, copy, symlinks=True)  # times kept: the stamps still hold
    _damage_folder(kind, copy)
    assert _is_built(copy, get_packaged(SMOL).sha256) is (kind == "intact")


# --------------------------------------------------------------- the embeddings cache

TEXTS = ["a harbour reopened", "the bridge was closed for repairs", "rain flooded the valley"]


@pytest.fixture(scope="module")
def minilm() -> Any:
    from llmapps.retrieval.embeddings import MINILM, SentenceTransformerEmbeddings

    inner = SentenceTransformerEmbeddings(MINILM, device="cpu", local_files_only=True)
    try:
        inner.embed_query("load")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    return inner


def _cached(inner: Any, folder: Path) -> Any:
    from llmapps.retrieval.embeddings import MINILM, CachedEmbeddings

    return CachedEmbeddings(inner, MINILM, cache_dir=folder)


def _fill(inner: Any, folder: Path) -> np.ndarray:
    cache = _cached(inner, folder)
    truth = np.array(cache.embed_documents(TEXTS))
    cache.close()  # the WAL folded into the file, as when a process ends
    return truth


@pytest.mark.parametrize("kind", ["garbage", "truncated", "header damaged", "text file"])
def test_a_damaged_embeddings_cache_is_set_aside_and_rebuilt(
    kind: str, minilm: Any, tmp_path: Path
) -> None:
    truth = _fill(minilm, tmp_path)
    path = tmp_path / "embeddings.sqlite"
    data = path.read_bytes()
    damaged = {
        "garbage": os.urandom(len(data)),
        "truncated": data[: len(data) // 3],
        "header damaged": b"\xff" * 100 + data[100:],
        "text file": b"not a database\n" * 40,
    }[kind]
    path.write_bytes(damaged)
    cache = _cached(minilm, tmp_path)
    assert np.allclose(cache.embed_documents(TEXTS), truth, atol=1e-5)
    assert path.with_name("embeddings.sqlite.damaged").read_bytes() == damaged
    cache.close()
    again = _cached(minilm, tmp_path)  # the rebuilt file answers, the model is not asked
    assert np.allclose(again.embed_documents(TEXTS), truth, atol=1e-5)
    assert again.stats == {"hits": 3, "misses": 0}


@pytest.mark.parametrize(
    "vec",
    [
        np.full(384, np.nan, dtype=np.float32),
        np.full(384, 7.0, dtype=np.float32),  # not unit length
        np.ones(17, dtype=np.float32) / np.sqrt(17),  # unit length, another dimension
        b"abc",  # not float32 at all
    ],
    ids=["nan", "scaled", "other dimension", "odd bytes"],
)
def test_a_damaged_cached_vector_is_embedded_again(vec: Any, minilm: Any, tmp_path: Path) -> None:
    import sqlite3

    from llmapps.retrieval.embeddings import text_hash

    truth = _fill(minilm, tmp_path)
    blob = vec if isinstance(vec, bytes) else vec.tobytes()
    with sqlite3.connect(tmp_path / "embeddings.sqlite") as db:
        db.execute("UPDATE vectors SET vec=? WHERE hash=?", (blob, text_hash(TEXTS[1])))
    cache = _cached(minilm, tmp_path)
    assert np.allclose(cache.embed_documents(TEXTS), truth, atol=1e-5)
    assert cache.stats == {"hits": 2, "misses": 1}
    cache.close()
    again = _cached(minilm, tmp_path)  # the good vector replaced the bad one in the file
    assert np.allclose(again.embed_documents(TEXTS), truth, atol=1e-5)
    assert again.stats == {"hits": 3, "misses": 0}


def test_a_folder_in_place_of_the_embeddings_cache_is_one_error(
    minilm: Any, tmp_path: Path
) -> None:
    from llmapps.errors import RetrievalError

    (tmp_path / "embeddings.sqlite").mkdir()
    with pytest.raises(RetrievalError, match=r"cannot use the embeddings cache .*move it aside"):
        _cached(minilm, tmp_path).embed_documents(TEXTS)


# --------------------------------------------------------------- the service response cache


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        '{"lc": 1, "type": "constructor", "id": ["os", "system"], "kwargs": {}}',
        "[]",
        '"just a string"',
        "other model parameters",
    ],
    ids=["not json", "a foreign class", "empty", "a string", "another llm_string"],
)
def test_a_damaged_cached_response_is_a_miss(value: str, tmp_path: Path) -> None:
    import sqlite3

    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration

    from llmapps.service.cache import ResponseCache

    cache = ResponseCache(tmp_path / "cache.sqlite")
    answer = [ChatGeneration(message=AIMessage("the cached answer"))]
    cache.update("prompt", "llm", answer)
    assert cache.lookup("prompt", "llm") == answer
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        if value == "other model parameters":
            db.execute("UPDATE generations SET llm_string = 'another model'")
        else:
            db.execute("UPDATE generations SET value = ?", (value,))
    assert cache.lookup("prompt", "llm") is None  # asked again, not a traceback
    cache.update("prompt", "llm", answer)
    assert cache.lookup("prompt", "llm") == answer
    cache.close()
