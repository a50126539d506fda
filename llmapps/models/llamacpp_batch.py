"""Several prompts decoded at once in llama.cpp: the GGUF backend's batch path.

One decode step of a small model on a CPU is mostly the reading of its weights (Gemma 3's
262,144-token output head is its largest matrix); a step that carries one token of each of ``B``
sequences reads them once for all ``B``. ``BatchDecoder`` runs a greedy ``generate`` that way
through llama-cpp-python's low-level API: its own ``llama_context`` on the model's weights with
``n_seq_max = B`` sequences, one ``llama_decode`` per step with one token per live sequence
(``llama_batch`` entries with their own ``seq_id``), and a freed slot taking the next prompt at
once (continuous batching).

Each sequence's state is the sequential path's: the KV cache is not unified
(``kv_unified = false``: one stream per sequence), so a sequence's keys and values sit at the cells
a single-sequence context puts them in and attention sums them in the same order; a prompt's
prefix is taken from whichever slot's stream shares most of it (``llama_memory_seq_cp``, a
whole-stream copy, then ``llama_memory_seq_rm`` past the reused part), cut to the same ``n_ubatch``
multiple the sequential path uses, so its prefill runs alone and in the same chunks. Each reply
follows ``Llama.create_completion``'s loop (end-of-generation tokens, stop strings on the
detokenized bytes, the multi-byte guard, ``max_tokens``). What differs is the decode step's
matrix: ``B`` rows instead of one, and llama.cpp's CPU kernels may take another path for several
rows than for one (the repacked Q4_K weights: ``gemm`` on blocks of 4 rows, the one-row ``gemv``
for fewer), where the float sums round differently and a greedy choice between two near-equal
logits can flip. Measured on Gemma 3 270M Q4_K_M, news-riddle few-shot, 16 articles: at 3 rows the
replies were plain llama-cpp-python's and the sequential path's 16/16; at 8 rows 7/16. Hence the
default ``llamacpp_batch`` of 3. On SmolLM2's Q4_1 3 rows give the sequential replies token for
token (``tests/test_llamacpp_batch.py``).

Only greedy decoding with nothing between the logits and the choice runs here: sampling, a
repetition penalty, the n-gram ban and constrained decoding (the grammar masks read one
sequence's state through ``Llama``) go the sequential way (``batch_refusal`` says why).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmapps.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

MAX_BATCH = 64  # sequences decoded together; llama.cpp allows 256, the KV cache is the limit
CTX_STEP = 256  # a slot's context is rounded up to this


def check_batch_size(value: Any, *, name: str = "llamacpp_batch") -> int:
    """``value`` as a llama.cpp batch size (1 to ``MAX_BATCH``), or a one-line ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise ConfigError(
            f"{name}={value!r} is not a llama.cpp batch size: give a whole number of prompts "
            f"decoded together, 1 to {MAX_BATCH} (1: one prompt at a time; default 3)"
        )
    return value


def batch_refusal(params: Any) -> str | None:
    """Why a generate with ``params`` takes the sequential path; None when it can batch."""
    if params.temperature > 0:
        return "sampling (temperature > 0)"
    if params.repetition_penalty != 1.0:
        return "repetition_penalty"
    if params.no_repeat_ngram_size > 0:
        return "no_repeat_ngram_size"
    if params.constraint is not None:
        return "constrained decoding"
    if params.max_new_tokens < 1:
        return "max_new_tokens < 1"
    return None


class Reply:
    """One prompt's completion, built token by token as ``Llama.create_completion`` builds it."""

    def __init__(self, llama: Any, prompt: list[int], stop: Sequence[bytes], max_new: int) -> None:
        self._llama, self._prompt, self._stop, self._max_new = llama, prompt, list(stop), max_new
        self.tokens: list[int] = []
        self.text = b""
        self.finish = "length"
        self.done = max_new <= 0
        self._multibyte = 0

    def _detok(self) -> bytes:
        return bytes(self._llama.detokenize(self.tokens, prev_tokens=self._prompt))

    def feed(self, token: int, is_eog: bool) -> bool:
        """Take the next chosen token; True when the reply is complete."""
        if is_eog:
            self.text, self.finish, self.done = self._detok(), "stop", True
            return True
        self.tokens.append(token)
        all_text = self._detok()
        skip = False
        for k, char in enumerate(all_text[-3:]):  # create_completion's multi-byte guard
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self._multibyte = num - k
        if self._multibyte > 0:
            self._multibyte -= 1
            skip = True
        if not skip:
            hits = [s for s in self._stop if s in all_text]
            if hits:
                self.text, self.finish, self.done = (
                    all_text[: all_text.index(hits[0])],
                    "stop",
                    True,
                )
                return True
            if len(self.tokens) >= self._max_new:
                self.text, self.finish, self.done = all_text, "length", True
                return True
        return False


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this slot's stream holds
    index: int = -1  # the prompt it is generating for; -1: free
    reply: Reply | None = None
    next_token: int = -1  # chosen, not yet decoded


