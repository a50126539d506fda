"""riddle-judge: grade a generated riddle against its article on a 1-5 rubric, on any strategy.

The rubric is the prompt file ``prompts/judge/riddle_judge.yaml``. It is an app like any other, so
``llmapps bench --judge STRATEGY`` (``llmapps.evaluate.judge``) can use any registered strategy as
the judge without the core knowing the rubric::

    chain = load_chain("riddle-judge", strategy="zero-shot")
    chain.invoke({"title": ..., "text": ..., "riddle": ..., "answer": ...})  # -> {"score": 4, ...}

Small models wander, so the grade is read strictly (``parse_grade``: a JSON ``score``, a labelled
``Score: N``, ``N/5``, or a reply that starts with the digit; never a number met in passing, nor
an echo of the rubric's "1: ..." lines), and a reply without one is asked again with
``prompts/judge/riddle_judge_strict.yaml``: the same rubric, one digit, a few tokens. When that
reply holds no grade either and the strategy has a local model, the grade is *decoded under a
constraint*: the most likely of the five tokens ``1``..``5`` after the strict prompt it was sent
(``constrained: true``). ``attempts`` says which try graded (1, 2; 3 for the constrained one).

Measured on SmolLM2-135M-Instruct (zero-shot) over the 21 reference riddles of the test split:
0 graded free-form, 0 by the strict retry, 21 by the constrained decode, and all 21 grades were 1
(a position bias of so small a model, not a judgment): the rate is 100%, the information is nil.
Judge with a larger model (``--judge service`` against one) for grades that mean something.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from chains.news_riddle import to_text
from llmapps.api.apps import AppSpec
from llmapps.api.strategies import Strategy
from llmapps.errors import InputError
from prompts import load_task

INPUTS = ("title", "text", "riddle", "answer")
# a grade is labelled (Score: 4, [Score 1-5]: 4, Grade - 4), out of five (4/5, 4 out of 5), or leads
# the reply (4, **4**, "4." then a reason); a digit inside a sentence is not a grade
_LABELLED = re.compile(
    r"(?:score|grade|rating)(?:\s*1\s*-\s*5)?\s*\]?\s*[:=\-]?\s*\**\s*([1-5])\b", re.I
)
_OUT_OF_FIVE = re.compile(r"\b([1-5])\s*(?:/|out\s+of)\s*5\b", re.I)
_LEADING = re.compile(r"^[\s*#>\[(\"']*([1-5])(?![\d.,]\d)(?!\s*[:\-]\s*\d)\b")
_REASON = re.compile(r"reason\s*\]?\s*:\s*(.+)", re.I | re.S)


def parse_grade(text: str) -> dict[str, Any]:
    """The grade 1-5 in ``text`` (JSON, labelled, ``N/5`` or leading) and the reason; never raises."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped[: stripped.rfind("}") + 1])
            score = int(obj["score"])
            if 1 <= score <= 5:
                return {
                    "score": score,
                    "reason": str(obj.get("reason", "")).strip(),
                    "valid": True,
                    "raw": text,
                }
        except (ValueError, KeyError, TypeError):
            pass
    m = _LABELLED.search(text) or _OUT_OF_FIVE.search(text) or _LEADING.search(text)
    reason = _REASON.search(text)
    return {
        "score": int(m.group(1)) if m else None,
        "reason": " ".join(reason.group(1).split()) if reason else "",
        "valid": m is not None,
        "raw": text,
    }


def _validate(x: Any) -> dict[str, Any]:
    if not isinstance(x, dict) or not str(x.get("text") or "").strip():
        raise InputError(
            "the judge needs a dict with the article 'text' (and title, riddle, answer)"
        )
    return {k: " ".join(str(x.get(k) or "").split()) or "(none)" for k in INPUTS}


def build(strategy: Strategy) -> Runnable[Any, dict[str, Any]]:
    """The judge chain on ``strategy``: ``{title, text, riddle, answer}`` in,
    ``{score, reason, valid, attempts}`` out (2: graded by the strict retry, 3: constrained)."""
    first = strategy.build(load_task("judge/riddle_judge"))
    strict = strategy.build(load_task("judge/riddle_judge_strict"))
    try:
        scorer = strategy.scoring_model()
    except Exception:  # no local model (e.g. a remote service): no constrained last try
        scorer = None
    return (
        RunnableLambda(_validate, name="validate") | GradeWithRetry(first, strict, scorer)
    ).with_config(run_name=f"riddle-judge[{strategy.name}]")


