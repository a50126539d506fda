"""Generic checks of generated text, parameterised by field names: content words, word count and
format validity (every expected field a non-empty string).

Apps build their own checks on these (e.g. how many of a source's content words an output
repeats); ``llmapps.evaluate.builtin_metrics`` registers ``format_valid`` and ``words``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# Function words carry no content: an output may say "the" without giving anything away.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself just me
    more most my no nor not now of off on once only or other our out over own same she should so
    some such than that the their them then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your new says
    said""".split()  # noqa: SIM905 - a word list reads better as text
)
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
"""A lower-case word (with an apostrophe suffix: ``it's``)."""


def words_of(text: str) -> list[str]:
    """The lower-cased words of ``text`` in order, punctuation dropped."""
    return WORD.findall(text.lower())


def content_words(text: str, min_length: int = 3) -> set[str]:
    """Lower-cased words of ``text`` that are not function words and have ``min_length`` letters."""
    return {w for w in words_of(text) if len(w) >= min_length and w not in STOPWORDS}


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def format_valid(output: Mapping[str, Any], fields: Sequence[str]) -> bool:
    """True when every one of ``fields`` is a non-empty string in ``output``."""
    return all(isinstance(output.get(f), str) and output[f].strip() for f in fields)
