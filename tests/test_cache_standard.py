"""LangChain's standard cache suites (sync and async) on our SQLite ``ResponseCache``."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.caches import BaseCache
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from llmapps.errors import ConfigError
from llmapps.service.cache import ResponseCache


class TestResponseCacheSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, tmp_path: Path) -> BaseCache:
        return ResponseCache(tmp_path / "cache.sqlite")


class TestResponseCacheAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, tmp_path: Path) -> BaseCache:
        return ResponseCache(tmp_path / "cache.sqlite")


def test_chat_generations_survive_a_reopened_file(tmp_path: Path) -> None:
    """What the service model stores (messages with usage and metadata) reads back equal."""
    path = tmp_path / "cache.sqlite"
    gens: list[Generation] = [
        ChatGeneration(
            message=AIMessage(
                content="A riddle.",
                usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
                response_metadata={"model_name": "m", "cost_usd": 0.5, "finish_reason": "stop"},
            ),
            generation_info={"finish_reason": "stop"},
        )
    ]
    first = ResponseCache(path)
    first.update("prompt", "llm", gens)
    first.close()
    assert ResponseCache(path).lookup("prompt", "llm") == gens
    assert ResponseCache(path).lookup("prompt", "other llm") is None


def test_a_file_that_is_not_a_cache_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "cache.sqlite"
    bad.write_text("not sqlite at all, " * 100)
    with pytest.raises(ConfigError, match=r"not a readable response cache.*delete it"):
        ResponseCache(bad)
