"""Perplexity of reference texts under a local causal LM.

What is scored: the reference text alone (a BOS token, when the tokenizer adds one, then the
reference), not the reference after a strategy's prompt. Prompts differ per strategy (worked
examples, chat templates), so conditioning on them would measure the prompt as much as the model;
the unconditioned figure compares models on the same text. Lower is better.

Per-text results keep the summed negative log-likelihood and the token count, so a corpus
perplexity is ``exp(sum nll / sum tokens)`` over any subset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmapps.models.local import LocalModel


def token_nll(lm: LocalModel, texts: Sequence[str], batch_size: int = 8) -> list[tuple[float, int]]:
    """Summed negative log-likelihood (nats) and number of scored tokens of each text.

    An empty text gives ``(0.0, 0)``. Texts longer than the model's context keep their start.
    """
    import torch

    tok = lm.tokenizer
    limit = lm.context_length
    encoded = [
        tok(t, add_special_tokens=True)["input_ids"][:limit] if t.strip() else [] for t in texts
    ]
    results: list[tuple[float, int]] = [(0.0, 0)] * len(texts)
    order = [i for i in range(len(texts)) if len(encoded[i]) >= 2]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = lm.model.device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        # right padding: positions stay 0..n-1, as in training
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            logits = lm.model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
        for row, i in enumerate(chunk):
            results[i] = (float(nll[row].sum()), int(mask[row, 1:].sum()))
    return results


def perplexity(nll_sum: float, n_tokens: int) -> float | None:
    """``exp(nll / tokens)``, or None for nothing scored."""
    if n_tokens <= 0:
        return None
    return math.exp(nll_sum / n_tokens)


def perplexities(lm: LocalModel, texts: Sequence[str], batch_size: int = 8) -> list[float | None]:
    """Perplexity of each text under ``lm`` (None for an empty text)."""
    return [perplexity(s, n) for s, n in token_nll(lm, texts, batch_size)]
