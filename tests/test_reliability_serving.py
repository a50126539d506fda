"""Fault injection against ``llmapps serve`` on real loopback HTTP (issue 17, items 1, 2 and 12).

One test per class of fault, each over several hostile cases: valid JSON the model cannot take
(integers out of range, NaN, lone surrogates anywhere, streaming included) gets 400 naming the
field; prompts are capped per request and counted per prompt in flight; a client that goes away
has its queued prompts cancelled; a stream that fails ends with an error event and ``[DONE]``;
auth comes before the body, the Host header is checked, 405 says ``Allow``. Last, schemathesis
generates requests from the server's own OpenAPI schema (valid and invalid ones) for a bounded
number of examples, and not one may get a 5xx.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

KEY = "reliability-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny-instruct"


def _serve(lm: Any, **limits: Any) -> Any:
    from llmapps.serving.app import create_app
    from llmapps.serving.server import serve_in_thread
    from llmapps.settings import ServerSettings

    base = {"api_key": SecretStr(KEY), "max_tokens": 8, "max_concurrent": 8, "max_prompts": 4}
    app = create_app(lm, ServerSettings(**{**base, **limits}), model_name=MODEL)
    return app, serve_in_thread(app)


@pytest.fixture(scope="module")
def lm(tiny_instruct: str) -> Any:
    from llmapps.models.local import load_local_model

    return load_local_model(tiny_instruct)


@pytest.fixture(scope="module")
def served(lm: Any) -> Iterator[dict[str, Any]]:
    app, ctx = _serve(lm)
    with ctx as url:
        yield {"url": url, "app": app, "lm": lm}


def _post(url: str, path: str, body: str | dict[str, Any], **kw: Any) -> httpx.Response:
    headers = {**AUTH, "Content-Type": "application/json", **kw.pop("headers", {})}
    kw.setdefault("timeout", 60)
    if isinstance(body, str):
        return httpx.post(url + path, content=body.encode(), headers=headers, **kw)
    return httpx.post(url + path, json=body, headers=headers, **kw)


CHAT = (
    '{"model": "tiny-instruct", "max_tokens": 4, "messages": [{"role": "user", "content": %s}]%s}'
)
COMP = '{"model": "tiny-instruct", "max_tokens": 4, "prompt": %s%s}'

# (path, raw JSON body, the field the error must name); a repeated key: the last one counts
HOSTILE = [
    ("/v1/chat/completions", CHAT % ('"hi"', ', "seed": 18446744073709551616'), "seed"),
    ("/v1/chat/completions", CHAT % ('"hi"', ', "seed": -9223372036854775809'), "seed"),
    ("/v1/completions", COMP % ('"hi"', ', "seed": 1e400'), "seed"),
    ("/v1/chat/completions", CHAT % ('"a\\ud800b"', ""), "messages.0.content"),
    ("/v1/completions", COMP % ('"a\\udfffb"', ', "stream": true'), "prompt"),
    ("/v1/completions", COMP % ('["ok", "x\\ud83d"]', ""), "prompt.1"),
    ("/v1/chat/completions", CHAT % ('"hi"', ', "stop": ["\\ud800"]'), "stop.0"),
    ("/v1/chat/completions", CHAT % ('"hi"', ', "metadata": {"\\udc00": "v"}'), "metadata"),
    (
        "/v1/chat/completions",
        CHAT % ('[{"type": "text", "text": "\\ud800"}]', ""),
        "messages.0.content.0.text",
    ),
    ("/v1/completions", COMP % ('"hi"', ', "temperature": NaN'), "temperature"),
    ("/v1/completions", COMP % ('"hi"', ', "logit_bias": {"1": Infinity}'), "logit_bias"),
    ("/v1/completions", COMP % ('"hi"', ', "max_tokens": 18446744073709551616'), "max_tokens"),
    ("/v1/completions", COMP % ('"hi"', ', "n": 1180591620717411303424'), "n"),
    ("/v1/completions", COMP % ('"hi"', ', "stop": ["a", "b", "c", "d", "e"]'), "stop"),
    ("/v1/chat/completions", CHAT % ('[{"type": "text", "text": 5}]', ""), "messages"),
]


@pytest.mark.parametrize("path,body,param", HOSTILE, ids=[f"{p}:{f}" for p, _, f in HOSTILE])
def test_valid_json_the_model_cannot_take_is_a_400_naming_the_field(
    served: dict[str, Any], path: str, body: str, param: str
) -> None:
    r = _post(served["url"], path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "\n" not in err["message"]
    assert err["param"] is not None and err["param"].startswith(param.split(".")[0]), err
    assert param.split(".")[0] in err["message"]
    assert httpx.get(served["url"] + "/health", timeout=10).json()["in_flight"] == 0


def test_prompts_are_capped_per_request_and_counted_in_flight(served: dict[str, Any]) -> None:
    url, lm = served["url"], served["lm"]
    r = _post(url, "/v1/completions", {"model": MODEL, "prompt": ["x"] * 256, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_prompts"
    results: list[httpx.Response] = []
    four = {"model": MODEL, "prompt": ["a", "b", "c", "d"], "max_tokens": 2, "temperature": 0}
    threads = [
        threading.Thread(target=lambda: results.append(_post(url, "/v1/completions", four)))
        for _ in range(2)
    ]
    with lm._lock:  # generation waits: the prompts stay in flight
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while httpx.get(url + "/health").json()["in_flight"] < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert httpx.get(url + "/health").json()["in_flight"] == 8  # 2 requests, 8 prompts
        r = _post(url, "/v1/completions", {"model": MODEL, "prompt": "one more", "max_tokens": 2})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "8 prompts in flight" in r.json()["error"]["message"]
    for t in threads:
        t.join(60)
    assert [x.status_code for x in results] == [200, 200]
    assert all(len(x.json()["choices"]) == 4 for x in results)
    assert httpx.get(url + "/health").json()["in_flight"] == 0


def test_a_client_that_goes_away_has_its_queued_prompts_cancelled(lm: Any) -> None:
    _, ctx = _serve(lm, max_batch=1, batch_wait_ms=0)  # one prompt per generate call
    with ctx as url:
        body = {"model": MODEL, "prompt": ["a", "b", "c", "d"], "max_tokens": 2}
        with lm._lock:  # the first prompt blocks inside generate, three wait in the queue
            with pytest.raises(httpx.TimeoutException):
                _post(url, "/v1/completions", body, timeout=1.0)
            deadline = time.monotonic() + 10
            while httpx.get(url + "/health").json()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.05)  # the server notices the disconnect and releases the slots
            assert httpx.get(url + "/health").json()["in_flight"] == 0
        time.sleep(0.5)  # let the worker drain the queue
        stats = httpx.get(url + "/health").json()["batching"]
        assert stats["requests"] == 1, stats  # only the prompt already running was generated


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done(
    lm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmapps.models.streaming as streaming

    def failing(lm: Any, prompt: str, params: Any) -> Iterator[str]:  # a backend fault, injected
        yield "Once"
        raise RuntimeError("device lost")

    monkeypatch.setattr(streaming, "stream_local", failing)
    _, ctx = _serve(lm)
    with ctx as url:
        for path, body in [
            ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True, "max_tokens": 4}),
            (
                "/v1/chat/completions",
                {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
            ),
        ]:
            r = _post(url, path, body)
            events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
            assert (
                events[-1] == "[DONE]" and '"error"' in events[-2] and "device lost" not in r.text
            )
            assert "RuntimeError" in events[-2]
        assert httpx.get(url + "/health").json()["in_flight"] == 0


def test_guard_order_host_then_auth_then_body(served: dict[str, Any]) -> None:
    url = served["url"]
    port = url.rsplit(":", 1)[1]
    bad_json = "{not json"
    r = httpx.post(url + "/v1/completions", content=bad_json, timeout=10)
    assert r.status_code == 401  # auth first: no key, no parsing
    r = _post(url, "/v1/completions", bad_json)
    assert r.status_code == 400
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "[::2]"):
        r = httpx.get(url + "/v1/models", headers={**AUTH, "Host": host}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed", host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(url + "/v1/models", headers={**AUTH, "Host": host}).status_code == 200
    r = httpx.get(url + "/v1/completions", headers=AUTH, timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "access-control-allow-origin" not in {
        k.lower()
        for k in httpx.options(
            url + "/v1/models", headers={"Origin": "http://evil.example"}
        ).headers
    }


def test_openapi_documents_the_errors_the_server_returns(served: dict[str, Any]) -> None:
    schema = httpx.get(served["url"] + "/openapi.json", timeout=10).json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
        (op,) = schema["paths"][path].values()
        assert {"400", "401", "404", "413", "429"} <= set(op["responses"]), path
        assert "422" not in op["responses"]
    assert "ErrorResponse" in schema["components"]["schemas"]


def test_schema_fuzzing_finds_no_server_error(served: dict[str, Any]) -> None:
    """Schemathesis: valid and invalid requests from /openapi.json; 0 responses may be 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    url = served["url"]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    seen: collections.Counter[tuple[str, str, int]] = collections.Counter()
    server_errors: list[tuple[str, Any, str]] = []
    plan = [
        ("/v1/chat/completions", "POST", (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
        ("/v1/completions", "POST", (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
        ("/v1/models", "GET", (GenerationMode.POSITIVE,)),
    ]

    def fuzz(path: str, method: str, mode: Any) -> None:
        @given(case=schema[path][method].as_strategy(generation_mode=mode), ours=st.booleans())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples every run
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any, ours: bool) -> None:
            if ours and isinstance(case.body, dict):
                case.body["model"] = MODEL  # reach generation, not only the 404
            r = case.call(base_url=url, headers=AUTH, timeout=60)
            seen[(path, mode.value, r.status_code)] += 1
            if r.status_code >= 500:
                server_errors.append((path, case.body, r.text[:300]))

        call()

    for path, method, modes in plan:
        for mode in modes:
            fuzz(path, method, mode)
    tried = sum(seen.values())
    print(f"schema fuzzing: {tried} cases, {len(server_errors)} server errors, {dict(seen)}")
    assert tried >= 150
    assert not server_errors, server_errors[:5]
    assert sum(n for (p, _, code), n in seen.items() if code == 200 and p != "/v1/models") >= 5
    assert httpx.get(url + "/health").json()["in_flight"] == 0


def test_a_stream_whose_client_leaves_stops_generating(
    lm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmapps.serving.engine as app_module

    checks: list[bool] = []  # one per decoding step: was the client gone at that step?
    real = app_module._Cancelled.__call__

    def counting(self: Any, input_ids: Any, scores: Any, **kw: Any) -> Any:
        checks.append(self.event.is_set())
        return real(self, input_ids, scores, **kw)

    monkeypatch.setattr(app_module._Cancelled, "__call__", counting)
    _, ctx = _serve(lm, max_tokens=900)
    with ctx as url:
        body = {
            "model": MODEL,
            "prompt": "The council",
            "stream": True,
            "max_tokens": 900,
            "temperature": 1.0,
            "seed": 1,
        }
        with httpx.stream(
            "POST", url + "/v1/completions", json=body, headers=AUTH, timeout=60
        ) as r:
            for n, _line in enumerate(r.iter_lines()):
                if n >= 6:
                    break  # read a few events, then hang up
        deadline = time.monotonic() + 30
        while httpx.get(url + "/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lm._lock.acquire(timeout=30)  # the generation thread has let go of the model
        lm._lock.release()
    steps = len(checks)
    print(f"stream cancel: {steps} decoding steps of 900, {sum(checks)} after the client left")
    assert steps < 900 and sum(checks) <= 1
