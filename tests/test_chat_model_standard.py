"""ChatLocal against LangChain's standard chat-model suites (langchain-tests).

The suites run on the tiny instruct fixture through the real ``from_pretrained`` path. Capabilities
are declared honestly: a small local model behind a chat template has no tool calling, no
structured output, no JSON mode and no multimodal inputs; it does report token usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chat_capabilities import TextChatCapabilities
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from llmapps.models.langchain_local import ChatLocal

TINY_INSTRUCT = (
    Path(__file__).resolve().parent.parent
    / ".pytest_cache"
    / "llmapps-home"
    / "models"
    / "tiny-instruct"
)


class _Capabilities(TextChatCapabilities):
    """What ChatLocal can and cannot do, shared by both suites."""

    @pytest.fixture(autouse=True)
    def _built(self, tiny_instruct: str) -> None:
        assert Path(tiny_instruct) == TINY_INSTRUCT or Path(tiny_instruct).exists()

    @property
    def chat_model_class(self) -> type[ChatLocal]:
        return ChatLocal

    @property
    def chat_model_params(self) -> dict[str, Any]:
        from tests.conftest import TEST_HOME

        # A short budget keeps the integration suite fast; outputs are still real generations.
        return {"model": str(TEST_HOME / "models" / "tiny-instruct"), "max_new_tokens": 16}


class TestChatLocalUnit(_Capabilities, ChatModelUnitTests):
    """The standard unit suite (construction, serialisation, params, batching contracts)."""


class TestChatLocalIntegration(_Capabilities, ChatModelIntegrationTests):
    """The standard integration suite: real generations from the tiny instruct model."""
