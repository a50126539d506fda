"""Word-level text surgery shared by augmentation and the counterfactual audit.

- ``split_sentences`` / ``join_sentences``: sentences of a body of text, paragraphs kept.
- ``entity_tokens``: the proper-noun words of a row (capitalised mid-sentence somewhere, never
  written in lower case in any of its fields), with a role (``first``/``last``/``single``).
- ``apply_mapping``: replace whole words case-insensitively, keeping each occurrence's case
  pattern, in one pass (so ``a -> b, b -> a`` swaps rather than collapses).

Everything is deterministic and works on plain strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Capitalised words that are not names: calendar words, titles, and function words that start a
# quote or a clause after a colon.
NOT_ENTITIES = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday january february march april may
    june july august september october november december i the a an and but or if in on at of to
    for with by from as it its this that these those he she his her him they them their we our you
    your mr mrs ms dr prof st""".split()  # noqa: SIM905 - a word list reads better as text
)
_SENTENCE_END = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)]))\s+(?=[\"'\u201c\u2018(]?[A-Z0-9])"
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*[A-Za-z]|[A-Za-z]")


def split_sentences(text: str) -> list[list[str]]:
    """Paragraphs (split on blank lines or newlines) of sentences; empty ones dropped."""
    paras = [p.strip() for p in re.split(r"\n+", text) if p.strip()]
    return [[s.strip() for s in _SENTENCE_END.split(p) if s.strip()] for p in paras]


def join_sentences(paragraphs: Iterable[Iterable[str]]) -> str:
    """Inverse of ``split_sentences``: sentences joined by a space, paragraphs by a blank line."""
    return "\n\n".join(" ".join(p) for p in (list(x) for x in paragraphs) if p)


def _clean_word(word: str) -> str:
    word = re.sub(r"['\u2019]s$", "", word)
    return word.strip("'\u2019-")


def _words(text: str) -> list[str]:
    return [_clean_word(w) for w in _WORD.findall(text)]


def lower_words(texts: Iterable[str]) -> frozenset[str]:
    """Every word written in lower case somewhere in ``texts`` (a corpus's common words)."""
    return frozenset(w for t in texts for w in _words(t) if w.islower())


def _capital_runs(sentence: str, stop: frozenset[str]) -> list[tuple[list[str], bool]]:
    """Runs of adjacent capitalised words (only spaces between them), each with whether it opens
    the sentence."""
    runs: list[tuple[list[str], bool]] = []
    run: list[str] = []
    start = False
    last_end = 0
    for n, m in enumerate(_WORD.finditer(sentence)):
        word = _clean_word(m.group(0))
        cap = word[:1].isupper() and word.lower() not in stop
        joined = run and not sentence[last_end : m.start()].strip()
        if cap and joined:
            run.append(word)
        else:
            if run:
                runs.append((run, start))
            run, start = ([word], n == 0) if cap else ([], False)
        last_end = m.end()
    if run:
        runs.append((run, start))
    return runs


def entity_tokens(
    texts: Iterable[str],
    extra_stop: frozenset[str] = frozenset(),
    common: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Proper-noun words of ``texts`` -> role (``first``, ``last`` or ``single``).

    A word counts when it is capitalised somewhere other than the start of a sentence, is never
    written in lower case in any of the texts (so "Mayor" in a headline is not a name when the
    article says "mayor"), nor in ``common`` (lower-case words of a whole corpus, so "University"
    stays), and is no calendar or function word. Its role comes from the runs of
    capitalised words it stands in: the first word of a multi-word run (a first name), a later word
    (a surname, "Courier"), or a word only ever seen alone (a place).
    """
    texts = list(texts)
    lower_seen: set[str] = set()
    roles: dict[str, set[str]] = {}
    for text in texts:
        lower_seen.update(w for w in _words(text) if w.islower())
    stop = NOT_ENTITIES | extra_stop
    for text in texts:
        for para in split_sentences(text):
            for sentence in para:
                for run, at_start in _capital_runs(sentence, stop):
                    if at_start and len(run) == 1:
                        continue  # "Ballots were sealed": any sentence starts with a capital
                    for k, word in enumerate(run):
                        role = "single" if len(run) == 1 else ("first" if k == 0 else "last")
                        roles.setdefault(word, set()).add(role)
    out: dict[str, str] = {}
    for word, rs in roles.items():
        if word.lower() in lower_seen or word.lower() in common or len(word) < 2 or word.isupper():
            continue
        out[word] = "first" if rs == {"first"} else ("single" if rs == {"single"} else "last")
    return out


def match_case(template: str, word: str) -> str:
    """``word`` in the case pattern of ``template`` (upper, capitalised or lower)."""
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    if template.islower():
        return word.lower()
    return word


def apply_mapping(text: str, mapping: Mapping[str, str]) -> str:
    """``text`` with every whole-word occurrence of a key (any case) replaced by its value.

    Keys may be several words ("Prime Minister"); longer keys win. The case of each occurrence is
    kept (``MARROWFIELD`` -> ``LAGOS``, ``marrowfield`` -> ``lagos``).
    """
    if not mapping or not text:
        return text
    lowered = {k.lower(): v for k, v in mapping.items()}
    keys = sorted(lowered, key=len, reverse=True)
    pattern = re.compile(
        r"(?<![\w-])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w-])", re.IGNORECASE
    )
    return pattern.sub(lambda m: match_case(m.group(0), lowered[m.group(0).lower()]), text)


def surviving(texts: Iterable[str], words: Iterable[str]) -> list[str]:
    """The ``words`` still found (whole word, any case) in any of ``texts``."""
    joined = "\n".join(texts)
    return [
        w
        for w in words
        if re.search(r"(?<![\w-])" + re.escape(w) + r"(?![\w-])", joined, re.IGNORECASE)
    ]
