"""The model-backend contract, run on every registered backend (``BACKENDS``): a new backend is
one file, one registration and its ``example_source``, and this suite picks it up by name.

Each backend loads its own small offline model (``Backend.example_source``: the tiny instruct
model on transformers, the packaged SmolLM2 GGUF on llama.cpp) through the one loader, and must
give what a strategy calls (``LocalLM``), generate greedily the same text alone and in a batch,
answer through the LangChain classes it makes, hold a reply to a choice constraint, and say
whether it has logits through its capabilities, not its class.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmapps.api.backends import BACKENDS, LocalLM
from llmapps.api.generation import GenerationParams, OutputConstraint
from llmapps.errors import ConfigError
from llmapps.models.loader import chat_llm, completion_llm, get_backend, load_model, with_logits

pytestmark = pytest.mark.usefixtures("tiny_models")

PROMPTS = ["The river runs", "Once upon a time"]


@pytest.fixture(scope="module", params=BACKENDS.names())
def loaded(request: pytest.FixtureRequest) -> tuple[str, Any]:
    name = request.param
    source = get_backend(name).example_source
    if not source:
        pytest.skip(f"backend {name!r} names no example_source")
    try:
        return name, load_model(source, name)
    except ConfigError as err:  # not installed here, or its model package is missing
        pytest.skip(f"{name}: {err}")


def test_registered_under_its_name() -> None:
    assert {"transformers", "llama.cpp"} <= set(BACKENDS.names())
    for name in BACKENDS.names():
        assert BACKENDS.get(name).name == name
    with pytest.raises(ConfigError, match=r"backend 'nope' is not one of .*transformers"):
        get_backend("nope")


def test_loaded_model_is_a_local_lm_naming_its_backend(loaded: tuple[str, Any]) -> None:
    name, lm = loaded
    assert isinstance(lm, LocalLM) and lm.backend == name
    assert lm.context_length > 16 and lm.count_tokens("a few words here") > 0
    assert len(lm.tokenizer("a few words", add_special_tokens=False)["input_ids"]) > 0


def test_greedy_batch_equals_one_by_one(loaded: tuple[str, Any]) -> None:
    _, lm = loaded
    params = GenerationParams(max_new_tokens=8)
    batch = lm.generate(PROMPTS, params)
    alone = [lm.generate([p], params)[0] for p in PROMPTS]
    assert [o.text for o in batch] == [o.text for o in alone]
    assert all(o.completion_tokens <= 8 and o.finish_reason in ("stop", "length") for o in batch)


def test_langchain_models_come_from_the_backend(loaded: tuple[str, Any]) -> None:
    _, lm = loaded
    direct = lm.generate([PROMPTS[0]], GenerationParams(max_new_tokens=6))[0].text
    assert completion_llm(lm, max_new_tokens=6).invoke(PROMPTS[0]) == direct
    if lm.has_chat_template:
        reply = chat_llm(lm, max_new_tokens=6).invoke("Say hello.")
        assert isinstance(reply.content, str) and reply.usage_metadata["output_tokens"] <= 6


def test_logits_follow_the_capabilities(loaded: tuple[str, Any]) -> None:
    name, lm = loaded
    has = BACKENDS.get(name).capabilities.logits
    assert (with_logits(lm) is lm) if has else (with_logits(lm) is None)


def test_choice_constraint_holds(loaded: tuple[str, Any]) -> None:
    _, lm = loaded
    constraint = OutputConstraint("choice", ["yes", "no"])
    if lm.constraint_refusal(constraint) is not None:
        pytest.skip(str(lm.constraint_refusal(constraint)))
    (out,) = lm.generate(
        ["Is water wet?"], GenerationParams(max_new_tokens=4, constraint=constraint)
    )
    assert out.text in ("yes", "no") and out.constraint_error is None
