"""The chunked, stitched prefill of ``LocalModel.generate`` on a model with sliding-window layers.

A randomly initialised Gemma 3 (seeded, fp32, saved with ``save_pretrained`` beside the tiny
tokenizer) with a sliding window of 8 tokens and prompts of 20-70 tokens, so every prompt runs
past the window and through several chunks: the chunked prefill's cache equals the one-pass
prefill's, and greedy texts equal the one-pass, the padded and the one-by-one paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from testkit import random_causal_lm

from llmapps.models.local import GenerationParams, LocalModel, load_local_model

PROMPTS = [
    "The council voted on the new budget after a long debate about the roads, the schools and "
    "the library, and the mayor said",
    "Scientists at the northern observatory reported a faint signal that",
    "Markets opened lower as traders weighed the news from the central bank and the figures on "
    "jobs, prices, wages and the housing market from the last quarter, which",
    "Rain fell across the valley for the third day in a row and",
    "The club's new coach said the team would play a faster game after the long winter break, "
    "and the players agreed that the training had been hard but",
]


@pytest.fixture(scope="module")
def gemma_dir(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A seeded random Gemma 3 text model: 4 layers, 3 of them on an 8-token sliding window."""
    return random_causal_lm(
        tmp_path_factory.mktemp("random-gemma3"),
        tiny_base,
        "Gemma3",
        4321,
        num_hidden_layers=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        max_position_embeddings=512,
    )


@pytest.fixture()
def lm(gemma_dir: str) -> Iterator[LocalModel]:
    model = load_local_model(gemma_dir, device="cpu", dtype="float32", batch_size=8)
    saved = (model.prefill_chunk, model.stitch_prefill, model.batch_size)
    yield model
    model.prefill_chunk, model.stitch_prefill, model.batch_size = saved


def _encoded(lm: LocalModel, prompts: list[str]) -> list[list[int]]:
    ids = [lm.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    return sorted(ids, key=len, reverse=True)


def test_prompts_run_past_the_window_in_several_chunks(lm: LocalModel) -> None:
    lengths = [len(ids) for ids in _encoded(lm, PROMPTS)]
    assert min(lengths) > 2 * 8 and max(lengths) > 4 * 5  # past the window, several chunks of 5
    assert len(set(lengths)) == len(lengths)


@pytest.mark.parametrize("chunk", [5, 8, 13])
def test_chunked_cache_equals_one_pass_cache(lm: LocalModel, chunk: int) -> None:
    import torch

    from llmapps.models.prefill import stitched_prefill

    batch = _encoded(lm, PROMPTS)
    width = len(batch[0])
    with torch.inference_mode():
        whole = stitched_prefill(lm.model, batch, width, 8, static=True)
        chunked = stitched_prefill(lm.model, batch, width, 8, static=True, chunk=chunk)
    assert len(whole.layers) == len(chunked.layers) == 4
    for a, b in zip(whole.layers, chunked.layers, strict=True):
        assert type(a) is type(b) and a.keys.shape == b.keys.shape
        assert a.get_seq_length() == b.get_seq_length() == width - 1
        torch.testing.assert_close(b.keys, a.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.values, a.values, rtol=1e-5, atol=1e-5)


def test_chunked_generate_equals_one_pass_padded_and_one_by_one(lm: LocalModel) -> None:
    params = GenerationParams(max_new_tokens=10)
    lm.prefill_chunk = None
    one_pass = [o.text for o in lm.generate(PROMPTS, params)]
    lm.prefill_chunk = 6
    chunked = lm.generate(PROMPTS, params)
    assert [o.text for o in chunked] == one_pass
    assert len(set(one_pass)) > 1, "the fixture should produce varied text"
    lm.stitch_prefill = False
    assert [o.text for o in lm.generate(PROMPTS, params)] == one_pass
    lm.stitch_prefill, lm.batch_size = True, 1
    assert [lm.generate([p], params)[0].text for p in PROMPTS] == one_pass


def test_a_single_prompt_is_chunked_too(lm: LocalModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """One prompt has no shared prefix nor lengths to group, but chunks still save attention."""
    calls: list[int] = []
    forward = lm.model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids")
        calls.append(int(ids.shape[1]) if ids is not None else -1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", spy)
    lm.prefill_chunk = 6
    params = GenerationParams(max_new_tokens=3)
    text = lm.generate([PROMPTS[0]], params)[0].text
    n = len(lm.tokenizer(PROMPTS[0])["input_ids"])
    chunks = [6] * ((n - 1) // 6) + ([(n - 1) % 6] if (n - 1) % 6 else [])
    # the prompt but its last token in chunks of 6, then generate's passes of one token each
    assert calls[: len(chunks)] == chunks and set(calls[len(chunks) :]) == {1}
    monkeypatch.setattr(lm.model, "forward", forward)
    lm.prefill_chunk = None
    assert lm.generate([PROMPTS[0]], params)[0].text == text


def test_models_without_sliding_layers_are_not_chunked() -> None:
    from transformers import LlamaConfig

    from llmapps.models.prefill import _has_sliding_layers

    assert not _has_sliding_layers(LlamaConfig())


def test_the_setting_reaches_the_loaded_model(gemma_dir: str) -> None:
    from llmapps.errors import ConfigError
    from llmapps.models.pool import ModelPool
    from llmapps.settings import load_settings

    settings = load_settings(generation={"prefill_chunk_tokens": 256})
    lm = load_local_model(gemma_dir, settings=settings, dtype="float32", pool=ModelPool())
    assert lm.prefill_chunk == 256
    assert load_local_model(gemma_dir, dtype="float32", pool=ModelPool()).prefill_chunk is None
    with pytest.raises(ConfigError, match="prefill_chunk_tokens"):
        load_settings(generation={"prefill_chunk_tokens": 4})
