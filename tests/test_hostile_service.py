"""Hostile service conditions: a self-hosted server too busy to answer within the timeout.

Against ``llmapps serve`` on 2 busy cores, a 60 s client timeout lost 4 of 4 articles: each of 5
retries re-sent the same work to a server still computing the first (issue 22, item 10). Now the
timeout defaults to the peers' (OpenAI's and LangChain's clients: 600 s) and a request that was
sent and timed out is sent once, failing in one line that says what to raise, unless the user
says the endpoint cancels abandoned work (``retry_timeouts``). Real HTTP to the scripted endpoint
(``llmapps/serving/fake_endpoint.py``) on loopback, whose ``slow`` fault outlasts the timeout.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr
from testkit import fake_service_chain

from llmapps.errors import BackendError
from llmapps.service.chat import ServiceChatModel, forget_structured_support
from llmapps.serving.fake_endpoint import FakeEndpointState, create_fake_app
from llmapps.serving.server import serve_in_thread

KEY = "sk-hostile-service-key"


@pytest.fixture(scope="module")
def fake() -> Any:
    state = FakeEndpointState(slow_s=1.5)
    with serve_in_thread(create_fake_app(state)) as url:
        yield url + "/v1", state


@pytest.fixture
def endpoint(fake: Any) -> Any:
    fake[1].reset()
    forget_structured_support()
    return fake


def _model(url: str, **kw: Any) -> ServiceChatModel:
    opts = {"model": "fake-model", "base_url": url, "api_key": KEY, "timeout": 0.3}
    return ServiceChatModel(**{**opts, "retries": 4, "backoff_base": 0.01, **kw})


def test_a_request_that_timed_out_is_sent_once(endpoint: Any) -> None:
    url, state = endpoint
    llm = _model(url)
    msg = "busy [fail:slow:5]"
    with pytest.raises(BackendError, match=r"did not answer within 0.3s; not retried.*timeout"):
        llm.invoke(msg)
    assert state.requests[msg] == 1  # the server computes it once, not five times
    assert llm.stats.retries == 0 and llm.stats.failures == 1


def test_retry_timeouts_is_the_users_choice(endpoint: Any) -> None:
    url, state = endpoint
    llm = _model(url, retry_timeouts=True)
    msg = "cancels [fail:slow:1]"
    assert "Riddle:" in llm.invoke(msg).content
    assert state.requests[msg] == 2 and llm.stats.retries == 1


def test_the_default_timeout_is_the_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmapps.settings import ServiceSettings
    from llmapps.strategies.service import ServiceStrategy, ServiceStrategyConfig

    monkeypatch.delenv("LLMAPPS_SERVICE__TIMEOUT", raising=False)
    assert ServiceSettings().timeout >= 600
    strategy = ServiceStrategy(
        ServiceStrategyConfig(base_url="http://127.0.0.1:9/v1", api_key=SecretStr(KEY))
    )
    assert strategy.chat_model(16).request_timeout >= 600


def test_a_chain_on_a_busy_server_marks_the_row_and_sends_it_once(endpoint: Any) -> None:
    from llmapps.runner import run_batches

    url, state = endpoint
    chain = fake_service_chain(url, KEY, max_concurrency=2, timeout=0.3)
    inputs = [
        {"title": f"Story {i}", "text": f"It happened {i}." + (" [fail:slow:9]" if i else "")}
        for i in range(3)
    ]
    rows = run_batches(chain, inputs, batch_size=3, progress=False)
    assert ["error" in r for r in rows] == [False, True, True]
    assert all("not retried" in r["error"] for r in rows[1:])
    slow = [n for m, n in state.requests.items() if "[fail:slow" in m]
    assert slow == [1, 1]  # each sent once (the other article's 3: the format probe's levels)
