"""Cleaning on the way in: HTML to text, Unicode NFC, boilerplate, length, duplicates, PII.

Everything here works on plain Python data and is deterministic, so a cleaning step can be tested
on its own and rerun on saved JSONL. ``clean_items`` runs the whole sequence with ``CleanOptions``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llmapps.ingest.models import CleanStats, NewsItem

# Elements whose text is never article text (and must never reach a page or a prompt as markup).
_DROP_TAGS = (
    "script",
    "style",
    "noscript",
    "template",
    "iframe",
    "object",
    "embed",
    "svg",
    "head",
    "form",
    "button",
    "select",
    "textarea",
)
_BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "pre",
        "tr",
        "table",
        "section",
        "article",
        "header",
        "footer",
        "figure",
        "figcaption",
        "hr",
        "dd",
        "dt",
        "main",
        "aside",
    }
)
# Invisible or look-alike characters that survive NFC and break duplicate detection.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = dict.fromkeys(map(ord, "\u00a0\u2007\u202f\u2009\u200a\u3000\t"), " ")


def html_to_text(markup: str) -> str:
    """Plain text of an HTML fragment or page: scripts, styles, comments dropped; blocks as lines.

    Uses lxml's HTML parser (no regular expressions over markup), so broken HTML degrades to its
    text rather than leaking tags. Text without markup is returned unchanged (but unescaped).
    """
    if "<" not in markup and "&" not in markup:
        return markup
    import html

    import lxml.etree
    import lxml.html

    if "<" not in markup:
        return html.unescape(markup)
    try:
        root = lxml.html.fragment_fromstring(markup, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return html.unescape(markup)
    lxml.etree.strip_elements(
        root, *_DROP_TAGS, lxml.etree.Comment, lxml.etree.ProcessingInstruction, with_tail=False
    )
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.lower() in _BLOCK_TAGS:
            el.tail = "\n" + (el.tail or "")
            if el.tag.lower() in ("p", "div", "li", "br", "tr"):
                el.text = "\n" + (el.text or "")
    return str(root.text_content())


def normalize_text(text: str) -> str:
    """NFC, no control or zero-width characters, single spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(_INVISIBLE).translate(_SPACES)
    text = "".join(c for c in text if c == "\n" or unicodedata.category(c)[0] != "C")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


# Lines that are furniture of a site or feed rather than part of the story. Matched against whole
# plain-text lines (never against markup).
BOILERPLATE_PATTERNS = [
    r"(read|continue reading|read the full story|full story)( more)?( here| at .*| on .*)?\W*",
    r"click here.*",
    r"(sign up|subscribe)( now)?( to| for)? .*newsletter.*",
    r"subscribe( now)?\W*",
    r"share (this|the) (article|story|post)\W*.*",
    r"follow us on .*",
    r"(all rights reserved|copyright|©).*",
    r".*all rights reserved\W*",
    r"the post .* appeared first on .*",
    r"advertisement\W*",
    r"(related|more on this story|see also)\W*",
    r"this article (was )?originally (appeared|published) .*",
    r"(image|photo|picture)( credit)?:.*",
    r"\[\+\d+ chars\]",
    r".*\[\+\d+ chars\]",
]
_BOILERPLATE_RE = re.compile("|".join(f"(?:{p})" for p in BOILERPLATE_PATTERNS), re.I)


def strip_boilerplate(text: str, extra_lines: frozenset[str] = frozenset()) -> tuple[str, int]:
    """Drop boilerplate lines (known patterns or ``extra_lines``); returns (text, lines removed)."""
    kept, removed = [], 0
    for line in text.split("\n"):
        if line and (_BOILERPLATE_RE.fullmatch(line.strip()) or line in extra_lines):
            removed += 1
            continue
        kept.append(line)
    return normalize_text("\n".join(kept)), removed


def repeated_lines(texts: Sequence[str], min_docs: int = 3, share: float = 0.5) -> frozenset[str]:
    """Lines found in at least ``share`` of ``texts`` (and ``min_docs`` of them): site furniture."""
    if len(texts) < min_docs:
        return frozenset()
    counts = Counter(line for t in texts for line in set(t.split("\n")) if line)
    need = max(min_docs, int(np.ceil(share * len(texts))))
    return frozenset(line for line, n in counts.items() if n >= need)


