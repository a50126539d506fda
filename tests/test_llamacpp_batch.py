"""The llama.cpp backend's batch path (``llmapps.models.llamacpp_batch``) on a real GGUF model.

The model is the packaged SmolLM2-135M-Instruct (Q4_1), as in ``tests/test_llamacpp.py``. Greedy
``generate`` with ``batch_size`` sequences per decode step must give what one prompt at a time
gives, text, token count and finish reason alike: prompts with and without a shared prefix, of
different lengths, with stop strings, one that ends on its first token, more prompts than slots
(a freed slot takes the next one). What cannot batch (sampling, repetition control) runs one
prompt at a time; a batch size out of range is a one-line error; a KV cache over the memory
budget decodes fewer sequences at once instead of failing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from llmapps.errors import ConfigError

pytest.importorskip("llama_cpp", reason="the llama.cpp backend needs llama-cpp-python")

MODEL = "smollm2-135m-instruct"

STORY = (
    "Story {i}: The council of Place{i} met on Tuesday about the bridge, the school budget and "
    "the summer festival. Summary: Place{i} council discusses bridge, schools, festival."
)
PREFIX = "Summarise each story in one line.\n\n" + "\n\n".join(STORY.format(i=i) for i in range(8))
NEWS = [
    "A fire broke out at the old mill near the river and firefighters saved the building",
    "The football team won the cup after a penalty shootout",
    "Scientists found a rare orchid in the forest north of the city",
    "The mayor resigned",
    "Rain is expected all week in the north of the country, with floods in the valleys",
]


@pytest.fixture(scope="module")
def lm(smollm2_gguf: Path) -> Any:
    from llmapps.models.llamacpp import load_gguf_model

    return load_gguf_model(MODEL)


def _run(lm: Any, prompts: list[str], batch_size: int, params: Any) -> list[tuple[str, int, str]]:
    lm.batch_size = batch_size
    lm.reset()  # no prefix left over from another run
    return [(o.text, o.completion_tokens, o.finish_reason) for o in lm.generate(prompts, params)]


def test_batched_greedy_replies_are_the_sequential_ones(lm: Any) -> None:
    from llmapps.models.local import GenerationParams

    shared = [f"{PREFIX}\n\nStory X: {t}. Summary:" for t in NEWS]  # > 2 reuse steps shared
    assert all(lm.count_tokens(p) > 2 * lm.reuse_step for p in shared)
    alone = ["Count: one, two, three,", "Write a poem about the sea:\n", "Q: What is 2+2?\nA:"]
    prompts = shared + alone  # 8 prompts, lengths from 8 to ~400 tokens, 3 slots
    stops = GenerationParams(max_new_tokens=24, stop=["\n", "."])
    free = GenerationParams(max_new_tokens=12)
    early = GenerationParams(max_new_tokens=12, stop=[" "])  # most end on a first-token space
    got = {}
    for params in (stops, free, early):
        one = _run(lm, prompts, 1, params)
        before = lm.reused_tokens
        got[id(params)] = three = _run(lm, prompts, 3, params)
        assert three == one, params
        if params is stops:  # the shared prefix came from another slot's stream
            assert lm.reused_tokens - before >= (len(shared) - 3) * 2 * lm.reuse_step
    assert all(t for t, _, _ in got[id(free)])  # no stop strings: every reply has text
    assert "stop" in {f for _, _, f in got[id(stops)]}
    assert "length" in {f for _, _, f in got[id(free)]}
    lengths = [n for _, n, _ in got[id(early)]]
    assert min(lengths) <= 1 < max(lengths)  # one finished at once while others went on


def test_a_second_call_reuses_the_slots_and_single_prompts_still_stream(lm: Any) -> None:
    from llmapps.models.local import GenerationParams

    params = GenerationParams(max_new_tokens=10, stop=["\n"])
    prompts = [f"{PREFIX}\n\nStory X: {t}. Summary:" for t in NEWS[:4]]
    first = _run(lm, prompts, 4, params)
    before = lm.reused_tokens
    again = [(o.text, o.completion_tokens, o.finish_reason) for o in lm.generate(prompts, params)]
    assert again == first and lm.reused_tokens - before >= 4 * 2 * lm.reuse_step
    # one prompt (and a stream) takes the sequential path, with the same text
    assert "".join(lm.stream(prompts[0], params)) == first[0][0]
    assert lm.generate(prompts[:1], params)[0].text == first[0][0]


def test_what_cannot_batch_runs_one_prompt_at_a_time(lm: Any) -> None:
    from llmapps.models.llamacpp_batch import batch_refusal
    from llmapps.models.local import GenerationParams

    assert batch_refusal(GenerationParams()) is None
    assert batch_refusal(GenerationParams(temperature=0.7)) == "sampling (temperature > 0)"
    assert batch_refusal(GenerationParams(repetition_penalty=1.3)) == "repetition_penalty"
    assert batch_refusal(GenerationParams(no_repeat_ngram_size=3)) == "no_repeat_ngram_size"
    prompts = [f"{PREFIX}\n\nStory X: {t}. Summary:" for t in NEWS[:3]]
    params = GenerationParams(max_new_tokens=12, repetition_penalty=1.3, stop=["\n"])
    assert _run(lm, prompts, 3, params) == _run(lm, prompts, 1, params)


def test_a_kv_cache_over_the_memory_budget_decodes_one_at_a_time(
    smollm2_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from llmapps.models.llamacpp import clear_gguf_cache, load_gguf_model
    from llmapps.models.local import GenerationParams
    from llmapps.models.pool import ModelPool

    pool = ModelPool()  # a model of its own: no batch context allocated yet
    lm = load_gguf_model(MODEL, pool=pool)
    params = GenerationParams(max_new_tokens=8, stop=["\n"])
    prompts = [f"Story X: {t}. Summary:" for t in NEWS]
    expected = _run(lm, prompts, 1, params)
    lm.memory_fraction = 1e-9
    with caplog.at_level(logging.WARNING, logger="llmapps.models.llamacpp"):
        assert _run(lm, prompts, 4, params) == expected
    assert "do not fit the memory budget: decoding 1 at once" in caplog.text
    assert lm._batcher is None  # nothing was allocated for the batch path
    clear_gguf_cache(pool)


@pytest.mark.parametrize("bad", [0, 65, -2, "8", 2.5, True])
def test_a_bad_batch_size_is_a_one_line_error(lm: Any, bad: Any) -> None:
    from llmapps.models.llamacpp import load_gguf_model
    from llmapps.models.llamacpp_batch import check_batch_size

    with pytest.raises(ConfigError, match=r"is not a llama\.cpp batch size: .* 1 to 64") as err:
        load_gguf_model(MODEL, batch_size=bad)
    assert "\n" not in str(err.value) and f"batch_size={bad!r}" in str(err.value)
    with pytest.raises(ConfigError, match=r"^llamacpp_batch="):
        check_batch_size(bad)
    assert check_batch_size(8) == 8


def test_the_batch_size_setting_reaches_a_loaded_model(
    smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from llmapps.models.llamacpp import load_gguf_model
    from llmapps.models.pool import ModelPool
    from llmapps.settings import Settings

    monkeypatch.setenv("LLMAPPS_GENERATION__LLAMACPP_BATCH", "5")
    assert Settings().generation.llamacpp_batch == 5
    monkeypatch.setenv("LLMAPPS_GENERATION__LLAMACPP_BATCH", "0")
    with pytest.raises(ValidationError, match="llamacpp_batch"):
        Settings()
    monkeypatch.delenv("LLMAPPS_GENERATION__LLAMACPP_BATCH")
    pool = ModelPool()
    fresh = load_gguf_model(MODEL, pool=pool)
    assert fresh.batch_size == Settings().generation.llamacpp_batch == 3
    assert load_gguf_model(MODEL, pool=pool, batch_size=2) is fresh and fresh.batch_size == 2
    from llmapps.models.llamacpp import clear_gguf_cache

    clear_gguf_cache(pool)
