"""news-riddle's own metrics: does a riddle give its answer away, repeat a text, point at its
article? Registered through the ``llmapps.metrics`` entry-point group (pyproject.toml), so the
bench, ``llmapps evaluate``, the tables and ``llmapps metrics`` see them like the generic ones.

They read the fields the app names in ``AppSpec.metric_fields`` (through the bench's
``MetricsConfig``: ``target_field`` is the riddle, ``leak_fields``, ``copy_fields``,
``source_fields``), so they score nothing for an app that names no target field.

- ``solvability_at_k``: retrieve the source document among all candidates by the riddle's
  embedding; is it in the top ``k``? An empty riddle scores 0.
- ``leakage``: the share of the content words of some texts (answer, title) that appear verbatim
  in the riddle. A riddle that names its answer is no riddle.
- ``copy_overlap`` / ``copied``: does the riddle repeat a text (the summary, the article, a worked
  example's riddle) nearly word for word? The share of the riddle's word trigrams found in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmapps.api.metrics import Batch, metric_table
from llmapps.errors import InputError
from llmapps.evaluate.text import content_words, words_of


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
    said = set(words_of(riddle))
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
    words, source = words_of(riddle), words_of(text)
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


def solvability_at_k(
    riddles: Sequence[str],
    source_ids: Sequence[str],
    index: Any,
    ks: Sequence[int] = (1, 3),
) -> list[dict[str, float]]:
    """For each riddle, 1.0 if its source document is among the ``k`` nearest, else 0.0, per ``k``.

    Args:
        riddles: the generated texts to solve (an empty one scores 0 for every k).
        source_ids: the id of the document each riddle was made from.
        index: every candidate document (all test articles), embedded
            (``llmapps.evaluate.embedding.NearestIndex``).
        ks: the cut-offs to report.

    Returns:
        One ``{"solvability@k": 0.0|1.0, ..., "source_rank": rank or None}`` per riddle.
    """
    if len(riddles) != len(source_ids):
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


# ---------------------------------------------------------------- the registered metrics


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def leak_source(row: Mapping[str, Any], ref: Mapping[str, Any], field: str) -> str:
    """The text of ``field`` that ``leakage`` scores a reply against: the reply's own (its answer),
    else the reference's (the article's title), else the reference's ``reference_<field>``."""
    return _text(row.get(field)) or _text(ref.get(field)) or _text(ref.get(f"reference_{field}"))


def _leakage(batch: Batch) -> list[dict[str, Any]]:
    c = batch.config
    if not c.target_field:
        return [{} for _ in batch.rows]
    out = []
    for r, ref in zip(batch.rows, batch.refs, strict=True):
        sources = [leak_source(r, ref, f) for f in c.leak_fields]
        out.append({"leakage": leakage(_text(r.get(c.target_field)), [s for s in sources if s])})
    return out


def _copying(batch: Batch) -> list[dict[str, Any]]:
    c = batch.config
    out: list[dict[str, Any]] = [{} for _ in batch.rows]
    if not c.target_field:
        return out
    for m, r, ref in zip(out, batch.rows, batch.refs, strict=True):
        texts = [_text(r.get(f)) or _text(ref.get(f)) for f in c.copy_fields]
        copy = copied(_text(r.get(c.target_field)), [*(t for t in texts if t), *batch.copy_texts])
        if copy is not None:
            m["copying"], m["copy_overlap"] = copy
    return out


def _solvability(batch: Batch) -> list[dict[str, Any]]:
    c = batch.config
    if not (c.target_field and c.source_fields and len(batch.scorer.references) > 1):
        return [{} for _ in batch.rows]
    index = batch.scorer.index  # every reference of the split, not only this batch's
    if index is None:
        return [{} for _ in batch.rows]
    solved = solvability_at_k(
        [_text(r.get(c.target_field)) for r in batch.rows],
        [str(r["id"]) for r in batch.rows],
        index,
        c.solvability_k,
    )
    return [dict(s) for s in solved]


_TABLE = """
solvability  | solv | + | 50 | k | all | the source is among the k documents nearest the riddle
source_rank  | -    | - | 51 | - | -   | rank of the source among the candidates (per row)
leakage      | leak | - | 60 | - | all | share of the answer's and title's content words in the riddle
copying      | copy | - | 70 | - | all | the riddle repeats a text nearly word for word
copy_overlap | -    | - | 71 | - | -   | largest share of the riddle's word trigrams found in one text
"""
SOLVABILITY, SOURCE_RANK, LEAKAGE, COPYING, COPY_OVERLAP = metric_table(
    _TABLE,
    compute={"solvability": _solvability, "leakage": _leakage, "copying": _copying},
    aggregate={"source_rank": "none"},
)
"""The app's metrics, one entry point each in pyproject.toml's ``llmapps.metrics`` group."""