class BatchDecoder:
    """Greedy generation of many prompts, ``slots`` sequences per decode step, on ``llama``'s
    weights in a context of its own (see the module docstring)."""

    def __init__(
        self,
        llama: Any,
        slots: int,
        *,
        reuse_step: int,
        quiet: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.llama = llama
        self.slots = check_batch_size(slots)
        self.reuse_step = reuse_step
        self._quiet = quiet
        self._ctx: Any = None
        self._batch: Any = None
        self._slot_ctx = 0  # cells per slot of the current context
        self._slots: list[_Slot] = []
        self.reused_tokens = 0

    # -------------------------------------------------------------- the context

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes (f16 keys and values on every layer)."""
        import llama_cpp

        model = self.llama._model.model
        n_layer = llama_cpp.llama_model_n_layer(model)
        n_head = max(1, llama_cpp.llama_model_n_head(model))
        n_head_kv = llama_cpp.llama_model_n_head_kv(model) or n_head
        head = llama_cpp.llama_model_n_embd(model) // n_head
        arch = self._meta("general.architecture")
        k = int(self._meta(f"{arch}.attention.key_length") or head)
        v = int(self._meta(f"{arch}.attention.value_length") or head)
        return 2 * n_layer * n_head_kv * (k + v)

    def slots_that_fit(self, per_slot: int, memory_fraction: float) -> int:
        """Sequences of ``per_slot`` tokens whose KV cache fits ``memory_fraction`` of the
        available memory (this decoder's own cache counted as free when it would be reused)."""
        from llmapps.models.memory import available_memory

        per_slot = -(-per_slot // CTX_STEP) * CTX_STEP
        kv = self.kv_bytes_per_token()
        budget = memory_fraction * available_memory("cpu")
        if self._ctx is not None and per_slot <= self._slot_ctx:
            budget += self.slots * self._slot_ctx * kv
        return int(budget // (per_slot * kv))

    def _meta(self, key: str) -> str:
        import llama_cpp

        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self.llama._model.model, key.encode(), buf, 256)
        return buf.value.decode() if n > 0 else ""

    def _context(self, per_slot: int) -> None:
        """A context with ``slots`` streams of at least ``per_slot`` cells (kept while it fits)."""
        if self._ctx is not None and per_slot <= self._slot_ctx:
            return
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        self.close()
        per_slot = -(-per_slot // CTX_STEP) * CTX_STEP
        params = llama_cpp.llama_context_params.from_buffer_copy(self.llama.context_params)
        params.n_seq_max = self.slots
        params.kv_unified = False  # one stream per sequence: see the module docstring
        params.n_ctx = per_slot * self.slots
        params.n_batch = max(int(params.n_batch), self.slots)
        params.swa_full = True  # a reused prefix needs every cell of its sliding window
        try:
            with self._quiet():
                ctx = LlamaContext(model=self.llama._model, params=params, verbose=False)
        except ValueError as err:
            raise BackendError(
                f"llama.cpp could not allocate {self.slots} sequences of {per_slot} tokens: "
                f"{err}; lower llamacpp_batch"
            ) from err
        adapter = getattr(self.llama, "_lora_adapter", None)
        if adapter is not None:  # a LoRA applies per context: this one gets the model's too
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(float(self.llama.lora_scale))
            if llama_cpp.llama_set_adapters_lora(ctx.ctx, adapters, 1, scales):
                ctx.close()
                raise BackendError("llama.cpp could not apply the LoRA to the batch context")
        self._ctx, self._slot_ctx = ctx, per_slot
        self._batch = LlamaBatch(n_tokens=int(params.n_batch), embd=0, n_seq_max=1, verbose=False)
        self._slots = [_Slot(seq=s) for s in range(self.slots)]

    def reset(self) -> None:
        """Forget every cached prefix (the next prompts prefill from scratch)."""
        if self._ctx is not None:
            self._ctx.kv_cache_clear()
        for s in self._slots:
            s.cached, s.index, s.reply = [], -1, None

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = self._batch = None
        self._slots, self._slot_ctx = [], 0

    # -------------------------------------------------------------- decoding

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of ``(token, pos, seq, wants_logits)`` entries."""
        b = self._batch.batch
        b.n_tokens = len(entries)
        for j, (tok, pos, seq, out) in enumerate(entries):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, pos, 1, out
            b.seq_id[j][0] = seq
        self._ctx.decode(self._batch)

    def _argmax(self, row: int) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self._ctx.get_logits_ith(row), shape=(self._n_vocab,))
        return int(np.argmax(logits))  # llama.cpp's greedy sampler: the first maximum

    def _prefill(self, slot: _Slot, ids: list[int]) -> int:
        """Put prompt ``ids`` in ``slot``'s stream (reusing the longest cached prefix of any
        slot, cut to a ``reuse_step`` multiple) and return its first chosen token."""
        step = self.reuse_step

        def keep_of(s: _Slot) -> int:
            common = 0
            for a, b in zip(s.cached, ids, strict=False):
                if a != b:
                    break
                common += 1
            return min(common, len(ids) - 1) // step * step

        # any slot's stream may lend its prefix (a busy one's too: the copy is made at the
        # next decode, which is this prompt's prefill)
        own = keep_of(slot)
        src = max(self._slots, key=keep_of)
        keep = own
        if src is not slot and keep_of(src) > own:
            self._ctx.kv_cache_seq_cp(src.seq, slot.seq, -1, -1)  # the whole stream
            keep, slot.cached = keep_of(src), list(src.cached)
        self._ctx.kv_cache_seq_rm(slot.seq, keep, -1)
        slot.cached = slot.cached[:keep]
        self.reused_tokens += keep
        n_batch = int(self._batch._n_tokens)
        rest = ids[keep:]
        for start in range(0, len(rest), n_batch):
            chunk = rest[start : start + n_batch]
            last = start + len(chunk) == len(rest)
            self._decode(
                [
                    (tok, keep + start + j, slot.seq, last and j == len(chunk) - 1)
                    for j, tok in enumerate(chunk)
                ]
            )
        slot.cached = list(ids)
        return self._argmax(len(rest) - 1 - (len(rest) - 1) // n_batch * n_batch)

    def generate(
        self, encoded: Sequence[list[int]], order: Sequence[int], max_new: int, stop: Sequence[str]
    ) -> list[Reply]:
        """Greedy replies to ``encoded`` (token ids), started in ``order``, in input order."""
        import llama_cpp

        need = max(len(ids) for ids in encoded) + max_new + 1
        self._context(need)
        self._n_vocab = self.llama.n_vocab()
        vocab = self.llama._model.vocab
        stops = [s.encode("utf-8") for s in stop if s]
        replies = [Reply(self.llama, list(ids), stops, max_new) for ids in encoded]
        pending: Iterator[int] = iter(order)
        slots = self._slots
        busy: list[_Slot] = []

        def start(slot: _Slot) -> bool:
            for i in pending:
                reply = replies[i]
                if reply.done:  # max_new 0
                    continue
                token = self._prefill(slot, list(encoded[i]))
                if reply.feed(token, bool(llama_cpp.llama_vocab_is_eog(vocab, token))):
                    continue  # finished on its first token; the slot takes the next prompt
                slot.index, slot.reply, slot.next_token = i, reply, token
                return True
            slot.index, slot.reply = -1, None
            return False

        for slot in slots:
            if start(slot):
                busy.append(slot)
        while busy:
            self._decode([(s.next_token, len(s.cached), s.seq, True) for s in busy])
            chosen = [self._argmax(j) for j in range(len(busy))]  # before a refill's prefill
            still: list[_Slot] = []
            for s, token in zip(busy, chosen, strict=True):
                s.cached.append(s.next_token)
                assert s.reply is not None
                if not s.reply.feed(token, bool(llama_cpp.llama_vocab_is_eog(vocab, token))):
                    s.next_token = token
                    still.append(s)
                elif start(s):
                    still.append(s)
            busy = still
        return replies
