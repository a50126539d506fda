"""riddle-judge: grade a generated riddle against its article on a 1-5 rubric, on any strategy.

The rubric is the prompt file ``prompts/judge/riddle_judge.yaml``. It is an app like any other, so
``llmapps bench --judge STRATEGY`` (``llmapps.evaluate.judge``) can use any registered strategy as
the judge without the core knowing the rubric::

    chain = load_chain("riddle-judge", strategy="zero-shot")
    chain.invoke({"title": ..., "text": ..., "riddle": ..., "answer": ...})  # -> {"score": 4, ...}
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.runnables import Runnable, RunnableLambda

from chains.news_riddle import to_text
from llmapps.apps import AppSpec
from llmapps.errors import InputError
from llmapps.strategies.base import Strategy
from prompts import load_task

INPUTS = ("title", "text", "riddle", "answer")
_SCORE = re.compile(r"(?:score\s*\]?\s*:?\s*)?\b([1-5])\b", re.I)
_REASON = re.compile(r"reason\s*\]?\s*:\s*(.+)", re.I | re.S)


def parse_grade(text: str) -> dict[str, Any]:
    """The first grade 1-5 in ``text`` (a ``Score:`` line or JSON) and the reason; never raises."""
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
    labelled = re.search(r"score\s*\]?\s*:\s*([1-5])\b", text, re.I)
    m = labelled or _SCORE.search(text)
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
    """The judge chain on ``strategy``: ``{title, text, riddle, answer}`` in, ``{score, reason, valid}`` out."""
    task = load_task("judge/riddle_judge")
    return (
        RunnableLambda(_validate, name="validate")
        | strategy.build(task)
        | RunnableLambda(lambda out: parse_grade(to_text(out)), name="parse_grade")
    ).with_config(run_name=f"riddle-judge[{strategy.name}]")


APP = AppSpec(
    name="riddle-judge",
    description="LLM as judge: grade a riddle about an article from 1 to 5 (used by llmapps bench --judge)",
    build=build,
    input_keys=INPUTS,
)
