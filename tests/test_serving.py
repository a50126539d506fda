"""``llmapps serve`` over real loopback HTTP: the official ``openai`` client, limits and batching.

The server runs ``tiny-instruct`` (built by the session fixture) in a thread on a free
127.0.0.1 port. Chat, streaming, completions and models go through ``openai.OpenAI``; auth,
body-size, ``max_tokens`` and in-flight limits are checked with their OpenAI-style error bodies;
dynamic batching is shown by holding the model while requests queue and reading the batch sizes
the server reports. Finally the ``service`` strategy runs the news-riddle app against it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr
from testkit import cli_command, streamed_chat

KEY = "serve-test-key-0123456789"


@pytest.fixture(scope="module")
def served(tiny_instruct: str) -> Iterator[dict[str, Any]]:
    from llmapps.models.local import load_local_model
    from llmapps.serving.app import create_app
    from llmapps.serving.server import serve_in_thread
    from llmapps.settings import ServerSettings

    lm = load_local_model(tiny_instruct)
    settings = ServerSettings(
        api_key=SecretStr(KEY),
        max_tokens=32,
        max_body_bytes=20_000,
        max_concurrent=4,
        batch_wait_ms=5,
    )
    app = create_app(lm, settings, model_name="tiny-instruct")
    with serve_in_thread(app) as url:
        yield {
            "url": url,
            "lm": lm,
            "app": app,
            "client": openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120),
        }


def _health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=10).json()


def test_models_and_openapi(served: dict[str, Any]) -> None:
    assert [m.id for m in served["client"].models.list()] == ["tiny-instruct"]
    schema = httpx.get(f"{served['url']}/openapi.json", timeout=10).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"} <= set(
        schema["paths"]
    )


def test_chat_and_streaming_agree(served: dict[str, Any]) -> None:
    client = served["client"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me the news."},
    ]
    r = client.chat.completions.create(
        model="tiny-instruct", messages=messages, max_tokens=12, temperature=0
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
    chunks, text = streamed_chat(client, "tiny-instruct", messages)
    assert text == r.choices[0].message.content  # greedy: the same text, batched or streamed
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_completions_list_of_prompts(served: dict[str, Any]) -> None:
    r = served["client"].completions.create(
        model="tiny-instruct", prompt=["The council", "A comet"], max_tokens=6, temperature=0
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(isinstance(c.text, str) for c in r.choices) and r.usage.completion_tokens > 0
    streamed = "".join(
        c.choices[0].text
        for c in served["client"].completions.create(
            model="tiny-instruct", prompt="The council", max_tokens=6, temperature=0, stream=True
        )
    )
    assert streamed == r.choices[0].text


def test_auth_failures(served: dict[str, Any]) -> None:
    bad = openai.OpenAI(base_url=f"{served['url']}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key") as info:
        bad.models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    assert KEY not in str(info.value.body)
    r = httpx.post(
        f"{served['url']}/v1/chat/completions",
        json={"model": "tiny-instruct", "messages": []},
        timeout=10,
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _health(served["url"])["status"] == "ok"  # probes need no key


def test_bad_requests_get_openai_errors(served: dict[str, Any]) -> None:
    client = served["client"]
    msg = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=msg)
    with pytest.raises(openai.BadRequestError, match="above this server's limit of 32") as info:
        client.chat.completions.create(model="tiny-instruct", messages=msg, max_tokens=500)
    assert info.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="'structural_tag' is not supported") as info:
        client.chat.completions.create(
            model="tiny-instruct",
            messages=msg,
            response_format={"type": "structural_tag"},  # type: ignore[typeddict-item]
        )
    assert info.value.param == "response_format.type"
    with pytest.raises(openai.BadRequestError, match="does not support 'n'"):
        client.chat.completions.create(model="tiny-instruct", messages=msg, n=2)
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(
        f"{served['url']}/v1/chat/completions",
        headers=headers,
        timeout=10,
        json={"model": "tiny-instruct", "messages": [{"role": "user"}], "bogus": 1},
    )
    assert r.status_code == 400 and "bogus" in r.json()["error"]["message"]
    big = {"model": "tiny-instruct", "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = httpx.post(f"{served['url']}/v1/chat/completions", headers=headers, json=big, timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_long_prompt_is_fitted_to_the_context(served: dict[str, Any]) -> None:
    lm = served["lm"]
    words = " ".join(["harbour"] * (lm.context_length * 2))
    r = served["client"].chat.completions.create(
        model="tiny-instruct",
        messages=[{"role": "user", "content": words}],
        max_tokens=4,
        temperature=0,
    )
    assert r.usage.prompt_tokens <= lm.context_length - 4


def test_dynamic_batching_and_the_in_flight_limit(served: dict[str, Any]) -> None:
    """Hold the model: one request generates (blocked), three queue; a fifth is turned away."""
    url, lm, client = served["url"], served["lm"], served["client"]
    before = _health(url)["batching"]["sizes"]
    results: list[Any] = []

    def ask(i: int) -> None:
        results.append(
            client.completions.create(
                model="tiny-instruct", prompt=f"Story {i}", max_tokens=4, temperature=0
            )
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    with lm._lock:  # generate() waits on it, so requests pile up in the batcher
        threads[0].start()
        deadline = time.monotonic() + 30
        while _health(url)["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        while _health(url)["queued"] > 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # the first one is inside generate()
        for t in threads[1:]:
            t.start()
        while _health(url)["in_flight"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.post(
            f"{url}/v1/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
            json={"model": "tiny-instruct", "prompt": "one too many", "max_tokens": 4},
        )
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4
    after = _health(url)["batching"]["sizes"]
    assert (
        after.get("3", 0) == before.get("3", 0) + 1
    )  # the three queued requests: one generate call
    assert _health(url)["in_flight"] == 0


def test_service_strategy_runs_the_app_against_llmapps_serve(tiny_instruct: str) -> None:
    from llmapps.apps import load_chain
    from llmapps.compose import demo_options
    from llmapps.runner import run_batches
    from llmapps.service.chat import forget_structured_support, structured_support
    from llmapps.settings import get_settings
    from llmapps.strategies.service import ServiceStrategy

    articles = [
        {"title": "Bridge approved", "text": "The council approved a footbridge over the river."},
        {"title": "Comet seen", "text": "An amateur astronomer spotted a new comet."},
    ]
    settings = get_settings().model_copy(update={"instruct_model": tiny_instruct})
    forget_structured_support()
    with demo_options("service", settings) as opts:
        assert opts is not None and opts["base_url"].startswith("http://127.0.0.1:")
        strategy = ServiceStrategy(**opts, max_new_tokens=8)
        rows = run_batches(
            load_chain("news-riddle", strategy), articles, batch_size=2, progress=False
        )
    assert len(rows) == 2 and all("error" not in r for r in rows)
    assert all({"summary", "riddle", "answer", "valid", "raw"} <= set(r) for r in rows)
    assert all(r["input_tokens"] > 0 and 0 < r["output_tokens"] <= 8 for r in rows)
    stats = strategy.stats
    # the server constrains to the task's schema: json_schema is taken on the first try
    assert stats["calls"] == 2 and stats["structured_fallbacks"] == 0
    assert structured_support(opts["base_url"], tiny_instruct) == "json_schema"


def test_serve_cli_refuses_open_host_without_key(capsys: pytest.CaptureFixture[str]) -> None:
    from llmapps.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err
    assert main(["serve", "--strategy", "zero-shot", "--adapter", "/no/such/adapter"]) == 2
    assert "use --strategy lora --adapter DIR" in capsys.readouterr().err
    assert main(["serve", "--strategy", "service"]) == 2
    assert "no local model to serve" in capsys.readouterr().err


def test_serve_command_end_to_end(tiny_instruct: str) -> None:
    """``llmapps serve --port 0`` in its own process: it says where it listens and answers there."""
    import os
    import re
    import subprocess

    env = {**os.environ, "LLMAPPS_SERVICE__SERVER__API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cli_command(
            "serve",
            "--model",
            tiny_instruct,
            "--served-model-name",
            "tiny",
            "--port",
            "0",
        ),
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline() if proc.stderr else ""
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert m, f"no address in {line!r}"
        assert "API key required" in line and KEY not in line
        client = openai.OpenAI(base_url=m.group(1), api_key=KEY, max_retries=0)
        for _ in range(100):  # the socket listens before uvicorn has started: retry briefly
            try:
                assert [x.id for x in client.models.list()] == ["tiny"]
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("llmapps serve never answered")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_service_chat_model_streams_and_awaits_against_the_server(served: dict[str, Any]) -> None:
    import asyncio

    from llmapps.service.chat import ServiceChatModel

    llm = ServiceChatModel(
        model="tiny-instruct",
        base_url=f"{served['url']}/v1",
        api_key=KEY,
        max_tokens=8,
        temperature=0,
        retries=0,
    )
    whole = llm.invoke("Tell me the news.").content
    streamed = "".join(str(c.content) for c in llm.stream("Tell me the news."))
    assert streamed == whole
    assert asyncio.run(llm.ainvoke("Tell me the news.")).content == whole
    assert llm.stats.calls == 3 and llm.stats.failures == 0
