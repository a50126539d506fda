"""The client side of the ``service`` strategy against a scripted endpoint on loopback.

Real HTTP to a small FastAPI server that answers 429, 500, garbage or too slowly on demand (see
``llmapps/serving/fake_endpoint.py``): retries happen and are counted, a batch finishes with its
failures marked and nothing completed is lost; the SQLite cache, rate limiter, cost table,
structured-output fallback and secret hygiene are checked on the same server.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.messages import AIMessage
from langchain_core.rate_limiters import BaseRateLimiter
from testkit import fake_service_chain

from llmapps.errors import BackendError, ConfigError
from llmapps.service.cache import ResponseCache
from llmapps.service.chat import (
    ServiceChatModel,
    call_cost,
    forget_structured_support,
    structured_support,
)
from llmapps.service.limits import RateLimiter, RetryPolicy, parse_retry_after
from llmapps.serving.fake_endpoint import FakeEndpointState, create_fake_app
from llmapps.serving.server import serve_in_thread

SECRET = "sk-test-very-secret-value-123"


@pytest.fixture(scope="module")
def fake() -> Any:
    state = FakeEndpointState()
    with serve_in_thread(create_fake_app(state)) as url:
        yield url + "/v1", state


@pytest.fixture
def endpoint(fake: Any) -> Any:
    url, state = fake
    state.reset()
    forget_structured_support()
    return url, state


def _echo_task(**extra: Any) -> Any:
    """A one-variable task whose prompt is its input (both layouts)."""
    from langchain_core.prompts import ChatPromptTemplate

    from llmapps.tasks import CompletionLayout, Task

    return Task(
        name="t",
        input_variables=("x",),
        output_variables=("y",),
        completion=CompletionLayout(prefix="", example_template="{x}", suffix="{x}"),
        chat=ChatPromptTemplate.from_messages([("user", "{x}")]),
        **extra,
    )


def model(url: str, **kw: Any) -> ServiceChatModel:
    opts: dict[str, Any] = {
        "model": "fake-model",
        "base_url": url,
        "api_key": SECRET,
        "timeout": 0.5,
        "retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
    }
    return ServiceChatModel(**{**opts, **kw})


@pytest.mark.parametrize("kind", ["429", "500", "garbage", "slow"])
def test_transient_faults_are_retried_and_counted(endpoint: Any, kind: str) -> None:
    url, state = endpoint
    llm = model(url, retry_timeouts=kind == "slow")  # a sent request that timed out: opt-in
    msg = f"hello [fail:{kind}:2]"
    out = llm.invoke(msg)
    assert "Riddle:" in out.content
    assert llm.stats.retries == 2
    assert state.requests[msg] == 3 and state.completed[msg] == 1


def test_retries_give_up_with_a_backend_error(endpoint: Any) -> None:
    url, state = endpoint
    llm = model(url, retries=2)
    with pytest.raises(BackendError, match=r"failed 3 times \(HTTP 500\)"):
        llm.invoke("x [fail:500:always]")
    assert state.requests["x [fail:500:always]"] == 3
    assert llm.stats.failures == 1 and llm.stats.retries == 2


def test_batch_finishes_with_failures_marked_and_nothing_lost(endpoint: Any) -> None:
    url, state = endpoint
    state.latency_s = 0.05  # long enough for requests to overlap
    llm = model(url, retries=1, max_inflight=4)
    inputs = [
        f"item {i} [fail:500:always]" if i % 3 == 0 else f"item {i} [fail:429:1]" for i in range(9)
    ]
    outs = llm.batch(inputs, config={"max_concurrency": 4}, return_exceptions=True)
    failed = [i for i, o in enumerate(outs) if isinstance(o, Exception)]
    assert failed == [0, 3, 6]
    assert all(isinstance(outs[i], BackendError) for i in failed)
    done = [inputs[i] for i, o in enumerate(outs) if isinstance(o, AIMessage)]
    assert len(done) == 6 and all(
        state.completed[m] == 1 for m in done
    )  # each once: none lost or doubled
    assert llm.stats.calls == 6 and llm.stats.retries == 6 + 3 and llm.stats.failures == 3
    assert 1 < state.max_in_flight <= 4


def test_news_riddle_chain_marks_failed_rows(endpoint: Any) -> None:
    from llmapps.runner import run_batches

    url, _ = endpoint
    chain = fake_service_chain(url, SECRET, max_retries=1, max_concurrency=4, timeout=1.0)
    inputs = [
        {
            "title": f"Story {i}",
            "text": f"Something happened {i}." + (" [fail:500:always]" if i == 1 else ""),
        }
        for i in range(4)
    ]
    rows = run_batches(chain, inputs, batch_size=4, progress=False)
    assert [("error" in r) for r in rows] == [False, True, False, False]
    assert "BackendError" in rows[1]["error"] and SECRET not in rows[1]["error"]
    assert all(
        r["valid"] and r["answer"] == "a thing" and r["input_tokens"] > 0
        for i, r in enumerate(rows)
        if i != 1
    )


FMT = {
    "type": "json_schema",
    "json_schema": {"name": "t", "schema": {"type": "object"}, "strict": False},
}


def test_structured_output_used_when_supported_else_text(endpoint: Any) -> None:
    url, state = endpoint
    plain = model(url, structured_format=FMT)
    out = plain.invoke("a")
    assert out.content.startswith("Summary:")
    assert out.response_metadata["structured_output"] == "text"
    # json_schema, then json_object refused: two fallbacks, text remembered
    assert plain.stats.structured_fallbacks == 2 and plain.stats.failures == 0
    assert state.formats == {"json_schema": 1, "json_object": 1, "text": 1}
    plain.invoke("b")  # remembered: no second refusal
    assert plain.stats.structured_fallbacks == 2 and state.requests["b"] == 1
    assert structured_support(url, "fake-model") == "text"
    forget_structured_support()
    state.supports_json_schema = True
    js = model(url, structured_format=FMT)
    from chains.news_riddle import parse_fields

    parsed = parse_fields(js.invoke("c").content)
    assert parsed["valid"] and parsed["answer"] == "a thing"
    assert js.stats.structured_fallbacks == 0
    assert structured_support(url, "fake-model") == "json_schema"


@pytest.mark.parametrize("status", [400, 422, 500])
def test_json_schema_refused_falls_back_to_json_object_once_per_endpoint(
    endpoint: Any, status: int
) -> None:
    url, state = endpoint
    state.supports_json_object = True
    state.refusal_status = status  # 500 naming response_format: what llama-cpp-python answers
    first = model(url, structured_format=FMT, retries=3)
    out = first.invoke("a")
    assert out.response_metadata["structured_output"] == "json_object"
    assert '"answer": "a thing"' in out.content
    # a refusal is not a transient fault: not retried, not a failure
    assert first.stats.retries == 0 and first.stats.failures == 0
    assert first.stats.structured_fallbacks == 1
    # decided for the endpoint+model: another instance, and a batch, go straight to json_object
    second = model(url, structured_format=FMT)
    second.batch(["b", "c", "d"], config={"max_concurrency": 3})
    assert second.stats.structured_fallbacks == 0
    assert state.formats == {"json_schema": 1, "json_object": 4}
    # another model on the same server is decided on its own
    assert structured_support(url, "other-model") is None


def test_a_concurrent_first_batch_probes_once(endpoint: Any) -> None:
    url, state = endpoint
    state.latency_s = 0.05
    llm = model(url, structured_format=FMT, max_inflight=4)
    outs = llm.batch([f"q{i}" for i in range(6)], config={"max_concurrency": 6})
    assert all(o.content.startswith("Summary:") for o in outs)
    assert llm.stats.structured_fallbacks == 2
    assert state.formats == {"json_schema": 1, "json_object": 1, "text": 6}


def test_transient_faults_while_probing_are_retried_not_taken_for_refusals(
    endpoint: Any,
) -> None:
    url, state = endpoint
    state.supports_json_schema = True
    for kind in ("429", "500", "slow"):
        forget_structured_support()
        llm = model(url, structured_format=FMT, retry_timeouts=kind == "slow")
        out = llm.invoke(f"probe [fail:{kind}:1]")
        assert out.response_metadata["structured_output"] == "json_schema", kind
        assert llm.stats.retries == 1 and llm.stats.structured_fallbacks == 0, kind


def test_cache_is_keyed_by_every_parameter(endpoint: Any, tmp_path: Path) -> None:
    url, state = endpoint
    path = str(tmp_path / "cache.sqlite")
    first = model(url, cache_path=path, temperature=0.0).invoke("cache me")
    again = model(url, cache_path=path, temperature=0.0)
    second = again.invoke("cache me")
    assert state.requests["cache me"] == 1 and again.stats.cache_hits == 1
    assert second.content == first.content and second.response_metadata["cached"] is True
    assert second.usage_metadata == {**(first.usage_metadata or {}), "total_cost": 0}  # LangChain's
    model(url, cache_path=path, temperature=0.5).invoke("cache me")
    model(url, cache_path=path, temperature=0.0, max_tokens=7).invoke("cache me")
    model(url, cache_path=None, temperature=0.0).invoke("cache me")  # cache off: always asks
    assert state.requests["cache me"] == 4
    model(url, cache_path=path, temperature=0.0, structured_format=FMT).invoke("cache me")
    assert state.requests["cache me"] > 4  # asked (and probed the formats) again
    assert len(ResponseCache(Path(path))) == 4  # one row per distinct request, across models


def test_any_langchain_cache_is_counted_and_an_old_cache_file_is_migrated(
    endpoint: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, state = endpoint
    shared = InMemoryCache()
    model(url, cache=shared).invoke("in memory")
    again = model(url, cache=shared)
    assert again.invoke("in memory").response_metadata["cached"] is True
    assert again.stats.cache_hits == 1 and state.requests["in memory"] == 1
    with pytest.raises(ConfigError, match="cache_path= or cache=, not both"):
        model(url, cache=shared, cache_path=str(tmp_path / "x.sqlite"))
    old = tmp_path / "v1.sqlite"  # the file an earlier llmapps wrote: schema 1, own keys
    with sqlite3.connect(old) as conn:
        conn.execute(
            "CREATE TABLE responses (key TEXT PRIMARY KEY, endpoint TEXT NOT NULL, "
            "model TEXT NOT NULL, created REAL NOT NULL, response TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO responses VALUES ('k', ?, 'fake-model', 0, '{}')", (url,))
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    with caplog.at_level("WARNING", logger="llmapps.service.cache"):
        model(url, cache_path=str(old)).invoke("after migration")
    assert "1 responses cached by an earlier llmapps are keyed differently" in caplog.text
    assert model(url, cache_path=str(old)).invoke("after migration").response_metadata["cached"]
    assert state.requests["after migration"] == 1


def test_cost_per_call_from_the_price_table(endpoint: Any) -> None:
    url, _ = endpoint
    prices = {"fake-model": {"input_per_1m": 1000.0, "output_per_1m": 2000.0}}
    out = model(url, prices=prices).invoke("price this")
    u = out.usage_metadata
    assert u and u["input_tokens"] > 0
    expected = (u["input_tokens"] * 1000.0 + u["output_tokens"] * 2000.0) / 1e6
    assert out.response_metadata["cost_usd"] == pytest.approx(expected)
    assert call_cost(
        "gpt-4o-mini-2024-07-18", 10**6, 0, {"gpt-4o-mini": {"input_per_1m": 0.15}}
    ) == pytest.approx(0.15)
    assert call_cost("unlisted", 100, 100, prices) == 0.0


class FakeClock:
    """A clock that moves only when the limiter sleeps on it (no wall-clock time in the test)."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_rate_limiter_spaces_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=2, window_s=60, clock=clock, sleep=clock.sleep)
    assert [limiter.acquire() for _ in range(2)] == [True, True] and clock.sleeps == []
    clock.now += 10  # the first two were 10 s ago: the third waits out the rest of the minute
    assert limiter.acquire(blocking=False) is False and clock.sleeps == []
    assert limiter.acquire() is True
    assert clock.sleeps == [50.0] and limiter.waited_s == pytest.approx(50.0)
    tokens_clock = FakeClock()
    tokens = RateLimiter(tpm=100, window_s=60, clock=tokens_clock, sleep=tokens_clock.sleep)
    assert tokens.take_tokens(60) == 0.0
    tokens_clock.now += 15
    assert tokens.take_tokens(60) == pytest.approx(45.0)  # waits until the first 60 tokens expire
    assert tokens.take_tokens(40) == 0.0  # 60 + 40 fit the minute
    assert tokens.acquire() is True and tokens_clock.sleeps == [45.0]  # no rpm: requests free
    with pytest.raises(ConfigError, match="more than the whole limit of tpm=100"):
        tokens.take_tokens(101)


