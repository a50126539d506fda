"""Metrics that judge a generated puzzle without a human, parameterised by field names.

Nothing here knows the news-riddle app: callers say which text is the riddle, which texts must not
leak into it, and which fields a valid output needs.

- ``solvability_at_k``: retrieve the source document among all candidates by the riddle's
  embedding; is it in the top ``k``? An empty riddle scores 0.
- ``leakage``: the share of the content words of some texts (answer, title) that appear verbatim
  in the riddle. A riddle that names its answer is no riddle.
- ``copy_overlap`` / ``copied``: does the riddle repeat a text (the summary, the article, a worked
  example's riddle) nearly word for word? The share of the riddle's word trigrams found in it.
- ``format_valid`` and ``word_count``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from llmapps.evaluate.embedding import NearestIndex

# Function words carry no content: a riddle may say "the" without giving the answer away.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself just me
    more most my no nor not now of off on once only or other our out over own same she should so
    some such than that the their them then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your new says
    said""".split()  # noqa: SIM905 - a word list reads better as text
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def content_words(text: str, min_length: int = 3) -> set[str]:
    """Lower-cased words of ``text`` that are not function words and have ``min_length`` letters."""
    return {w for w in _WORD.findall(text.lower()) if len(w) >= min_length and w not in STOPWORDS}


def leakage(riddle: str, sources: Sequence[str]) -> float | None:
    """Share of the content words of ``sources`` that appear verbatim in ``riddle``.

    Returns ``None`` when the riddle is empty (no riddle, nothing to judge: format validity counts
    that) or the sources have no content words (nothing could leak).

    Example:
        >>> leakage("I rise in the east", ["the sun", "Sunrise over the east"])
        0.333333
    """
    words: set[str] = set().union(*(content_words(s) for s in sources)) if sources else set()
    if not words or not riddle.strip():
        return None
    said = set(_WORD.findall(riddle.lower()))
    return round(len(words & said) / len(words), 6)


# A riddle is a copy when this share of its word trigrams occurs in one text: a riddle equal to its
# summary scores 1.0, one that reuses a phrase or two of the article scores well under 0.5.
COPY_THRESHOLD = 0.8


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def copy_overlap(riddle: str, text: str, n: int = 3) -> float | None:
    """Share of the riddle's word ``n``-grams (lower case, punctuation ignored) that occur in ``text``.

    A riddle shorter than ``n`` words is compared word by word. ``None`` for an empty riddle or text.

    Example:
        >>> copy_overlap("The bay marathon fell to a local runner", "A local runner won the bay marathon")
        0.333333
    """
    words, source = _WORD.findall(riddle.lower()), _WORD.findall(text.lower())
    if not words or not source:
        return None
    k = min(n, len(words))
    grams, known = _ngrams(words, k), set(_ngrams(source, k))
    return round(sum(g in known for g in grams) / len(grams), 6)


def copied(
    riddle: str, texts: Sequence[str], threshold: float = COPY_THRESHOLD
) -> tuple[float, float] | None:
    """``(copy, overlap)``: the largest ``copy_overlap`` of ``riddle`` with any of ``texts``, and 1.0
    when it reaches ``threshold`` (the riddle repeats that text nearly word for word), else 0.0.

    ``None`` when the riddle is empty (format validity counts that) or no text is given.
    """
    overlaps = [o for t in texts if (o := copy_overlap(riddle, t)) is not None]
    if not overlaps:
        return None
    best = max(overlaps)
    return float(best >= threshold), best


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def format_valid(output: Mapping[str, Any], fields: Sequence[str]) -> bool:
    """True when every one of ``fields`` is a non-empty string in ``output``."""
    return all(isinstance(output.get(f), str) and output[f].strip() for f in fields)


def solvability_at_k(
    riddles: Sequence[str],
    source_ids: Sequence[str],
    index: NearestIndex,
    ks: Sequence[int] = (1, 3),
) -> list[dict[str, float]]:
    """For each riddle, 1.0 if its source document is among the ``k`` nearest, else 0.0, per ``k``.

    Args:
        riddles: the generated texts to solve (an empty one scores 0 for every k).
        source_ids: the id of the document each riddle was made from.
        index: every candidate document (all test articles), embedded.
        ks: the cut-offs to report.

    Returns:
        One ``{"solvability@k": 0.0|1.0, ..., "source_rank": rank or None}`` per riddle.
    """
    if len(riddles) != len(source_ids):
        from llmapps.errors import InputError

        raise InputError(
            f"{len(riddles)} riddles but {len(source_ids)} source ids; they must align"
        )
    if not riddles:
        return []
    hits = index.search(riddles, len(index))
    out = []
    for found, source in zip(hits, source_ids, strict=True):
        rank = found.index(str(source)) + 1 if str(source) in found else None
        row: dict[str, float] = {
            f"solvability@{k}": float(rank is not None and rank <= k) for k in ks
        }
        row["source_rank"] = rank  # type: ignore[assignment]
        out.append(row)
    return out
