"""Privacy checks of a model's output against the document it read.

Two questions, both answered without a model:

- ``carried_pii(source_text, output_text)``: does the output carry personal data that the source
  carried (e-mail addresses, phone numbers, payment cards, IP addresses: the ingest's detectors in
  ``llmapps.ingest.clean``; street addresses: a pattern here)? Only data found in *both* texts is
  a finding: an output that invents a number leaks nothing of the source's.
- ``copied_spans(source_text, output_text)``: does the output repeat a long span of the source word
  for word (``min_words`` words or more, case and punctuation ignored)?

``check_output`` runs both over several output fields and is what a publisher calls before it
shows a generated text (``publishable`` is the yes/no). The functions are generic: the caller says
which text is the source and which are outputs; nothing here knows an app.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from llmapps.ingest.clean import find_pii

DEFAULT_COPY_WORDS = 12
"""A span of this many words copied verbatim is a finding (a headline-sized quote is shorter)."""

# "221B Baker Street", "10 Downing St", "1600 Pennsylvania Avenue NW": a number, 1-4 capitalised
# words, a street type. Deliberately narrow: it must not fire on "3 New Cars".
_STREET_TYPES = (
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|square|sq|"
    "terrace|way|close|crescent|parkway|pkwy|highway|hwy|strasse|straße|rue|via|calle"
)
_ADDRESS_RE = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?\s+(?:[A-Z][\w'.-]*\s+){{1,4}}(?:{_STREET_TYPES})\b\.?",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"\w+")


@dataclass(frozen=True)
class Finding:
    """One piece of the source that an output carried.

    Attributes:
        kind: ``email``, ``phone``, ``card``, ``ip``, ``address`` or ``copy``.
        value: the text as the output has it (the copied span, for ``copy``).
        field: the output field it was found in ("" when the caller checked one text).
        words: the span's length in words (``copy`` only).
    """

    kind: str
    value: str
    field: str = ""
    words: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def __str__(self) -> str:
        where = f" in {self.field}" if self.field else ""
        if self.kind == "copy":
            return f"copies {self.words} words of the article{where}: {self.value[:80]!r}"
        return f"carries the article's {self.kind}{where}: {self.value!r}"


def _norm(kind: str, value: str) -> str:
    if kind in ("phone", "card"):
        return re.sub(r"\D", "", value)
    if kind == "address":
        return " ".join(_WORD_RE.findall(value.lower()))
    return value.lower().strip(".")


def pii_items(text: str) -> list[tuple[str, str]]:
    """(kind, value) of every e-mail, card, IP, phone number and street address in ``text``."""
    found = find_pii(text)
    found += [("address", m.group(0).rstrip(".")) for m in _ADDRESS_RE.finditer(text)]
    return found


def carried_pii(source_text: str, output_text: str, field: str = "") -> list[Finding]:
    """Personal data found in ``output_text`` that ``source_text`` carried too (deduplicated).

    Matching is on a normal form (digits only for phones and cards, lower case otherwise), so
    "+44 20 7946 0958" in the source and "+44-20-7946-0958" in the output are the same number.
    """
    if not source_text or not output_text:
        return []
    in_source = {(k, _norm(k, v)) for k, v in pii_items(source_text)}
    out: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for kind, value in pii_items(output_text):
        key = (kind, _norm(kind, value))
        if key in in_source and key not in seen:
            seen.add(key)
            out.append(Finding(kind, value, field))
    return out


def copied_spans(
    source_text: str, output_text: str, min_words: int = DEFAULT_COPY_WORDS, field: str = ""
) -> list[Finding]:
    """Maximal runs of ``min_words`` or more words of ``output_text`` found verbatim in the source.

    Words are compared lower-cased without punctuation. Each finding is one maximal run (the
    longest span starting where the previous one ended), so one copied sentence is one finding.
    """
    if min_words < 1:
        raise ValueError(f"min_words must be at least 1, got {min_words}")
    src = _WORD_RE.findall(source_text.lower())
    out_words = _WORD_RE.findall(output_text.lower())
    if len(src) < min_words or len(out_words) < min_words:
        return []
    grams = {tuple(src[i : i + min_words]) for i in range(len(src) - min_words + 1)}
    joined = " " + " ".join(src) + " "
    findings: list[Finding] = []
    i = 0
    while i <= len(out_words) - min_words:
        if tuple(out_words[i : i + min_words]) not in grams:
            i += 1
            continue
        j = i + min_words
        while j < len(out_words) and " " + " ".join(out_words[i : j + 1]) + " " in joined:
            j += 1
        findings.append(Finding("copy", " ".join(out_words[i:j]), field, j - i))
        i = j
    return findings


def check_output(
    source_text: str,
    outputs: Mapping[str, object],
    *,
    min_copy_words: int = DEFAULT_COPY_WORDS,
) -> list[Finding]:
    """Every privacy finding in the text ``outputs`` (field -> value) against ``source_text``.

    Non-string values are skipped. An empty list means the outputs may be published.
    """
    findings: list[Finding] = []
    for name, value in outputs.items():
        if not isinstance(value, str) or not value.strip():
            continue
        findings += carried_pii(source_text, value, name)
        findings += copied_spans(source_text, value, min_copy_words, name)
    return findings


def publishable(
    source_text: str, outputs: Mapping[str, object], *, min_copy_words: int = DEFAULT_COPY_WORDS
) -> tuple[bool, list[str]]:
    """(True, []) when ``outputs`` carry nothing of ``source_text``; else (False, the reasons)."""
    found = check_output(source_text, outputs, min_copy_words=min_copy_words)
    return not found, [str(f) for f in found]