async def test_rate_limiter_is_langchains_hook_for_async_callers_too() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=1, window_s=60, clock=clock, sleep=clock.sleep)
    assert isinstance(limiter, BaseRateLimiter)
    assert await limiter.aacquire() is True
    assert await limiter.aacquire(blocking=False) is False
    assert await limiter.aacquire() is True and clock.sleeps == [60.0]


def test_rate_limiter_without_an_injected_clock_still_waits_on_its_condition() -> None:
    limiter = RateLimiter(rpm=1, window_s=0.05)
    limiter.acquire()
    assert limiter.acquire() and limiter.waited_s > 0


def test_rpm_spaces_a_models_requests_through_langchains_rate_limiter_hook(
    endpoint: Any, tmp_path: Path
) -> None:
    url, state = endpoint
    clock = FakeClock()
    limiter = RateLimiter(rpm=1, window_s=60, clock=clock, sleep=clock.sleep)
    llm = model(url, rate_limiter=limiter, cache_path=str(tmp_path / "c.sqlite"))
    llm.invoke("limited one")
    llm.invoke("limited two")  # the second request waits out the minute
    llm.invoke("limited one")  # a cache hit is no request: LangChain asks the limiter after it
    assert clock.sleeps == [60.0] and llm.stats.rate_limited_s == pytest.approx(60.0)
    assert state.requests["limited one"] == 1 and llm.stats.cache_hits == 1
    built = model(url, rpm=30)
    assert isinstance(built.rate_limiter, RateLimiter) and built.rate_limiter.rpm == 30
    with pytest.raises(ConfigError, match="rpm= or rate_limiter=, not both"):
        model(url, rpm=30, rate_limiter=limiter)


