"""Reference metrics: ROUGE-1/2/L (rouge-score) and BLEU (sacrebleu) of a text against its reference.

Scores are in [0, 1] (BLEU is divided by 100 so every quality column reads the same way). An empty
prediction scores 0 rather than raising, because a failed generation is a result to count.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 of ``prediction`` against ``reference``.

    Example:
        >>> rouge("the cat sat", "the cat sat")["rougeL"]
        1.0
    """
    if not prediction.strip() or not reference.strip():
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    scores = _scorer().score(reference, prediction)
    return {k: round(float(scores[k].fmeasure), 6) for k in ROUGE_TYPES}


def sentence_bleu(prediction: str, reference: str) -> float:
    """Smoothed sentence BLEU in [0, 1] (sacrebleu's default exponential smoothing)."""
    import sacrebleu

    if not prediction.strip() or not reference.strip():
        return 0.0
    return round(float(sacrebleu.sentence_bleu(prediction, [reference]).score) / 100.0, 6)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU in [0, 1] over aligned predictions and references (the number papers report)."""
    import sacrebleu

    if len(predictions) != len(references):
        from llmapps.errors import InputError

        raise InputError(
            f"{len(predictions)} predictions but {len(references)} references; they must align"
        )
    if not predictions:
        return 0.0
    return round(
        float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score) / 100.0, 6
    )
