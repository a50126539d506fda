"""riddle-judge: grade a generated riddle against its article on a 1-5 rubric, on any strategy.

The rubric is the prompt file ``prompts/judge/riddle_judge.yaml``. It is an app like any other, so
``llmapps bench --judge STRATEGY`` (``llmapps.evaluate.judge``) can use any registered strategy as
the judge without the core knowing the rubric::

    chain = load_chain("riddle-judge", strategy="zero-shot")
    chain.invoke({"title": ..., "text": ..., "riddle": ..., "answer": ...})  # -> {"score": 4, ...}

Small models wander, so the grade is read strictly (``parse_grade``: a JSON ``score``, a labelled
``Score: N``, ``N/5``, or a reply that starts with the digit; never a number met in passing), and a
reply without one is asked again with ``prompts/judge/riddle_judge_strict.yaml``: the same rubric,
one digit, a few tokens. ``attempts`` says which try graded.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from chains.news_riddle import to_text
from llmapps.apps import AppSpec
from llmapps.errors import InputError
from llmapps.strategies.base import Strategy
from prompts import load_task

INPUTS = ("title", "text", "riddle", "answer")
# a grade is labelled (Score: 4, [Score 1-5]: 4, Grade - 4), out of five (4/5, 4 out of 5), or leads
# the reply (4, **4**, "4." then a reason); a digit inside a sentence is not a grade
_LABELLED = re.compile(
    r"(?:score|grade|rating)(?:\s*1\s*-\s*5)?\s*\]?\s*[:=\-]?\s*\**\s*([1-5])\b", re.I
)
_OUT_OF_FIVE = re.compile(r"\b([1-5])\s*(?:/|out\s+of)\s*5\b", re.I)
_LEADING = re.compile(r"^[\s*#>\[(\"']*([1-5])(?![\d.,]\d)\b")
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
    ``{score, reason, valid, attempts}`` out (``attempts`` 2: graded by the strict retry)."""
    first = strategy.build(load_task("judge/riddle_judge"))
    strict = strategy.build(load_task("judge/riddle_judge_strict"))
    return (RunnableLambda(_validate, name="validate") | GradeWithRetry(first, strict)).with_config(
        run_name=f"riddle-judge[{strategy.name}]"
    )


class GradeWithRetry(Runnable[dict[str, Any], dict[str, Any]]):
    """Grade with ``first``; ask ``strict`` again for the rows whose reply held no grade.

    ``batch`` keeps both passes batched (one generate call each on a local model).
    """

    def __init__(self, first: Runnable[Any, Any], strict: Runnable[Any, Any]) -> None:
        self.first, self.strict = first, strict

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
            again = self.strict.batch(
                [inputs[i] for i in redo], [configs[i] for i in redo], return_exceptions=True
            )
            for i, o in zip(redo, again, strict=True):
                retry = None if isinstance(o, Exception) else parse_grade(to_text(o))
                grades[i] = {**(retry if retry and retry["valid"] else grades[i]), "attempts": 2}
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
