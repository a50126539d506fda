"""The local model layer: real ``from_pretrained`` of saved models, batched generation that matches
one-by-one greedy decoding, left padding, length-sorted batches that keep the input order, stop
strings, no prompt echo, truncation with a warning, and the LangChain wrappers over it.

The trained tiny fixtures are too small to say much more than "the the the", which would make
"batched equals one-by-one" trivially true; so next to them a randomly initialised Llama (seeded,
saved with ``save_pretrained`` beside the tiny tokenizer) gives varied, deterministic greedy text.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from testkit import random_causal_lm

from llmapps.errors import InputError, ModelNotFoundError
from llmapps.models.device import pick_dtype
from llmapps.models.local import (
    GenerationParams,
    LocalModel,
    load_local_model,
    resolve_model_path,
)
from llmapps.models.memory import estimate_generate_bytes
from llmapps.models.streaming import cut_at_stop
from llmapps.settings import load_settings

PROMPTS = [
    "The council voted on",
    "Scientists at the northern observatory reported a faint signal that",
    "Rain",
    "The club's new coach said the team would play a faster game after the long winter break, and",
    "Markets opened lower as",
    "A",
]


# a seeded, randomly initialised Llama saved in HF format with the tiny tokenizer
RANDOM_LLAMA = {
    "num_hidden_layers": 2,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
}


@pytest.fixture(scope="module")
def random_model_dir(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("random-llama")
    return random_causal_lm(out, tiny_base, "Llama", 1234, **RANDOM_LLAMA)


@pytest.fixture(scope="module")
def lm(random_model_dir: str) -> LocalModel:
    return load_local_model(random_model_dir, device="cpu", dtype="float32", batch_size=4)


def _one_by_one(lm: LocalModel, prompts: list[str], params: GenerationParams) -> list[Any]:
    saved = lm.batch_size
    lm.batch_size = 1
    try:
        return [lm.generate([p], params)[0] for p in prompts]
    finally:
        lm.batch_size = saved


def test_builtin_fixtures_load_through_from_pretrained(tiny_base: str, tiny_instruct: str) -> None:
    base = load_local_model(tiny_base)
    inst = load_local_model(tiny_instruct)
    assert type(base.model).__name__ == "LlamaForCausalLM"
    assert base.tokenizer.padding_side == "left"
    assert inst.has_chat_template
    assert load_local_model(tiny_base) is base  # cached per process
    out = base.generate(["The"], GenerationParams(max_new_tokens=4))
    assert 0 < out[0].completion_tokens <= 4


def test_batched_equals_one_by_one_greedy(lm: LocalModel) -> None:
    params = GenerationParams(max_new_tokens=12)
    batched = lm.generate(PROMPTS, params)
    single = _one_by_one(lm, PROMPTS, params)
    assert [o.text for o in batched] == [o.text for o in single]
    assert len({o.text for o in batched}) > 1, "the fixture should produce varied text"
    assert all(o.completion_tokens == 12 and o.finish_reason == "length" for o in batched)


@pytest.mark.parametrize("cache_implementation", ["static", None])
def test_unpadded_prefill_stitched_into_one_cache_matches_padded_prefill(
    lm: LocalModel, monkeypatch: pytest.MonkeyPatch, cache_implementation: str | None
) -> None:
    from transformers.cache_utils import DynamicCache, StaticCache

    # a repeated prompt makes a group of equal lengths prefilled together
    prompts = [*PROMPTS, PROMPTS[1]]
    monkeypatch.setattr(lm, "cache_implementation", cache_implementation)
    monkeypatch.setattr(lm, "batch_size", len(prompts))
    caches: list[Any] = []
    real = lm._stitched_prefill

    def spy(*args: Any, **kwargs: Any) -> Any:
        caches.append(real(*args, **kwargs))
        return caches[-1]

    monkeypatch.setattr(lm, "_stitched_prefill", spy)
    params = GenerationParams(max_new_tokens=12)
    stitched = lm.generate(prompts, params)
    expected_cache = StaticCache if cache_implementation == "static" else DynamicCache
    assert len(caches) == 1 and type(caches[0]) is expected_cache  # the stitched path ran
    monkeypatch.setattr(lm, "stitch_prefill", False)
    padded = lm.generate(prompts, params)
    assert len(caches) == 2 and caches[1] is None  # and here it did not
    assert [o.text for o in stitched] == [o.text for o in padded]
    assert [o.text for o in stitched] == [o.text for o in _one_by_one(lm, prompts, params)]


def test_left_padding_and_length_sorted_batches_keep_order(
    lm: LocalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = lm.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm.model, "generate", spy)
    params = GenerationParams(max_new_tokens=6)
    outs = lm.generate(PROMPTS, params)
    lengths = [lm.count_tokens(p) for p in PROMPTS]
    assert len(seen) == 2  # 6 prompts in batches of 4
    widths = []
    for ids, mask in seen:
        real_lengths = mask.sum(dim=1).tolist()
        widths += real_lengths
        for row in range(ids.shape[0]):
            n = real_lengths[row]
            assert mask[row, -n:].all() and not mask[row, :-n].any()  # padding on the left
            assert (ids[row, : ids.shape[1] - n] == lm.tokenizer.pad_token_id).all()
    assert widths == sorted(lengths, reverse=True)  # longest first
    monkeypatch.undo()
    assert [o.prompt_tokens for o in outs] == lengths  # results back in input order
    assert [o.text for o in outs] == [o.text for o in _one_by_one(lm, PROMPTS, params)]


def test_prompt_is_never_echoed(lm: LocalModel) -> None:
    import torch

    prompt = PROMPTS[1]
    (out,) = lm.generate([prompt], GenerationParams(max_new_tokens=8))
    ids = lm.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        full = lm.model.generate(
            **ids, max_new_tokens=8, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
        )
    expected = lm.tokenizer.decode(full[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out.text == expected
    assert prompt not in out.text


def test_stop_strings_end_each_row_on_its_own(lm: LocalModel) -> None:
    free = lm.generate(PROMPTS, GenerationParams(max_new_tokens=16))
    # a stop string taken from the middle of the first row's free text
    target = free[0].text
    stop = target[len(target) // 2 : len(target) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {target!r}"
    stopped = lm.generate(PROMPTS, GenerationParams(max_new_tokens=16, stop=[stop]))
    for f, s in zip(free, stopped, strict=True):
        expected, hit = cut_at_stop(f.text, [stop])
        assert s.text == expected
        assert stop not in s.text
        if hit:
            assert s.finish_reason == "stop"
            assert s.completion_tokens <= f.completion_tokens
        else:
            assert s.finish_reason == "length"
    assert stopped[0].finish_reason == "stop" and stopped[0].completion_tokens < 16


def test_long_prompt_is_truncated_with_a_warning(
    lm: LocalModel, caplog: pytest.LogCaptureFixture
) -> None:
    long_prompt = " ".join(["word"] * 400)
    with caplog.at_level(logging.WARNING, logger="llmapps.models.local"):
        outs = lm.generate([long_prompt, "Short"], GenerationParams(max_new_tokens=8))
    assert outs[0].truncated_prompt and not outs[1].truncated_prompt
    assert outs[0].prompt_tokens == lm.context_length - 8
    assert "prompt 0 has" in caplog.text and "keeping its last" in caplog.text


def test_budget_larger_than_context_is_an_input_error(lm: LocalModel) -> None:
    with pytest.raises(
        InputError, match=r"max_new_tokens=300 leaves no room for a prompt in the 256-token context"
    ):
        lm.generate(["x"], GenerationParams(max_new_tokens=300))


def test_empty_prompt_list() -> None:
    assert LocalModel.generate.__doc__
    # no model needed for the no-op path
    assert LocalModel.generate(object.__new__(LocalModel), []) == []  # type: ignore[arg-type]


def test_unknown_dtype_is_rejected() -> None:
    with pytest.raises(InputError, match="dtype 'float8' is not one of"):
        pick_dtype("float8", "cpu")


def test_directory_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"holds no config\.json"):
        resolve_model_path(str(tmp_path))


def test_missing_hub_model_offline_says_how_to_fix(tmp_path: Path) -> None:
    settings = load_settings(offline=True, home=tmp_path)
    with pytest.raises(
        ModelNotFoundError, match=r"cannot load the model 'no-org/no-such-model-xyz'.*hf download"
    ):
        load_local_model("no-org/no-such-model-xyz", settings=settings)


def test_unbuilt_builtin_without_build_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    with pytest.raises(ModelNotFoundError, match="llmapps models build"):
        resolve_model_path("tiny-base", settings, build=False)


def test_copied_model_dir_loads_like_any_hf_dir(random_model_dir: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(random_model_dir, copy)
    other = load_local_model(str(copy), device="cpu", dtype="float32")
    assert (
        other.generate(["Rain"], GenerationParams(max_new_tokens=5))[0].text
        == load_local_model(random_model_dir, device="cpu", dtype="float32")
        .generate(["Rain"], GenerationParams(max_new_tokens=5))[0]
        .text
    )


def test_local_llm_batch_is_one_batched_call(
    random_model_dir: str, lm: LocalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmapps.models.langchain_local import LocalLLM

    llm = LocalLLM.from_local(lm, max_new_tokens=8)
    calls: list[int] = []
    real = lm.generate

    def spy(prompts: list[str], params: GenerationParams | None = None) -> Any:
        calls.append(len(prompts))
        return real(prompts, params)

    monkeypatch.setattr(lm, "generate", spy)
    texts = llm.batch(PROMPTS)
    assert calls == [len(PROMPTS)]
    assert texts == [o.text for o in real(PROMPTS, GenerationParams(max_new_tokens=8))]
    result = llm.generate(["Rain"])
    info = result.generations[0][0].generation_info or {}
    assert info["output_tokens"] == 8 and info["input_tokens"] == lm.count_tokens("Rain")


def test_chat_local_batch_matches_invoke(tiny_instruct: str) -> None:
    from llmapps.models.langchain_local import ChatLocal

    chat = ChatLocal(model=tiny_instruct, max_new_tokens=6)
    questions = ["Write a headline for this article.\nArticle: Rain fell.", "Hello"]
    batched = chat.batch(questions)
    single = [chat.invoke(q) for q in questions]
    assert [m.content for m in batched] == [m.content for m in single]
    assert all(m.usage_metadata and m.usage_metadata["output_tokens"] <= 6 for m in batched)


def test_weights_left_on_meta_are_reloaded_or_reported(
    tiny_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: from_pretrained returning a model with tensors on the meta device (seen once
    in a long demo run) is reloaded once; if that does not help, a BackendError names them."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmapps.errors import BackendError
    from llmapps.models import local
    from llmapps.settings import get_settings

    real = AutoModelForCausalLM.from_pretrained
    calls: list[int] = []

    def broken_first(*args: object, **kwargs: object) -> object:
        model = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1 or always_broken:
            model.model.norm.weight = torch.nn.Parameter(
                torch.empty(model.model.norm.weight.shape, device="meta")
            )
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", broken_first)
    always_broken = False
    model, _ = local._from_pretrained(tiny_base, "cpu", "float32", get_settings())
    assert len(calls) == 2 and not local._meta_tensors(model)

    always_broken = True
    with pytest.raises(
        BackendError, match=r"left 1 tensor\(s\) without data \(model\.norm\.weight\)"
    ):
        local._from_pretrained(tiny_base, "cpu", "float32", get_settings())


def test_memory_budget_splits_chunks_and_keeps_outputs(
    lm: LocalModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunk that would exceed the memory budget is split before generating; the outputs are the
    same as one big chunk's, and a prompt that cannot fit even alone is one clear error."""
    params = GenerationParams(max_new_tokens=6)
    whole = lm.generate(PROMPTS, params)
    longest = max(lm.count_tokens(p) for p in PROMPTS)
    two_rows = estimate_generate_bytes(lm.model.config, 2, longest, 6, 4)
    monkeypatch.setenv("LLMAPPS_GENERATION__MEMORY_BUDGET_GB", f"{two_rows * 1.01 / 2**30:.9f}")
    with caplog.at_level("INFO", logger="llmapps.models.memory"):
        split = lm.generate(PROMPTS, params)
    assert [o.text for o in split] == [o.text for o in whole]
    assert any("per chunk fit" in r.getMessage() for r in caplog.records)
    one_row = estimate_generate_bytes(lm.model.config, 1, longest, 6, 4)
    monkeypatch.setenv("LLMAPPS_GENERATION__MEMORY_BUDGET_GB", f"{one_row * 0.5 / 2**30:.9f}")
    with pytest.raises(InputError, match="more than the memory budget"):
        lm.generate(PROMPTS, params)


