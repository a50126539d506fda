"""Token masks from compiled constraints, as each backend applies them.

- ``TorchGrammarProcessor``: a transformers logits processor, one matcher per row of a batch.
- ``NumpyGrammarProcessor``: a llama-cpp-python logits processor for one completion.
- ``NumpyNoRepeatNGram``: transformers' ``no_repeat_ngram_size`` for llama.cpp.

A row whose matcher fails mid-reply (the engine gives up on a grammar it compiled) is ended with
an end token at once, never left to run on unconstrained; ``CompiledConstraint.check`` then says
why the reply is invalid. What is constrained, and how grammars compile, is ``structured``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from llmapps.models.structured import CompiledConstraint, _first_line

log = logging.getLogger(__name__)

_BITS: Any = None


def _byte_bits() -> Any:
    global _BITS
    if _BITS is None:
        import numpy as np

        _BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
    return _BITS


class TorchGrammarProcessor:
    """A transformers logits processor constraining each row of a batch to one compiled
    constraint: one matcher per row, masks computed for all live rows in parallel (llguidance's
    executor), disallowed tokens set to ``-inf``. A row ends when it takes an end-of-sequence
    token (or pad), which is all its matcher allows once the grammar is complete; rows already
    finished are left alone (transformers pads them)."""

    def __init__(
        self,
        compiled: CompiledConstraint,
        rows: int,
        prompt_width: int,
        end_ids: Sequence[int],
        *,
        guard_banned: bool = False,
    ) -> None:
        import torch
        from llguidance import LLExecutor

        self.compiled = compiled
        self.matchers = [compiled.matcher() for _ in range(rows)]
        self.live = [True] * rows
        self.failed: set[int] = set()
        self.width = prompt_width
        self.end_ids = set(end_ids)
        self.guard_banned = guard_banned  # no_repeat_ngram may ban every allowed token
        words = (compiled.tokenizer.ll.vocab_size + 31) // 32
        self.bitmask = torch.full((rows, words), -1, dtype=torch.int32)
        self.executor = _executor(LLExecutor)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch
        from llguidance.torch import fill_next_token_bitmask_par

        if input_ids.shape[1] > self.width:
            last = input_ids[:, -1].tolist()
            for row, m in enumerate(self.matchers):
                if not self.live[row]:
                    continue
                if last[row] in self.end_ids:
                    self.live[row] = False
                elif not m.consume_token(last[row]) or m.is_error():
                    # the engine failed on this row (a grammar it cannot follow, an internal
                    # error): end the row now rather than let it run on unconstrained; the
                    # final check marks the reply invalid with the reason
                    self.live[row] = False
                    self.failed.add(row)
                    log.warning("constrained decoding failed on row %d: %s", row, _matcher_error(m))
        if self.failed:
            ends = torch.tensor(sorted(self.end_ids), device=scores.device)
            for row in self.failed:
                kept = scores[row, ends].clone()
                scores[row] = float("-inf")
                scores[row, ends] = torch.where(torch.isfinite(kept), kept, 0.0)
        rows = [r for r, alive in enumerate(self.live) if alive]
        if not rows:
            return scores
        fill_next_token_bitmask_par(
            self.executor, [(self.matchers[r], r) for r in rows], self.bitmask
        )
        packed = self.bitmask[rows]
        partial = packed != -1  # words holding a disallowed token
        if not self.guard_banned and int(partial.sum()) * 8 <= partial.numel():
            # free text (most steps): few words hold a disallowed token, so set only those
            # tokens; expanding the whole 262k-token mask cost 9.5 ms a step at batch 16 on
            # Gemma (16% of its tokens/s), this 1 ms (benchmarks/results/bench_structured*.json)
            _ban_sparse(scores, packed, partial, rows)
            return scores
        allowed = self._allowed(rows, scores.shape[1])
        if len(rows) == scores.shape[0]:
            target = scores
        else:
            index = torch.tensor(rows, device=scores.device)
            target = scores[index]
        target.masked_fill_(~allowed.to(scores.device), float("-inf"))
        if self.guard_banned:
            dead = torch.isinf(target).all(dim=-1)
            if bool(dead.any()):  # every allowed token was banned: the grammar wins
                target[dead] = torch.where(
                    allowed[dead.cpu()].to(scores.device), 0.0, float("-inf")
                )
        if target is not scores:
            scores[index] = target
        return scores

    def _allowed(self, rows: list[int], vocab: int) -> Any:
        """The rows' masks as booleans over ``vocab`` tokens (beyond the engine's vocabulary:
        disallowed)."""
        import torch

        packed = self.bitmask[rows]
        bits = ((packed.unsqueeze(-1) >> _bit_index()) & 1).bool().reshape(len(rows), -1)
        if bits.shape[1] >= vocab:
            return bits[:, :vocab]
        pad = torch.zeros((len(rows), vocab - bits.shape[1]), dtype=torch.bool)
        return torch.cat([bits, pad], dim=1)


@functools.cache
def _bit_index() -> Any:
    """0..31 as int32: the bit positions of one packed mask word (built on first use)."""
    import torch

    return torch.arange(32, dtype=torch.int32)


def _ban_sparse(scores: Any, packed: Any, partial: Any, rows: list[int]) -> None:
    """Set to ``-inf`` the disallowed tokens of ``rows``, reading only the words of the packed
    mask that hold one (``partial``); tokens beyond the mask's width are disallowed. The indices
    are worked out beside the mask (CPU) and moved to the scores' device once."""
    import torch

    vocab = scores.shape[1]
    width = 32 * packed.shape[1]
    row_index = torch.tensor(rows)
    if vocab > width:
        scores[row_index.to(scores.device), width:] = float("-inf")
    where = torch.nonzero(partial)
    if where.numel() == 0:
        return
    words = packed[where[:, 0], where[:, 1]]
    banned = ((words.unsqueeze(1) >> _bit_index()) & 1) == 0
    cols = where[:, 1:2].long() * 32 + _bit_index().long()
    banned &= cols < vocab
    which = row_index[where[:, 0]].unsqueeze(1).expand(-1, 32)
    scores[which[banned].to(scores.device), cols[banned].to(scores.device)] = float("-inf")


