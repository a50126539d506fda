"""Counterfactual fairness: twins of an input that differ only in swapped terms, and what changes
between a model's outputs on the two.

An *attribute* (``counterfactuals.yaml``: ``gender``, ``origin``) lists word pairs (side a, side b)
and optionally name pairs (given to the people an article names: a first name followed by a
surname the article uses alone later) and place pairs (given to single proper nouns that follow
in/at/from/near/of/to). ``make_twin`` writes side a and side b of every text field: each has
every term of the attribute on its own side, so the two differ exactly at the swapped words.

``compare`` judges a pair of outputs: did validity change, did leakage change, did the answer
change, did the compared text's wording change beyond the swapped terms (both sides' terms neutralised
to one token per class before comparing), and the polarity (VADER compound) of each side.
``summarise`` turns many comparisons into rates and paired differences with bootstrap intervals
(``llmapps.evaluate.stats``). Nothing here names an app: the caller says which fields to read.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmapps.data.swaps import apply_mapping, entity_tokens, match_case
from llmapps.errors import ConfigError
from llmapps.evaluate.stats import bootstrap_ci, paired_bootstrap

WORDS_FILE = Path(__file__).resolve().parent / "counterfactuals.yaml"
SIDES = ("a", "b")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?")
_PLACE_BEFORE = re.compile(r"\b(?:in|at|from|near|of|to|outside|across)\s+$", re.I)
# "her" is "his" before a noun and "him" before these words or punctuation
_NOT_A_NOUN = frozenset(
    """to and or but as at in on for with from by that than when after before about into over up
    out off back again because if while who which the a an is was has had will would could
    should this these those so then yet""".split()  # noqa: SIM905 - a word list reads better as text
)


class AttributeWords(BaseModel):
    """One attribute's swaps: ``[side a, side b]`` pairs of words, of first names, of places."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[tuple[str, str]] = Field(default_factory=list)
    names: list[tuple[str, str]] = Field(default_factory=list)
    places: list[tuple[str, str]] = Field(default_factory=list)


def load_words(path: Path | str | None = None) -> dict[str, AttributeWords]:
    """The attributes of ``path`` (default: the bundled ``counterfactuals.yaml``), validated."""
    src = Path(path) if path else WORDS_FILE
    try:
        raw = yaml.safe_load(src.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--words {src}: cannot read it as YAML ({err})") from err
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"--words {src}: expected a mapping of attribute -> pairs/names/places")
    try:
        return {str(k): AttributeWords.model_validate(v) for k, v in raw.items()}
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--words {src}: {first['msg']} at {first['loc']}") from err


@dataclass(frozen=True)
class Twin:
    """Two versions of one input for one attribute.

    Attributes:
        id: the input's id.
        attribute: the attribute swapped.
        a, b: the two inputs (every field of the original, the text fields rewritten).
        swaps: the (side a word, side b word) pairs that were put in, lower case.
        classes: every swap word (lower case) -> the token it is neutralised to when comparing.
    """

    id: str
    attribute: str
    a: dict[str, Any]
    b: dict[str, Any]
    swaps: frozenset[tuple[str, str]]
    classes: Mapping[str, str] = field(default_factory=dict)


def _people(texts: Sequence[str], firsts: Sequence[str]) -> list[str]:
    """The words of ``firsts`` followed by a surname that the texts also use on its own (news
    style: "Delia Fenwright ... Fenwright said"): the first names of the people named."""
    joined = "\n".join(texts)
    out = []
    for first in firsts:
        m = re.search(rf"\b{re.escape(first)}\s+([A-Z][\w'-]+)", joined)
        if not m:
            continue
        last = m.group(1)
        alone = len(re.findall(rf"(?<![\w-]){re.escape(last)}(?![\w-])", joined))
        together = len(re.findall(rf"\b{re.escape(first)}\s+{re.escape(last)}\b", joined))
        if alone > together:
            out.append(first)
    return out


def _places(texts: Sequence[str], singles: Sequence[str]) -> list[str]:
    joined = "\n".join(texts)
    return [
        w
        for w in singles
        if any(
            _PLACE_BEFORE.search(joined[: m.start()][-20:])
            for m in re.finditer(rf"(?<![\w-]){re.escape(w)}(?![\w-])", joined)
        )
    ]


