"""The boutique's vocabulary and text helpers: size, price, stock and policy patterns, colour
and not-carried words, singular word tokens, and how answers write money, sizes and times.

``chains.boutique_guard`` resolves questions and checks answers with them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SIZE_TOKEN = r"(?:XXS|XS|XXL|XL|S|M|L|\d{2})"
SIZE_LIST = rf"{SIZE_TOKEN}(?:\s*(?:,\s*and|,|and|or|/)\s*{SIZE_TOKEN})*"
_WORD_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
ITEM_ID_RE = re.compile(r"\b(LB-\d{3})\b")
SENT_RE = re.compile(r"(?<=[.!?;])\s+")
AMOUNT_RE = re.compile(
    r"(?:€|EUR\s?|\$|£)\s?(\d+(?:[.,]\d{1,2})?)|(\d+(?:[.,]\d{1,2})?)\s?(?:€|EUR\b|euros?\b|dollars?\b)",
    re.I,
)
PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s?(?:%|percent\b)", re.I)
DURATION_RE = re.compile(r"\b(\d+)\s*(?:working\s+)?(day|week|month|year)s?\b", re.I)
TIME_RE = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm)\b|\b(\d{1,2}):(\d{2})\b", re.I)
IN_STOCK_RE = re.compile(
    rf"\b(?:is|are)?\s*(?:still\s+)?(?:in stock|available)(?:\s+in\s+(?:sizes?\s+)?(?P<sizes>{SIZE_LIST}))?"
)
OUT_RE = re.compile(
    rf"\b(?:out of stock|sold out|not available|unavailable)(?:\s+in\s+(?:sizes?\s+)?(?P<sizes>{SIZE_LIST}))?",
    re.I,
)
ONLY_RE = re.compile(
    rf"\bonly (?P<n>\d+) left(?:\s+in\s+(?:size\s+)?(?P<size>{SIZE_TOKEN}))?", re.I
)
COMES_RE = re.compile(rf"\bcomes? in (?:sizes?|EU sizes)\s+(?P<sizes>{SIZE_LIST})")
SIZE_Q_RE = re.compile(
    rf"(?:\b[Ss]izes?\s+|\b[Ii]n\s+|^\s*)(?P<size>{SIZE_TOKEN})\b(?!\s*(?:%|€|cm|days?|years?))"
)
# Words that announce a price change without a number: each must be backed by a policy sentence.
PRICE_CHANGE_WORDS = (
    "half price",
    "halved",
    "for free",
    "free of charge",
    "new price",
    "special price",
    "price is now",
    "prices are now",
    "coupon",
)
DISCOUNT_WORDS = ("discount", " off", "sale", "code", "reduc", "cheaper", *PRICE_CHANGE_WORDS)
REFUSALS = (
    "not in our catalog",
    "don't carry",
    "do not carry",
    "don't sell",
    "do not sell",
    "not something we carry",
    "we don't have",
    "we do not have",
)

COLOR_WORDS = (
    "white",
    "black",
    "blue",
    "navy",
    "red",
    "green",
    "sage",
    "ivory",
    "emerald",
    "floral",
    "yellow",
    "camel",
    "cream",
    "olive",
    "grey",
    "gray",
    "burgundy",
    "oatmeal",
    "mustard",
    "brown",
    "charcoal",
    "beige",
    "pink",
    "tan",
    "nude",
    "natural",
    "champagne",
    "stripe",
    "purple",
    "orange",
    "gold",
    "silver",
    "khaki",
    "lilac",
    "turquoise",
    "teal",
    "maroon",
    "violet",
    "sky",
    "light",
)
NOT_CARRIED = (
    "swimsuit",
    "swimwear",
    "bikini",
    "suit",
    "tuxedo",
    "sunglasses",
    "glasses",
    "watch",
    "perfume",
    "pyjamas",
    "pajamas",
    "glove",
    "sock",
    "tie",
    "raincoat",
    "umbrella",
    "jewellery",
    "jewelry",
    "earring",
    "necklace",
    "bracelet",
    "ring",
    "kid",
    "kids",
    "children",
    "child",
    "baby",
    "lingerie",
    "hoodie",
    "shorts",
    "leggings",
    "sandal",
    "wallet",
    "backpack",
    "makeup",
    "lipstick",
    "cap",
    "tights",
    "poncho",
    "kimono",
    "overalls",
    "jumpsuit",
    "vest",
    "waistcoat",
    "men",
)
_HEAD_SYNONYMS = {
    "tee": "t-shirt",
    "tshirt": "t-shirt",
    "jumper": "sweater",
    "pullover": "sweater",
    "trainer": "sneaker",
    "shoe": "sneaker",
    "purse": "bag",
    "handbag": "bag",
    "pant": "trouser",
    "gray": "grey",
}


def _singular_all(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(singular(v) for v in values))


def singular(word: str) -> str:
    for suffix, repl in (
        ("sses", "ss"),
        ("shes", "sh"),
        ("ches", "ch"),
        ("ies", "y"),
        ("es", "e"),
        ("s", ""),
    ):
        if word.endswith(suffix) and len(word) > len(suffix) + 2 and not word.endswith("ss"):
            return word[: -len(suffix)] + repl
    return word


def words(text: str) -> list[str]:
    """Lower-case, singular word tokens (``T-shirts`` -> ``t-shirt``, ``kids'`` -> ``kid``)."""
    out = []
    for w in _WORD_RE.findall(text.lower().replace("\u2019", "'")):
        w = w.strip("'")
        if w.endswith("'s"):
            w = w[:-2]
        w = singular(w)
        out.append(_HEAD_SYNONYMS.get(w, w))
    return out


NOT_CARRIED_SINGULAR = _singular_all(NOT_CARRIED)


def money(value: float) -> str:
    """``€49`` or ``€4.90``: the way answers and catalog sentences write a price."""
    return f"€{value:.0f}" if float(value).is_integer() else f"€{value:.2f}"


def number(raw: str) -> float:
    """A number as answers write it, with a decimal point or comma (``4,90`` -> 4.9)."""
    return float(raw.replace(",", "."))


def sizes_in(text: str) -> list[str]:
    """The size tokens (``S``, ``XL``, ``38``) of ``text``, in order."""
    return re.findall(SIZE_TOKEN, text)


def clock(m: re.Match[str]) -> str:
    """A ``TIME_RE`` match as 24-hour ``HH:MM`` (``3pm`` -> ``15:00``)."""
    if m.group(3):
        hour = int(m.group(1)) % 12 + (12 if m.group(3).lower() == "pm" else 0)
        return f"{hour:02d}:{m.group(2) or '00'}"
    return f"{int(m.group(4)):02d}:{m.group(5)}"


def join_and(values: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    values = list(values)
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def mentions_refusal(text: str) -> bool:
    """Whether ``text`` says, in one of the ``REFUSALS`` phrasings, that we do not carry it."""
    low = text.lower()
    return any(r in low for r in REFUSALS)