def _matcher_error(matcher: Any) -> str:
    return _first_line(str(matcher.get_error() or "the token was refused"))[:200]


_EXECUTOR: Any = None


def _executor(factory: Callable[[], Any]) -> Any:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = factory()
    return _EXECUTOR


class NumpyGrammarProcessor:
    """A llama-cpp-python logits processor constraining one completion: it reads the tokens
    sampled so far from the ``Llama`` object (its ``n_tokens``; the first call sees the prompt
    only), advances its matcher, and sets disallowed logits to ``-inf``."""

    def __init__(
        self, compiled: CompiledConstraint, llama: Any, end_ids: Sequence[int] = ()
    ) -> None:
        self.matcher = compiled.matcher()
        self.llama = llama
        self.end_ids = list(end_ids) or [int(llama.token_eos())]
        self.failed = False
        self.start: int | None = None
        self.seen = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        n = int(self.llama.n_tokens)
        if self.start is None:
            self.start = n
        for token in input_ids[self.start + self.seen : n]:
            self.matcher.consume_token(int(token))
            self.seen += 1
        if self.matcher.is_error():  # the engine failed: end the reply (check() says why)
            if not self.failed:
                self.failed = True
                log.warning("constrained decoding failed: %s", _matcher_error(self.matcher))
            ends = [t for t in self.end_ids if t < scores.shape[0]]
            kept = scores[ends].copy()
            scores[:] = -np.inf
            scores[ends] = np.where(np.isfinite(kept), kept, 0.0)
            return scores
        mask = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = _byte_bits()[mask].reshape(-1)[: scores.shape[0]].astype(bool)
        if allowed.shape[0] < scores.shape[0]:
            allowed = np.concatenate([allowed, np.zeros(scores.shape[0] - allowed.shape[0], bool)])
        masked = np.where(allowed, scores, -np.inf).astype(scores.dtype)
        if not np.isfinite(masked).any():  # a no-repeat ban took every allowed token
            masked = np.where(allowed, 0.0, -np.inf).astype(scores.dtype)
        scores[:] = masked
        return scores


class NumpyNoRepeatNGram:
    """transformers' ``no_repeat_ngram_size`` for llama.cpp: a token that would complete an
    n-gram already in the sequence (prompt included, as transformers does) gets ``-inf``."""

    def __init__(self, n: int, llama: Any) -> None:
        self.n = n
        self.llama = llama
        self.seen: dict[tuple[int, ...], set[int]] = {}
        self.upto = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        n_tokens = int(self.llama.n_tokens)
        seq = [int(t) for t in input_ids[:n_tokens]]
        for end in range(max(self.upto, self.n), n_tokens + 1):
            gram = tuple(seq[end - self.n : end])
            self.seen.setdefault(gram[:-1], set()).add(gram[-1])
        self.upto = n_tokens + 1
        if n_tokens >= self.n - 1:
            banned = self.seen.get(tuple(seq[n_tokens - self.n + 1 :]) if self.n > 1 else ())
            if banned:
                scores[np.fromiter(banned, dtype=np.int64)] = -np.inf
        return scores