def test_memory_estimate_grows_with_rows_and_length_and_respects_sliding_windows() -> None:
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(
        num_hidden_layers=6,
        sliding_window=512,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=1000,
    )
    small = estimate_generate_bytes(cfg, 1, 1000, 16, 4)
    assert estimate_generate_bytes(cfg, 2, 1000, 16, 4) > small
    assert estimate_generate_bytes(cfg, 1, 2000, 16, 4) > 3 * small  # attention grows with L^2
    full = Gemma3TextConfig(**{**cfg.to_dict(), "layer_types": ["full_attention"] * 6})
    assert estimate_generate_bytes(full, 1, 1000, 16, 4) > small  # windows keep less KV cache


def test_names_moved_out_of_local_stay_importable_from_it() -> None:
    """The device and dtype choice, the memory estimate, stop strings and streaming moved to
    modules of their own; code that imports them from ``llmapps.models.local`` keeps working,
    with the same objects."""
    from llmapps.models import device, local, memory, streaming

    for module, name in [
        (device, "pick_device"),
        (device, "pick_dtype"),
        (memory, "available_memory"),
        (memory, "estimate_generate_bytes"),
        (streaming, "cut_at_stop"),
        (streaming, "stream_local"),
    ]:
        assert getattr(local, name) is getattr(module, name), name


def test_tiny_models_take_their_corpus_as_an_argument(tiny_models: Path, tmp_path: Path) -> None:
    """The model layer looks up no app's corpus: a function is called only when nothing is built,
    and with no corpus and nothing built the error says how to build."""
    from llmapps.models.tiny import TEST_SPEC, ensure_tiny_models

    def never() -> list[dict[str, str]]:
        raise AssertionError("the corpus was read although the models are built")

    assert ensure_tiny_models(tiny_models, TEST_SPEC, never, progress=False) == tiny_models
    assert ensure_tiny_models(tiny_models, TEST_SPEC, progress=False) == tiny_models
    with pytest.raises(ModelNotFoundError, match=r"not built yet.*llmapps models build"):
        ensure_tiny_models(tmp_path / "none", TEST_SPEC)
    with pytest.raises(InputError, match="at least 5 are needed"):  # the function was called
        ensure_tiny_models(tmp_path / "few", TEST_SPEC, lambda: [{"title": "t", "text": "x"}])
