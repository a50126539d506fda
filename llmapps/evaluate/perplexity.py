"""Perplexity of reference texts under a local causal LM.

Two figures, lower is better:

- ``continuation_nll``: the reference reply *after a prompt*, as the model would have to write it
  (what ``llmapps bench`` reports: each strategy's own prompt, worked examples or chat template
  included, then the reference in the layout that prompt asks for). It measures how well a
  strategy, prompt and model together expect the right answer;
- ``token_nll``: the reference text alone (a BOS token, when the tokenizer adds one, then the
  text): the same text for every model, so it compares models, not strategies.

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


def continuation_nll(
    lm: LocalModel, prompts: Sequence[str], continuations: Sequence[str]
) -> list[tuple[float, int]]:
    """Summed negative log-likelihood (nats) and token count of each continuation after its prompt.

    The prompt is encoded as ``LocalModel.generate`` encodes it (special tokens added), the
    continuation without special tokens, as the model would continue it; only the continuation's
    tokens are scored and only their positions are projected onto the vocabulary. A sequence
    longer than the model's context loses the start of its prompt. An empty continuation gives
    ``(0.0, 0)``. Rows run one at a time: prompts of different strategies differ a lot in length.
    """
    import torch

    if len(prompts) != len(continuations):
        from llmapps.errors import InputError

        raise InputError(
            f"{len(prompts)} prompts but {len(continuations)} continuations; they must align"
        )
    tok = lm.tokenizer
    device = lm.model.device
    out: list[tuple[float, int]] = []
    for prompt, cont in zip(prompts, continuations, strict=True):
        c_ids = tok(cont, add_special_tokens=False)["input_ids"] if cont.strip() else []
        if not c_ids:
            out.append((0.0, 0))
            continue
        ids = (tok(prompt, add_special_tokens=True)["input_ids"] + c_ids)[-lm.context_length :]
        n = min(len(c_ids), len(ids) - 1)
        x = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.inference_mode():
            logits = lm.model(input_ids=x, logits_to_keep=n + 1).logits.float()[0, :-1]
        target = x[0, -n:]
        nll = -torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).sum()
        out.append((float(nll), n))
    return out


def perplexity(nll_sum: float, n_tokens: int) -> float | None:
    """``exp(nll / tokens)``, or None for nothing scored."""
    if n_tokens <= 0:
        return None
    return math.exp(nll_sum / n_tokens)


def perplexities(lm: LocalModel, texts: Sequence[str], batch_size: int = 8) -> list[float | None]:
    """Perplexity of each text under ``lm`` (None for an empty text)."""
    return [perplexity(s, n) for s, n in token_nll(lm, texts, batch_size)]
