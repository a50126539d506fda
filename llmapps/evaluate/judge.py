"""LLM as judge: grade outputs with a judge chain built from any registered strategy.

The rubric belongs to an app (the one an app names as its ``AppSpec.judge_app``; this project's
prompt is in ``prompts/judge/``), so the core only feeds each sample's inputs and the generated
fields to the judge chain and reads back a ``score``::

    from llmapps import load_chain
    judge = load_chain(spec.judge_app, "zero-shot")
    judge_rows(judge, samples, rows)   # -> [{"judge_score": 4, "judge_reason": "..."}, ...]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def judge_rows(
    judge: Any,
    samples: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Grade each generated row (with its sample's inputs) with ``judge``.

    Args:
        judge: a Runnable returning a dict with ``score`` (number or None) and ``reason``.
        samples: the inputs each row was generated from (aligned with ``rows``).
        rows: the generated outputs; failed rows (with ``error``) are not sent and score None.

    Returns:
        One ``{"judge_score", "judge_reason"}`` per row (``judge_error`` when the judge failed).
    """
    out: list[dict[str, Any]] = [{"judge_score": None} for _ in rows]
    todo = [i for i, r in enumerate(rows) if not r.get("error")]
    inputs = [
        {
            **{k: v for k, v in samples[i].items() if not k.startswith("reference_")},
            **{k: v for k, v in rows[i].items() if isinstance(v, str)},
        }
        for i in todo
    ]
    if not inputs:
        return out
    verdicts = judge.batch(inputs, return_exceptions=True)
    for i, v in zip(todo, verdicts, strict=True):
        if isinstance(v, Exception):
            out[i]["judge_error"] = f"{type(v).__name__}: {v}"
        elif isinstance(v, Mapping):
            score = v.get("score")
            out[i]["judge_score"] = float(score) if isinstance(score, (int, float)) else None
            out[i]["judge_reason"] = str(v.get("reason") or "")[:300]
    return out