def test_retry_policy_honours_retry_after_and_backs_off() -> None:
    policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=8.0)
    assert policy.delay(1, retry_after=2.5) == 2.5
    assert policy.delay(1, retry_after=60) == 8.0
    assert all(0.5 <= policy.delay(1) <= 1.0 for _ in range(20))
    assert all(2.0 <= policy.delay(3) <= 4.0 for _ in range(20))
    assert all(4.0 <= policy.delay(9) <= 8.0 for _ in range(20))  # capped
    assert (
        parse_retry_after("3") == 3.0
        and parse_retry_after(None) is None
        and parse_retry_after("soon") is None
    )


def test_secrets_stay_out_of_reprs_configs_and_errors(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmapps.serving.app import create_app  # noqa: F401  (import check only)
    from llmapps.settings import load_settings
    from llmapps.strategies.service import ServiceStrategy

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    settings = load_settings()
    assert (
        settings.service.api_key is not None
        and settings.service.api_key.get_secret_value() == SECRET
    )
    assert SECRET not in repr(settings) and SECRET not in settings.model_dump_json()
    url, _ = endpoint
    strategy = ServiceStrategy(base_url=url, model="fake-model", api_key=SECRET)
    llm = strategy.chat_model(16)
    for text in (repr(strategy.config), str(strategy.describe()), repr(llm)):
        assert SECRET not in text
    assert "api_key" not in strategy.describe()


def test_auth_failure_is_a_clear_error_without_the_key(
    monkeypatch: pytest.MonkeyPatch, tiny_instruct: str
) -> None:
    from llmapps.serving.server import serve_model

    with serve_model(tiny_instruct, api_key="right-key") as url:
        llm = ServiceChatModel(model=tiny_instruct, base_url=url + "/v1", api_key=SECRET, retries=0)
        with pytest.raises(BackendError, match="refused the API key") as info:
            llm.invoke("hi")
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_bad_options_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmapps.strategies.base import make_strategy

    with pytest.raises(ConfigError, match="not an http"):
        make_strategy("service", base_url="ftp://example")
    with pytest.raises(ConfigError, match="max_concurrency"):
        make_strategy("service", max_concurrency=0)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LLMAPPS_SERVICE__API_KEY", raising=False)
    monkeypatch.delenv("LLMAPPS_SERVICE__BASE_URL", raising=False)

    task = _echo_task()
    with pytest.raises(ConfigError, match="has no API key"):
        make_strategy("service").build(task)


def test_task_stop_strings_beyond_four_are_cut_on_arrival(endpoint: Any) -> None:

    from llmapps.strategies.service import ServiceStrategy

    url, _ = endpoint
    task = _echo_task(stop=("zz1", "zz2", "zz3", "zz4", "Riddle:"))
    strategy = ServiceStrategy(base_url=url, model="fake-model", api_key=SECRET, cache=False)
    out = strategy.build(task).invoke({"x": "cut me"})
    assert out.content == "Summary: A thing happened.\n"  # the fake ignores stops; the 5th is ours


def test_structured_on_is_an_error_where_the_endpoint_takes_no_structured_level(
    endpoint: Any,
) -> None:
    url, state = endpoint
    llm = model(url, structured_format=FMT, structured_required=True)
    with pytest.raises(BackendError, match="takes neither response_format json_schema nor json"):
        llm.invoke("a")
    assert state.formats == {"json_schema": 1, "json_object": 1}  # no text request was sent
    with pytest.raises(BackendError, match="structured=on"):  # remembered: no probe again
        model(url, structured_format=FMT, structured_required=True).invoke("b")
    assert state.formats == {"json_schema": 1, "json_object": 1}
    state.supports_json_object = True
    forget_structured_support()
    out = model(url, structured_format=FMT, structured_required=True).invoke("c")
    assert out.response_metadata["structured_output"] == "json_object"


def test_service_strategy_structured_option_and_budgeted_schema(endpoint: Any) -> None:
    from llmapps.strategies.service import ServiceStrategy, budgeted_schema
    from prompts.loader import load_task

    url, state = endpoint
    opts = {"base_url": url, "model": "fake-model", "api_key": SECRET, "cache": False}
    assert ServiceStrategy(**opts, structured_output="off").config.structured == "off"  # old name
    assert ServiceStrategy(**opts, structured=True).config.structured == "on"  # --set structured=on
    task = load_task("news_riddle/one_step", [])
    schema = budgeted_schema(task, 128)
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    caps = [props[n]["maxLength"] for n in ("summary", "riddle", "answer")]
    assert all(c > 0 and c % 4 == 0 for c in caps) and sum(caps) // 4 < 128, caps  # in budget
    assert task.json_schema and "maxLength" not in task.json_schema["properties"]["summary"]
    with pytest.raises(BackendError, match="structured=on"):
        ServiceStrategy(**opts, structured="on").build(task).invoke(
            {"title": "T", "text": "A thing happened."}
        )
    assert (
        ServiceStrategy(**opts, structured="off")
        .build(task)
        .invoke({"title": "T", "text": "A thing happened."})
        .content
    )
    assert state.formats.get("text", 0) == 1
