"""``ModelPool``: loaded models are shared through a pool that is passed in (default one per
process), and the batch size belongs to each caller, never to the shared model."""

from __future__ import annotations

import pytest

from llmapps.errors import ConfigError


def test_batch_size_is_the_callers_and_the_weights_are_shared(tiny_base: str) -> None:
    from llmapps.models.local import load_local_model
    from llmapps.models.pool import ModelPool

    pool = ModelPool()
    a = load_local_model(tiny_base, device="cpu", dtype="float32", batch_size=2, pool=pool)
    b = load_local_model(tiny_base, device="cpu", dtype="float32", batch_size=5, pool=pool)
    plain = load_local_model(tiny_base, device="cpu", dtype="float32", pool=pool)
    assert (a.batch_size, b.batch_size) == (2, 5)  # the last caller's size no longer wins for all
    assert a.model is b.model is plain.model and a.tokenizer is b.tokenizer
    assert len(pool) == 1 and pool.loaded("transformers")


def test_a_private_pool_is_separate_from_the_process_one_and_clears_whole(tiny_base: str) -> None:
    from llmapps.models.local import clear_model_cache, load_local_model
    from llmapps.models.pool import ModelPool, default_pool

    pool = ModelPool()
    mine = load_local_model(tiny_base, device="cpu", dtype="float32", pool=pool)
    shared = load_local_model(tiny_base, device="cpu", dtype="float32")
    assert mine.model is not shared.model  # two pools, two loads
    assert load_local_model(tiny_base, device="cpu", dtype="float32") is shared
    clear_model_cache(pool)
    assert len(pool) == 0 and default_pool().loaded("transformers")
    again = load_local_model(tiny_base, device="cpu", dtype="float32", pool=pool)
    assert again.model is not mine.model  # loaded afresh


def test_per_call_batch_size_gives_the_same_greedy_outputs(tiny_base: str) -> None:
    from llmapps.models.local import GenerationParams, load_local_model

    lm = load_local_model(tiny_base, device="cpu", dtype="float32", batch_size=4)
    prompts = ["The council voted", "Rain fell on the harbour and", "A new bridge"]
    params = GenerationParams(max_new_tokens=6)
    one = [o.text for o in lm.generate(prompts, params, batch_size=1)]
    assert one == [o.text for o in lm.generate(prompts, params)]
    assert lm.batch_size == 4


def test_a_strategy_loads_into_the_pool_it_is_given(tiny_models) -> None:
    from llmapps.models.pool import ModelPool, default_pool
    from llmapps.strategies.zero_shot import ZeroShotStrategy

    pool = ModelPool()
    strategy = ZeroShotStrategy(pool=pool, batch_size=3)
    assert strategy.pool is pool and strategy.local_model.batch_size == 3
    assert [k[0] for k in pool.loaded()] == ["transformers"]
    assert ZeroShotStrategy().pool is default_pool()
    with pytest.raises(ConfigError, match="batch_size"):
        ZeroShotStrategy(pool=pool, batch_size=0)
