"""Shared fixtures: tiny models built once per session from the bundled corpus.

The models are real (a trained BPE tokenizer and 2-layer Llama models saved with
``save_pretrained``) so every test goes through the real ``from_pretrained`` path. They are built
with the small test spec under ``.pytest_cache/llmapps-home`` (reused while the spec and corpus are
unchanged; ~20 s to build on 2 cores).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_HOME = Path(os.environ.get("LLMAPPS_TEST_HOME", ROOT / ".pytest_cache" / "llmapps-home"))

# Point the library at the test home before anything reads settings: tests never touch ~/.cache.
os.environ["LLMAPPS_HOME"] = str(TEST_HOME)
os.environ["LLMAPPS_TINY_SPEC"] = "test"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("LLMAPPS_DATA_DIR", None)
os.environ.pop("LLMAPPS_CONFIG", None)
# The fast suite runs on the tiny models; tests/test_real_models.py names the real ones.
os.environ["LLMAPPS_BASE_MODEL"] = "tiny-base"
os.environ["LLMAPPS_INSTRUCT_MODEL"] = "tiny-instruct"


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    """Directory holding ``tiny-base`` and ``tiny-instruct`` (built with the test spec)."""
    from llmapps.apps import default_corpus
    from llmapps.models.tiny import TEST_SPEC, ensure_tiny_models

    models_dir = TEST_HOME / "models"
    ensure_tiny_models(models_dir, TEST_SPEC, default_corpus, progress=False)
    return models_dir


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """The real packaged models, ``gemma-3-270m`` and ``smollm2-135m-instruct``, converted once
    from their pip-installed GGUF files into the test home (kept across runs)."""
    from llmapps.models.packaged import ensure_packaged_model

    return {
        name: ensure_packaged_model(name, progress=False)
        for name in ("gemma-3-270m", "smollm2-135m-instruct")
    }


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file itself (no conversion); skipped where the
    model package is not installed."""
    from llmapps.errors import ModelNotFoundError
    from llmapps.models.packaged import gguf_path

    try:
        return gguf_path("smollm2-135m-instruct")
    except ModelNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def tiny_base(tiny_models: Path) -> str:
    return str(tiny_models / "tiny-base")


@pytest.fixture(scope="session")
def tiny_instruct(tiny_models: Path) -> str:
    return str(tiny_models / "tiny-instruct")


@pytest.fixture(scope="session")
def test_articles() -> list[dict]:
    """The bundled test split (articles with reference summary, riddle and answer)."""
    from chains.news_data import samples

    return samples("test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-socket keeps every test on loopback (pyproject's ``--allow-hosts``), except the
    tests marked ``network``, which exist to reach the internet."""
    for item in items:
        if item.get_closest_marker("network"):
            item.add_marker(pytest.mark.enable_socket)
