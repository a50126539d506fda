"""How much memory a batched generate may use, and how many prompts one chunk can take."""

from __future__ import annotations

import logging
from typing import Any

from llmapps.errors import InputError

log = logging.getLogger(__name__)


def available_memory(device: str) -> int:
    """Bytes free for new allocations: free VRAM on CUDA, else available RAM."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_generate_bytes(
    config: Any, rows: int, width: int, max_new: int, dtype_bytes: int
) -> int:
    """A deliberately high estimate of what generating ``rows`` prompts of up to ``width``
    tokens costs beyond the weights: the KV cache for ``width + max_new`` positions (sliding-window
    layers keep only their window), plus the largest transient of one layer's prefill (attention
    scores and probabilities in float32 when the math kernel materializes them, the MLP's
    activations, the layer's full keys and values before a sliding window trims them), plus the
    last position's logits over the vocabulary. 10% on top for the allocator.

    For Gemma 3 270M (18 layers, 1 KV head of 256, 262,144-token vocabulary), 8 prompts of 2,048
    tokens come to ~1.7 GiB in float32 (1.4 in bf16), of which the prefill's attention is most; at
    the 32,768-token context one prompt alone comes to ~36 GiB, which is why the prompt budget, not
    the context, is the target.
    """
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = int(getattr(cfg, "num_hidden_layers", 1))
    heads = int(getattr(cfg, "num_attention_heads", 1))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    hidden = int(getattr(cfg, "hidden_size", 1))
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    vocab = int(getattr(cfg, "vocab_size", 1))
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * layers
    total = width + max_new
    per_position = kv_heads * head_dim * 2 * dtype_bytes
    kv = sum(
        rows
        * (min(int(window), total) if window and t == "sliding_attention" else total)
        * per_position
        for t in types
    )
    attention = rows * heads * width * width * 4 * 2
    mlp = rows * width * inter * dtype_bytes * 3
    states = rows * width * hidden * dtype_bytes * 4
    layer_kv = rows * width * heads * head_dim * 2 * dtype_bytes
    logits = rows * vocab * 4 * 2
    return int(1.1 * (kv + max(attention, mlp) + states + layer_kv + logits))


def rows_within_budget(
    config: Any, dtype_bytes: int, name: str, lengths: list[int], max_new: int, budget: int
) -> int:
    """How many of ``lengths`` (prompt lengths, longest first) one chunk can take within
    ``budget`` bytes, for the model ``name`` of this ``config`` in ``dtype_bytes``-byte weights.

    Raises:
        InputError: even the longest prompt alone does not fit.
    """
    rows = len(lengths)
    while rows > 0:
        need = estimate_generate_bytes(config, rows, lengths[0], max_new, dtype_bytes)
        if need <= budget:
            break
        rows = rows // 2 if rows > 8 else rows - 1
    if rows == 0:
        need = estimate_generate_bytes(config, 1, lengths[0], max_new, dtype_bytes)
        raise InputError(
            f"a prompt of {lengths[0]} tokens with {max_new} new tokens needs about "
            f"{need / 2**30:.1f} GiB for {name!r}, more than the memory budget of "
            f"{budget / 2**30:.1f} GiB: shorten the input, lower generation.max_prompt_tokens, "
            "or raise generation.memory_budget_gb"
        )
    if rows < len(lengths):
        log.info(
            "%s: %d prompts of up to %d tokens per chunk fit the %.1f GiB memory budget",
            name,
            rows,
            lengths[0],
            budget / 2**30,
        )
    return rows