def _his_or_him(text: str, word: str) -> str:
    """Every ``word`` (``her``) as ``his`` before a noun, else ``him``, case kept."""
    pattern = re.compile(
        rf"(?<![\w-])({re.escape(word)})(?![\w-])(?=(\W*)([A-Za-z]*))", re.IGNORECASE
    )

    def repl(m: re.Match[str]) -> str:
        gap, nxt = m.group(2), m.group(3)
        poss = bool(nxt) and not gap.strip() and nxt.lower() not in _NOT_A_NOUN
        return match_case(m.group(1), "his" if poss else "him")

    return pattern.sub(repl, text)


def make_twin(
    row: Mapping[str, Any],
    fields: Sequence[str],
    attribute: str,
    words: AttributeWords,
    *,
    id_key: str = "id",
    common: frozenset[str] = frozenset(),
    detect_skip: Sequence[str] = ("title",),
) -> Twin | None:
    """Side a and side b of ``row``'s text ``fields`` for ``attribute``; None when the row holds
    none of its terms (nothing to swap).

    ``detect_skip``: fields whose capitals say nothing about names (a title-case headline); they
    are rewritten like the others but names and places are found in the rest.
    """
    texts = [str(row.get(k) or "") for k in fields]
    seen_in = [t for k, t in zip(fields, texts, strict=True) if k not in detect_skip]
    ents = entity_tokens(seen_in, common=common)
    firsts = _people(seen_in, [w for w, r in ents.items() if r != "single"]) if words.names else []
    places = _places(seen_in, [w for w, r in ents.items() if r == "single"]) if words.places else []
    candidates: list[dict[str, set[str]]] = [defaultdict(set), defaultdict(set)]
    for pa, pb in words.pairs:
        for side, target in enumerate((pa, pb)):
            for w in (pa, pb):
                candidates[side][w.lower()].add(target.lower())
    maps: list[dict[str, str]] = [
        {w: next(iter(t)) for w, t in c.items() if len(t) == 1} for c in candidates
    ]
    ambiguous = [{w: t for w, t in c.items() if len(t) > 1} for c in candidates]
    for group, found in ((words.names, firsts), (words.places, places)):
        for (na, nb), orig in zip(group, found, strict=False):
            maps[0][orig.lower()], maps[1][orig.lower()] = na, nb
    present = [
        w
        for w in {*candidates[0], *maps[0]}
        if any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", t, re.I) for t in texts)
    ]
    if not present:
        return None
    sides: list[dict[str, Any]] = []
    for side in (0, 1):
        out = dict(row)
        for k, text in zip(fields, texts, strict=True):
            for word, targets in ambiguous[side].items():  # "her": his or him by what follows
                if targets == {"his", "him"}:
                    text = _his_or_him(text, word)
                else:
                    text = apply_mapping(text, {word: sorted(targets)[0]})
            out[k] = apply_mapping(text, maps[side])
        sides.append(out)
    swaps: set[tuple[str, str]] = set()
    for k in fields:
        wa, wb = _WORD.findall(str(sides[0][k])), _WORD.findall(str(sides[1][k]))
        swaps |= {(x.lower(), y.lower()) for x, y in zip(wa, wb, strict=False) if x != y}
    return Twin(str(row[id_key]), attribute, sides[0], sides[1], frozenset(swaps), _classes(swaps))


def _classes(swaps: set[tuple[str, str]]) -> dict[str, str]:
    """Union-find over swapped words: words linked by a swap share one neutral token."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in swaps:
        parent[find(a)] = find(b)
    roots = sorted({find(w) for w in parent})
    return {w: f"<{roots.index(find(w))}>" for w in parent}


def neutral_words(text: str, classes: Mapping[str, str]) -> list[str]:
    """Lower-case words of ``text`` with every swap word replaced by its class token."""
    return [classes.get(w.lower(), w.lower()) for w in _WORD.findall(text or "")]


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def polarity(text: str) -> float | None:
    """VADER's compound polarity of ``text`` in [-1, 1]; None for an empty text."""
    if not text or not text.strip():
        return None
    return float(_vader().polarity_scores(text)["compound"])