class _PromptCapture(BaseCallbackHandler):
    """Keeps the prompt a model call was sent (text, or chat messages)."""

    def __init__(self) -> None:
        self.prompt: Any = None

    def on_llm_start(self, serialized: Any, prompts: list[str], **kwargs: Any) -> None:
        self.prompt = prompts[0] if prompts else None

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[Any]], **kwargs: Any
    ) -> None:
        self.prompt = messages[0] if messages else None


def _with_handler(config: RunnableConfig, handler: BaseCallbackHandler) -> RunnableConfig:
    callbacks = config.get("callbacks")
    if callbacks is None:
        merged: Any = [handler]
    elif isinstance(callbacks, list):
        merged = [*callbacks, handler]
    else:  # a callback manager
        merged = callbacks.copy()
        merged.add_handler(handler, inherit=True)
    return {**config, "callbacks": merged}


def constrained_grade(lm: Any, prompt: Any) -> int:
    """The grade 1-5 whose token the local model ``lm`` finds most likely right after ``prompt``
    (a prompt text, or chat messages rendered with ``lm``'s chat template)."""
    import torch
    from langchain_core.messages import convert_to_openai_messages

    if isinstance(prompt, str):
        text = prompt
    else:
        text = lm.apply_chat_template(convert_to_openai_messages(prompt, text_format="string"))
    tok = lm.tokenizer
    ids = tok(text, add_special_tokens=True)["input_ids"][-lm.context_length :]
    x = torch.tensor([ids], device=lm.model.device)
    with torch.inference_mode():
        logits = lm.model(input_ids=x, logits_to_keep=1).logits[0, -1]
    best: dict[int, float] = {}
    for digit in range(1, 6):
        for form in (str(digit), f" {digit}"):
            pieces = tok(form, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                best[digit] = max(best.get(digit, float("-inf")), float(logits[pieces[0]]))
    if not best:
        raise ValueError("the tokenizer has no single token for the digits 1-5")
    return max(best, key=lambda d: best[d])


class GradeWithRetry(Runnable[dict[str, Any], dict[str, Any]]):
    """Grade with ``first``; ask ``strict`` again for the rows whose reply held no grade.

    ``batch`` keeps both passes batched (one generate call each on a local model).
    """

    def __init__(
        self, first: Runnable[Any, Any], strict: Runnable[Any, Any], scorer: Any = None
    ) -> None:
        self.first, self.strict, self.scorer = first, strict, scorer

    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        out = self.batch([input], config, return_exceptions=True)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def batch(  # type: ignore[override]
        self,
        inputs: list[dict[str, Any]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        configs = config if isinstance(config, list) else [config or {}] * len(inputs)
        grades: list[Any] = [
            o if isinstance(o, Exception) else {**parse_grade(to_text(o)), "attempts": 1}
            for o in self.first.batch(inputs, configs, return_exceptions=True)
        ]
        redo = [i for i, g in enumerate(grades) if isinstance(g, dict) and not g["valid"]]
        if redo:
            captures = [_PromptCapture() for _ in redo]
            again = self.strict.batch(
                [inputs[i] for i in redo],
                [_with_handler(configs[i], c) for i, c in zip(redo, captures, strict=True)],
                return_exceptions=True,
            )
            for i, o, capture in zip(redo, again, captures, strict=True):
                retry = None if isinstance(o, Exception) else parse_grade(to_text(o))
                if retry and retry["valid"]:
                    grades[i] = {**retry, "attempts": 2}
                elif self.scorer is not None and capture.prompt is not None:
                    score = constrained_grade(self.scorer, capture.prompt)
                    grades[i] = {
                        **grades[i],
                        "score": score,
                        "valid": True,
                        "constrained": True,
                        "attempts": 3,
                    }
                else:
                    grades[i] = {**grades[i], "attempts": 2}
        if not return_exceptions:
            for g in grades:
                if isinstance(g, Exception):
                    raise g
        return grades


APP = AppSpec(
    name="riddle-judge",
    description="LLM as judge: grade a riddle about an article from 1 to 5 (used by llmapps bench --judge)",
    build=build,
    input_keys=INPUTS,
)
