"""Stop strings and streaming for local generation: the per-row stopping criterion
``LocalModel.generate`` decodes with, the cut at the first stop string, and ``stream_local``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from llmapps.errors import BackendError

if TYPE_CHECKING:
    import torch

    from llmapps.models.local import GenerationParams, LocalModel

log = logging.getLogger(__name__)


class StopStrings:
    """A per-row stopping criterion: every ``every`` steps, decode each row's new tokens and
    mark rows whose text holds a stop string (transformers' ``StopStringCriteria`` works per step
    over token-level tables, which costs more than the tiny models' forward passes)."""

    def __init__(self, tokenizer: Any, stop: list[str], prompt_width: int, every: int = 4) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.start = prompt_width
        self.every = every
        self.steps = 0
        self.done: Any = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        self.steps += 1
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.steps % self.every == 0:
            new = input_ids[:, self.start :].tolist()
            for row, ids in enumerate(new):
                if not self.done[row]:
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    if any(s and s in text for s in self.stop):
                        self.done[row] = True
        return self.done.clone()


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; say whether one was found."""
    first = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:first], True) if first >= 0 else (text, False)


def stream_local(lm: LocalModel, prompt: str, params: GenerationParams) -> Any:
    """Yield text pieces of one completion as they are generated (stop strings honoured).

    With ``params.constraint`` the reply is constrained as in ``LocalModel.generate``; a
    constraint that does not compile raises ``ConstraintError`` before any token, and a reply that
    did not complete it is logged (a stream has no field to carry ``constraint_error``).
    """
    import torch
    from transformers import TextIteratorStreamer

    from llmapps.models.grammar_masks import TorchGrammarProcessor
    from llmapps.models.local import repetition_kwargs

    compiled = lm.compile(params.constraint) if params.constraint is not None else None
    ids = lm.tokenizer(prompt, add_special_tokens=True, return_tensors="pt")
    limit = lm.context_length - params.max_new_tokens
    input_ids = ids["input_ids"][:, -limit:].to(lm.model.device)
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "max_new_tokens": params.max_new_tokens,
        "pad_token_id": lm.tokenizer.pad_token_id,
        "do_sample": params.temperature > 0,
        "streamer": streamer,
    }
    if params.temperature > 0:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if params.stop:
        # the same criterion as LocalModel.generate: transformers' stop_strings builds token
        # tables whose size grows with the strings' length (a 20,000-character stop cost ~626 MB,
        # 900,000 characters OOM-killed the server); ours decodes the new tokens and searches
        # them, so memory does not depend on the stop strings. The cut below is exact.
        kwargs["stopping_criteria"] = [
            StopStrings(lm.tokenizer, list(params.stop), input_ids.shape[1])
        ]
    kwargs.update(repetition_kwargs(params))
    if compiled is not None:
        ends = set(lm.end_ids()) | {lm.tokenizer.pad_token_id}
        kwargs["logits_processor"] = [
            TorchGrammarProcessor(
                compiled,
                1,
                input_ids.shape[1],
                sorted(e for e in ends if e is not None),
                guard_banned=params.no_repeat_ngram_size > 0,
            )
        ]

    failure: list[BaseException] = []

    def run() -> None:
        try:
            with lm._lock, torch.inference_mode():
                cast(Any, lm.model).generate(**kwargs)
        except BaseException as err:  # re-raised below; end() so the reader does not wait forever
            failure.append(err)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    emitted = ""
    held = ""
    hit = False
    for piece in streamer:
        held += piece
        text, hit = cut_at_stop(emitted + held, params.stop)
        if hit:
            if len(text) > len(emitted):
                yield text[len(emitted) :]
            break
        # hold back a tail that could be the start of a stop string
        keep = max((len(s) - 1 for s in params.stop), default=0)
        safe = len(held) - keep if keep else len(held)
        if safe > 0:
            yield held[:safe]
            emitted += held[:safe]
            held = held[safe:]
    else:
        if held:
            yield held
    if hit:  # stopped early: drain so the generate thread can finish (an exhausted
        for _ in streamer:  # TextIteratorStreamer would block forever if iterated again)
            pass
    thread.join()
    if failure:
        raise BackendError(f"generation with {lm.name!r} failed: {failure[0]}") from failure[0]
    if compiled is not None:
        full = text if hit else emitted + held
        used = len(lm.tokenizer(full, add_special_tokens=False)["input_ids"])
        finish = "length" if not hit and used >= params.max_new_tokens else "stop"
        reason = compiled.check(full, finish, params.max_new_tokens)
        if reason:
            log.warning("%s: streamed reply is invalid: %s", lm.name, reason)
