"""The stitched, shared-prefix prefill of ``LocalModel.generate``.

Each prompt of a batch but its last token is prefilled without padding (the tokens all prompts
start with once, each group of rows of one length continuing from a copy of that cache), and the
caches are stitched into one left-padded batch cache that ``generate`` decodes from.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

# The shortest common prompt start worth a prefill of its own (shorter: each row prefills it).
_MIN_SHARED_PREFIX = 32


@functools.cache
def cache_arg() -> str:
    """The name transformers gives the KV cache, as a model/``generate`` argument and an output
    field: ``cache`` in recent 5.x (``past_key_values`` is deprecated there), else
    ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    names = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in names else "past_key_values"


class UnstitchableCache(Exception):
    """The model's cache has a layer of a type the stitch does not handle."""


def stitched_prefill(
    model: Any,
    batch: list[list[int]],
    width: int,
    max_new_tokens: int,
    *,
    static: bool,
    chunk: int | None = None,
) -> Any:
    """Prefill each prompt but its last token without padding; return one left-padded cache.

    A padded prefill spends its time on pad tokens and on an explicit attention mask (SDPA
    then cannot take its plain causal path); prompts of 324-596 tokens prefilled one by one
    took 0.53 s against 0.80 s padded at batch 32. Row ``i``'s keys and values go to the
    last ``L_i - 1`` of ``width - 1`` cache positions, so the batch looks exactly as if it had
    been prefilled left-padded: ``generate`` then gets the full padded prompts, computes the
    positions from the attention mask as usual and feeds only the last token of each row.

    **Shared prefix.** The tokens every row starts with (the instruction and, with
    ``example_selection=order``, the worked examples) are prefilled once, and each group of
    rows continues from a copy of that cache (a chunked prefill: the same attention, exact up
    to float rounding). Only a prefix of at least ``_MIN_SHARED_PREFIX`` tokens is shared.

    **Sliding-window layers** (Gemma 3: 5 of every 6 layers see 512 tokens) keep only their
    last ``window - 1`` keys; those are right-aligned the same way, and the layer's length
    counter is set to the padded width, so the mask ``generate`` builds maps each cached key
    to its place in the padded batch, as for a full layer.

    Returns None (the caller prefills padded batches) where this does not apply: one row of
    no shared prefix or rows of one length with none (nothing to gain) when there are no
    chunks to prefill, a one-token prompt, an encoder-decoder model. ``static`` asks for a
    ``StaticCache`` (a ``DynamicCache`` where the model has sliding-window layers or other
    layer types).

    **Chunks** (``chunk``, for models with sliding-window layers): each row's tokens go through
    the model ``chunk`` at a time, each chunk continuing the cache of the ones before. A
    sliding-window layer then attends over its window plus the chunk instead of a masked
    square of the whole prompt (SDPA's CPU kernel computes every block of an explicit mask):
    the same attention, exact up to float rounding (equal caches and texts in fp32, see
    tests/test_local_prefill.py). Off by default (``generation.prefill_chunk_tokens``): on
    Gemma's 2,048-token few-shot prompts 512-token chunks ran at the speed of one pass (67.8 vs
    67.7 tokens/s, ``bench_generation --also-chunk 512``, results
    ``bench_generation_gemma_chunk.json``).

    Raises:
        UnstitchableCache: the model's own cache holds a layer of a type not handled here (the
            caller stops stitching for that model).
    """
    import torch
    from transformers.cache_utils import (
        DynamicLayer,
        DynamicSlidingWindowLayer,
        StaticCache,
        StaticLayer,
    )

    lengths = [len(ids) for ids in batch]
    if min(lengths) < 2 or model.config.is_encoder_decoder:
        return None
    config = model.config.get_text_config(decoder=True)
    step = chunk if chunk and _has_sliding_layers(config) and max(lengths) - 1 > chunk else None
    shared = shared_prefix(batch) if len(batch) > 1 else 0
    if shared < _MIN_SHARED_PREFIX:
        shared = 0
        if len(set(lengths)) < 2 and step is None:
            return None
    keep = {"logits_to_keep": 1} if _accepts(model.forward, "logits_to_keep") else {}
    kinds = (DynamicLayer, DynamicSlidingWindowLayer)

    def plain(cache: Any) -> bool:
        layers: list[Any] = list(getattr(cache, "layers", None) or [])
        return bool(layers) and all(type(layer) in kinds for layer in layers)

    prefix_cache: Any = None

    def forward(ids: torch.Tensor, cache: Any) -> Any:
        """The cache after ``ids`` (continuing ``cache``, None: empty), ``step`` tokens a pass."""
        size = step or ids.shape[1]
        for at in range(0, ids.shape[1], size):
            extra = {cache_arg(): cache} if cache is not None else {}
            out = model(input_ids=ids[:, at : at + size], use_cache=True, **extra, **keep)
            cache = getattr(out, cache_arg())
        return cache

    if shared:
        ids = torch.tensor([batch[0][:shared]], dtype=torch.long, device=model.device)
        prefix_cache = forward(ids, None)
        if not plain(prefix_cache):
            raise UnstitchableCache(f"a {type(prefix_cache).__name__} of layers not handled here")

    def continued(rows: int) -> Any:
        """A copy of the prefix cache for ``rows`` rows, ``shared`` tokens long."""
        data = [
            (
                layer.keys.expand(rows, -1, -1, -1).contiguous(),
                layer.values.expand(rows, -1, -1, -1).contiguous(),
            )
            for layer in prefix_cache.layers
        ]
        return _dynamic_cache(data, config, shared)

    # rows of one length share a forward pass (no padding either way)
    groups: dict[int, list[int]] = {}
    for row, n in enumerate(lengths):
        groups.setdefault(n, []).append(row)
    past = width - 1
    stitched: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    for n, rows in groups.items():
        start = shared if n - 1 > shared else 0  # a row that is all prefix: prefill it whole
        ids = torch.tensor(
            [batch[r][start:-1] for r in rows], dtype=torch.long, device=model.device
        )
        pkv = forward(ids, continued(len(rows)) if start else None)
        if not plain(pkv):
            raise UnstitchableCache(f"a {type(pkv).__name__} of layers not handled here")
        if stitched is None:
            stitched = [
                (
                    layer.keys.new_zeros(
                        (len(batch), layer.keys.shape[1], _kept(layer, past), layer.keys.shape[3])
                    ),
                    layer.values.new_zeros(
                        (
                            len(batch),
                            layer.values.shape[1],
                            _kept(layer, past),
                            layer.values.shape[3],
                        )
                    ),
                )
                for layer in pkv.layers
            ]
        index = torch.tensor(rows, device=model.device)
        for (keys, values), layer in zip(stitched, pkv.layers, strict=True):
            m = layer.keys.shape[2]  # n - 1, or the window's last keys of them
            keys[index, :, keys.shape[2] - m :] = layer.keys
            values[index, :, values.shape[2] - m :] = layer.values
    assert stitched is not None
    sliding = [isinstance(layer, DynamicSlidingWindowLayer) for layer in pkv.layers]
    if not static or any(sliding):
        return _dynamic_cache(stitched, config, past)
    cache = StaticCache(config=config, max_cache_len=width + max_new_tokens)
    if len(cache.layers) != len(stitched) or any(
        type(layer) is not StaticLayer for layer in cache.layers
    ):
        return _dynamic_cache(stitched, config, past)
    static_layers: list[Any] = list(cache.layers)  # all StaticLayer, checked just above
    for layer, (keys, values) in zip(static_layers, stitched, strict=True):
        layer.lazy_initialization(keys, values)
        layer.keys[:, :, :past] = keys
        layer.values[:, :, :past] = values
        layer.cumulative_length.fill_(past)
    return cache


def shared_prefix(batch: list[list[int]]) -> int:
    """Tokens every row starts with, short of each row's last token (fed to ``generate``)."""
    first = batch[0]
    n = min(len(ids) for ids in batch) - 1
    for ids in batch[1:]:
        i = 0
        while i < n and ids[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _kept(layer: Any, past: int) -> int:
    """Cache positions a stitched layer holds: ``past``, or a sliding layer's window less one."""
    window = getattr(layer, "sliding_window", None)
    return min(past, int(window) - 1) if window else past


def _dynamic_cache(stitched: list[Any], config: Any, past: int) -> Any:
    """A ``DynamicCache`` holding these tensors, every layer ``past`` tokens long (a sliding
    layer holds only the last ``window - 1`` of them)."""
    from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

    cache = DynamicCache(stitched, config=config)
    layers: list[Any] = list(cache.layers)
    for layer in layers:
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = past  # its keys are the last window - 1 of them
    return cache


def _has_sliding_layers(config: Any) -> bool:
    """Whether some of the model's layers attend over a sliding window."""
    types = getattr(config, "layer_types", None) or []
    return bool(getattr(config, "sliding_window", None)) and any("sliding" in t for t in types)


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