def truncate_text(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` at the last sentence (or word) boundary before the limit."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    cut = max(head.rfind(". "), head.rfind(".\n"), head.rfind("? "), head.rfind("! "))
    if cut > max_chars // 2:
        return head[: cut + 1].rstrip()
    return head.rsplit(" ", 1)[0].rstrip() + " …"


# ----------------------------------------------------------------------------- PII

_EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_IPV4_RE = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
_CARD_RE = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}(?![\w-])"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _phone_like(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if not 9 <= len(digits) <= 15:
        return False
    # Plain groups of numbers separated by spaces ("1974 2006 2010") are figures, not phones.
    return (
        match.startswith("+")
        or "(" in match
        or "-" in match
        or "." in match
        or (
            " " in match
            and len(match.split()) <= 4
            and len(match.split()[0]) <= 5
            and match.split()[0].startswith("0")
        )
    )


def find_pii(text: str) -> list[tuple[str, str]]:
    """(kind, text) of every e-mail, payment card, IP address and phone number ``scrub_pii`` would
    replace, kinds ``email``, ``card``, ``ip``, ``phone`` (for audits that must not rewrite text)."""
    found = [("email", m.group(0)) for m in _EMAIL_RE.finditer(text)]
    found += [
        ("card", m.group(0))
        for m in _CARD_RE.finditer(text)
        if _luhn_ok(re.sub(r"\D", "", m.group(0)))
    ]
    found += [("ip", m.group(0)) for m in _IPV4_RE.finditer(text)]
    cards = {re.sub(r"\D", "", v) for k, v in found if k == "card"}
    found += [
        ("phone", m.group(0))
        for m in _PHONE_RE.finditer(text)
        if _phone_like(m.group(0)) and re.sub(r"\D", "", m.group(0)) not in cards
    ]
    return found


def scrub_pii(text: str) -> tuple[str, int]:
    """Replace e-mail addresses, payment card numbers, IP addresses and phone numbers by tags.

    Meant for text that will be used for training; returns (text, number of replacements).
    """
    count = 0

    def sub(pattern: re.Pattern[str], tag: str, text: str, ok: object = None) -> str:
        nonlocal count

        def repl(m: re.Match[str]) -> str:
            nonlocal count
            if ok is not None and not ok(m.group(0)):  # type: ignore[operator]
                return m.group(0)
            count += 1
            return tag

        return pattern.sub(repl, text)

    text = sub(_EMAIL_RE, "[EMAIL]", text)
    text = sub(_CARD_RE, "[CARD]", text, lambda s: _luhn_ok(re.sub(r"\D", "", s)))
    text = sub(_IPV4_RE, "[IP]", text)
    text = sub(_PHONE_RE, "[PHONE]", text, _phone_like)
    return text, count


# ----------------------------------------------------------------------------- duplicates


def _shingles(text: str, k: int = 5) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    if len(words) <= k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


class MinHasher:
    """MinHash signatures over word shingles, with multiply-shift hashing in numpy.

    Each of ``num_perm`` hash functions is ``((a * x + b) mod 2**64) >> 32`` with a random odd ``a``
    (Dietzfelbinger's universal family), applied to a 64-bit digest of every shingle.
    """

    def __init__(self, num_perm: int = 64, shingle_words: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(
            1
        )
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.k = shingle_words

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature of ``text`` (``num_perm`` uint64 values)."""
        sh = _shingles(text, self.k)
        if not sh:
            return np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        x = np.array(
            [
                int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                for s in sh
            ],
            dtype=np.uint64,
        )
        with np.errstate(over="ignore"):
            h = (np.outer(x, self.a) + self.b) >> np.uint64(32)
        return h.min(axis=0)


def jaccard(a: str, b: str, k: int = 5) -> float:
    """Exact Jaccard similarity of two texts' word shingles (for checks and tests)."""
    sa, sb = _shingles(a, k), _shingles(b, k)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def near_duplicate_groups(
    texts: Sequence[str], threshold: float = 0.7, num_perm: int = 64, bands: int = 16
) -> list[list[int]]:
    """Groups (index lists, size > 1) of texts whose estimated shingle Jaccard is >= ``threshold``.

    Locality-sensitive hashing over ``bands`` bands finds candidate pairs without comparing every
    pair; each candidate is then confirmed on its full signature.
    """
    hasher = MinHasher(num_perm)
    sigs = [hasher.signature(t) for t in texts]
    rows = num_perm // bands
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(sigs):
            buckets[sig[band * rows : (band + 1) * rows].tobytes()].append(i)
        for members in buckets.values():
            for j in members[1:]:
                i = members[0]
                if find(i) != find(j) and float(np.mean(sigs[i] == sigs[j])) >= threshold:
                    parent[find(j)] = find(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


# ----------------------------------------------------------------------------- the whole pass


class CleanOptions(BaseModel):
    """What ``clean_items`` does; the defaults suit riddles of news articles."""

    model_config = ConfigDict(extra="forbid")

    min_words: int = Field(30, ge=0, description="shorter articles are dropped")
    max_chars: int = Field(20_000, ge=100, description="longer articles are cut at a sentence end")
    boilerplate: bool = Field(
        True, description="drop known furniture lines and lines repeated across a source"
    )
    dedup: bool = Field(True, description="drop exact duplicates (same text)")
    near_dup_threshold: float | None = Field(
        0.7, gt=0.0, le=1.0, description="None: no near-duplicate pass"
    )
    scrub_pii: bool = Field(
        False, description="replace e-mails, phones, cards, IPs (for training text)"
    )


def clean_items(
    items: Sequence[NewsItem], options: CleanOptions | None = None
) -> tuple[list[NewsItem], CleanStats]:
    """Normalise, strip boilerplate, bound lengths and drop duplicates; returns (kept, stats).

    Of a group of duplicates the longest text is kept (a full article beats a syndicated teaser),
    at the position of the group's first member.
    """
    opts = options or CleanOptions()
    stats = CleanStats()
    staged: list[NewsItem] = []
    by_source: dict[str, list[str]] = defaultdict(list)
    normed = []
    for item in items:
        text = normalize_text(html_to_text(item.text))
        line = {
            k: " ".join(normalize_text(html_to_text(getattr(item, k))).split())
            for k in ("title", "source", "author")
        }
        normed.append(item.model_copy(update={"text": text, **line}))
        by_source[item.origin or item.source].append(text)
    furniture = (
        {src: repeated_lines(texts) for src, texts in by_source.items()} if opts.boilerplate else {}
    )
    for item in normed:
        text = item.text
        if opts.boilerplate:
            text, removed = strip_boilerplate(
                text, furniture.get(item.origin or item.source, frozenset())
            )
            stats.boilerplate_lines += removed
        if opts.scrub_pii:
            text, n = scrub_pii(text)
            title, m = scrub_pii(item.title)
            stats.pii_replacements += n + m
            item = item.model_copy(update={"title": title})
        if len(text.split()) < opts.min_words:
            stats.too_short += 1
            stats.dropped.append(
                f"{item.title or item.id}: {len(text.split())} words, fewer than {opts.min_words}"
            )
            continue
        if len(text) > opts.max_chars:
            text = truncate_text(text, opts.max_chars)
            stats.truncated += 1
        staged.append(
            item.model_copy(update={"text": text, "title": item.title or text.split(".")[0][:80]})
        )

    drop: set[int] = set()
    if opts.dedup:
        first: dict[str, int] = {}
        for i, item in enumerate(staged):
            key = hashlib.sha256(
                " ".join(re.findall(r"\w+", item.text.lower())).encode()
            ).hexdigest()
            if key in first:
                drop.add(i)
                stats.exact_duplicates += 1
                stats.dropped.append(f"{item.title}: same text as {staged[first[key]].title!r}")
            else:
                first[key] = i
    replace_at: dict[int, int] = {}
    if opts.near_dup_threshold is not None:
        alive = [i for i in range(len(staged)) if i not in drop]
        for group in near_duplicate_groups(
            [staged[i].text for i in alive], opts.near_dup_threshold
        ):
            members = sorted(alive[g] for g in group)
            best = max(members, key=lambda i: (staged[i].full_text, len(staged[i].text)))
            for i in members:
                if i != best:
                    stats.near_duplicates += 1
                    stats.dropped.append(
                        f"{staged[i].title}: near-duplicate of {staged[best].title!r} "
                        f"({staged[best].origin or staged[best].source})"
                    )
            # The kept version takes the place of the group's first member, keeping feed order.
            drop.update(members[1:])
            replace_at[members[0]] = best
    kept = [staged[replace_at.get(i, i)] for i in range(len(staged)) if i not in drop]
    stats.kept = len(kept)
    return kept, stats
