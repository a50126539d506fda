"""Reference metrics: ROUGE-1/2/L (rouge-score), BLEU (sacrebleu), and token F1 / exact match of a
short answer (SQuAD's normalisation: lower case, no punctuation, no articles a/an/the).

Scores are in [0, 1] (BLEU is divided by 100 so every quality column reads the same way). An empty
prediction scores 0 rather than raising, because a failed generation is a result to count.
"""

from __future__ import annotations

import re
import string
from collections import Counter
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


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans(dict.fromkeys(string.punctuation, " "))


def answer_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lower case, punctuation and the articles a/an/the removed, split on spaces."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers are equal (``"The Marathon."`` matches ``"marathon"``), else 0.0.

    Example:
        >>> exact_match("The marathon record!", "marathon record")
        1.0
    """
    ref = answer_tokens(reference)
    return float(bool(ref) and answer_tokens(prediction) == ref)


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall between normalised answers (SQuAD's F1).

    Example:
        >>> token_f1("the marathon", "the marathon record")
        0.666667
    """
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return round(2 * precision * recall / (precision + recall), 6)
