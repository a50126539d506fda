"""``ServiceChatModel`` against LangChain's standard chat-model suites (langchain-tests).

The integration suite talks to a real ``llmapps serve`` on loopback serving the tiny instruct
fixture, through the OpenAI client path, so every answer is a real generation over HTTP.
Capabilities are declared honestly for that server: no tool calling, no multimodal inputs; it
reports token usage. The server does constrain replies to a ``response_format`` schema
(tests/test_serving_structured.py), but structured output is not declared here: the suite's Joke
has free-length strings the tiny model never closes (as tests/test_chat_model_standard.py shows
for ChatLocal), so every one of those tests would end at max_tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from chat_capabilities import TextChatCapabilities
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from llmapps.service.chat import ServiceChatModel

SERVED: dict[str, str] = {}
KEY = "standard-suite-key"


@pytest.fixture(scope="module", autouse=True)
def _server(tiny_instruct: str) -> Iterator[None]:
    from llmapps.serving.server import serve_model

    with serve_model(tiny_instruct, api_key=KEY) as url:
        SERVED.update(url=url, model=tiny_instruct)
        yield


class _Capabilities(TextChatCapabilities):
    @property
    def chat_model_class(self) -> type[ServiceChatModel]:
        return ServiceChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # fixed values: the unit suite's serialisation snapshot must not name a port or a folder
        return {
            "model": "tiny-instruct",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": KEY,
            "retries": 0,
        }


class TestServiceChatModelUnit(_Capabilities, ChatModelUnitTests):
    """The standard unit suite (construction, serialisation, params, batching contracts)."""


class TestServiceChatModelIntegration(_Capabilities, ChatModelIntegrationTests):
    """The standard integration suite over a real loopback server."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # a short budget keeps the suite fast; stream_usage asks the server for usage in streams
        return {
            "model": SERVED["model"],
            "base_url": SERVED["url"] + "/v1",
            "api_key": KEY,
            "max_tokens": 16,
            "retries": 0,
            "temperature": 0,
            "stream_usage": True,
        }

    @pytest.mark.xfail(
        reason="langchain-openai caches one async httpx client per process; the "
        "suite's second event loop finds it bound to the first, closed one",
        strict=False,
    )
    async def test_astream(self, model: Any) -> None:  # type: ignore[override]
        await super().test_astream(model)