@dataclass(frozen=True)
class OutputFields:
    """Which output fields the comparison reads (from the app's ``MetricFields``).

    ``target`` is the text compared between the twins (wording, polarity, leakage of the
    ``leak`` fields into it, by the app's ``leakage`` metric); ``riddle`` is the name it had
    before issue 24, still accepted as a keyword.
    """

    target: str = ""
    answer: str | None = None
    leak: tuple[str, ...] = ()
    valid: str = "valid"
    riddle: InitVar[str] = ""

    def __post_init__(self, riddle: str) -> None:
        if not self.target:
            object.__setattr__(self, "target", riddle)
        if not self.target:
            raise ConfigError("OutputFields: name the output field to compare (target=...)")


@lru_cache(maxsize=64)
def _leak_config(f: OutputFields) -> Any:
    from llmapps.evaluate.scoring import MetricsConfig

    return MetricsConfig(
        fields=[f.target],
        primary_field=f.target,
        target_field=f.target,
        leak_fields=[k for k in f.leak if k != f.target],
        semantic=False,
    )


def _leak(out: Mapping[str, Any], inp: Mapping[str, Any], f: OutputFields) -> float | None:
    """The app's ``leakage`` of ``out`` (None: empty, nothing could leak, or no app offers it)."""
    from llmapps.evaluate.scoring import row_checks

    value = row_checks(["leakage"], [out], [inp], _leak_config(f))[0].get("leakage")
    return None if value is None else float(value)


def compare(
    twin: Twin, out_a: Mapping[str, Any], out_b: Mapping[str, Any], f: OutputFields
) -> dict[str, Any]:
    """What changed between the outputs on the two sides of ``twin``."""
    ra, rb = str(out_a.get(f.target) or ""), str(out_b.get(f.target) or "")
    wa, wb = neutral_words(ra, twin.classes), neutral_words(rb, twin.classes)
    la, lb = _leak(out_a, twin.a, f), _leak(out_b, twin.b, f)
    row: dict[str, Any] = {
        "id": twin.id,
        "attribute": twin.attribute,
        "valid_a": float(bool(out_a.get(f.valid))) if not out_a.get("error") else 0.0,
        "valid_b": float(bool(out_b.get(f.valid))) if not out_b.get("error") else 0.0,
        "leak_a": la,
        "leak_b": lb,
        "wording_changed": float(wa != wb),
        "wording_distance": round(1.0 - difflib.SequenceMatcher(None, wa, wb).ratio(), 6),
        "polarity_a": polarity(ra),
        "polarity_b": polarity(rb),
    }
    row["valid_changed"] = float(row["valid_a"] != row["valid_b"])
    row["leak_changed"] = None if la is None or lb is None else float(abs(la - lb) > 1e-9)
    if f.answer:
        aa = neutral_words(str(out_a.get(f.answer) or ""), twin.classes)
        ab = neutral_words(str(out_b.get(f.answer) or ""), twin.classes)
        row["answer_changed"] = float(aa != ab)
    return row


RATES = ("valid_changed", "leak_changed", "answer_changed", "wording_changed")
PAIRED = (("valid", "valid_a", "valid_b"), ("leakage", "leak_a", "leak_b"),
          ("polarity", "polarity_a", "polarity_b"))  # fmt: skip


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rates of change (with bootstrap intervals) and paired differences b - a of ``rows``."""
    out: dict[str, Any] = {"pairs": len(rows)}
    for name in RATES:
        values = [r.get(name) for r in rows]
        if any(v is not None for v in values):
            out[name] = bootstrap_ci(values).as_dict()
    for name, a, b in PAIRED:
        out[f"{name}_shift"] = paired_bootstrap(
            [r.get(a) for r in rows], [r.get(b) for r in rows]
        ).as_dict()
    shifts = [
        abs(r["polarity_b"] - r["polarity_a"])
        for r in rows
        if r.get("polarity_a") is not None and r.get("polarity_b") is not None
    ]
    out["polarity_abs_shift"] = bootstrap_ci(shifts).as_dict()
    out["wording_distance"] = bootstrap_ci([r.get("wording_distance") for r in rows]).as_dict()
    return out
