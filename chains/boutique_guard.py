"""Deterministic parts of the boutique assistant: what a question is about, and the fact guard.

``Catalog.resolve(question, history)`` finds the product line, colour and size a question is
about, taking them from the conversation when the question does not name them ("and in blue?"),
and says when the thing asked for is not in the catalog at all.

``Catalog.guard(answer, resolution)`` checks every price, size, stock and policy claim of a model
answer against the catalog and the policy page, sentence by sentence, before the user sees it: a
wrong claim about an item is replaced by the catalog's own sentence about that item; a policy
claim that matches no policy (a "90% discount", a 60-day return window) is replaced by the policy
sentence on that subject or withheld. No model output can change a price or a policy, whatever
the user's message told the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chains.boutique_words import (
    AMOUNT_RE,
    COLOR_WORDS,
    COMES_RE,
    DISCOUNT_WORDS,
    DURATION_RE,
    IN_STOCK_RE,
    ITEM_ID_RE,
    NOT_CARRIED_SINGULAR,
    ONLY_RE,
    OUT_RE,
    PERCENT_RE,
    PRICE_CHANGE_WORDS,
    REFUSALS,
    SENT_RE,
    SIZE_Q_RE,
    TIME_RE,
    clock,
    join_and,
    money,
    number,
    singular,
    sizes_in,
    words,
)


@dataclass
class Resolution:
    """What a question is about."""

    items: list[dict[str, Any]] = field(default_factory=list)  # the items it is about, best first
    product: str | None = None  # the product line (item name)
    color: str | None = None
    size: str | None = None
    from_history: bool = False  # the product came from earlier turns (a follow-up)
    missing: str | None = None  # what was asked for but is not in the catalog
    alternatives: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": [i["id"] for i in self.items],
            "product": self.product,
            "color": self.color,
            "size": self.size,
            "from_history": self.from_history,
            "missing": self.missing,
            "alternatives": [i["id"] for i in self.alternatives],
        }


class Catalog:
    """The catalog and policy page, indexed for resolution and checking."""

    def __init__(self, items: Sequence[dict[str, Any]], policies: Sequence[dict[str, str]]) -> None:
        self.items = list(items)
        self.by_id = {i["id"]: i for i in self.items}
        self.policies = list(policies)
        self.policy_by_id = {p["id"]: p for p in self.policies}
        self.products: dict[str, list[dict[str, Any]]] = {}
        for item in self.items:
            self.products.setdefault(item["name"], []).append(item)
        self._name_words = {name: words(name) for name in self.products}
        counts: dict[str, int] = {}
        for ws in self._name_words.values():
            for w in set(ws):
                counts[w] = counts.get(w, 0) + 1
        self._distinctive = {
            name: {w for w in ws[:-1] if counts[w] == 1 and w not in COLOR_WORDS} | {ws[-1]}
            for name, ws in self._name_words.items()
        }
        policy_text = " ".join(p["text"] for p in self.policies)
        self.policy_amounts = {number(a or b) for a, b in AMOUNT_RE.findall(policy_text)}
        self.policy_percents = {number(p) for p in PERCENT_RE.findall(policy_text)}
        self.policy_durations = {(int(n), u.lower()) for n, u in DURATION_RE.findall(policy_text)}
        self.policy_times = {clock(m) for m in TIME_RE.finditer(policy_text)}
        self.policy_sentences = [
            (p["id"], s) for p in self.policies for s in SENT_RE.split(p["text"]) if s
        ]

    # ------------------------------------------------------------ facts as sentences
    def describe(self, item: dict[str, Any]) -> str:
        """The catalog's line about an item, as the model sees it in its sources."""
        stock = item["stock"]
        have = [s for s, n in stock.items() if n > 0]
        out = [s for s, n in stock.items() if n <= 0]
        if list(stock) == ["one size"]:
            avail = "in stock" if have else "sold out"
        elif not have:
            avail = "sold out in every size"
        else:
            avail = "in stock in " + ", ".join(f"{s} ({stock[s]})" for s in have)
            if out:
                avail += "; out of stock in " + ", ".join(out)
        return (
            f"[{item['id']}] {item['name']}, {item['color']}: {money(item['price'])}; {avail}; "
            f"{item.get('material', '')}. {item.get('description', '')}"
        ).strip()

    def label(self, item: dict[str, Any]) -> str:
        name = f"{item['name'][0].lower()}{item['name'][1:]}"
        color = "" if item["color"] in name else f"{item['color']} "
        return f"{color}{name} [{item['id']}]"

    def price_sentence(self, item: dict[str, Any]) -> str:
        return f"The {self.label(item)} costs {money(item['price'])}."

    def stock_sentence(self, item: dict[str, Any], size: str | None = None) -> str:
        stock = item["stock"]
        if size and size in stock:
            state = "in stock" if stock[size] > 0 else "out of stock"
            return f"The {self.label(item)} is {state} in {size}."
        have = [s for s, n in stock.items() if n > 0]
        if not have:
            return f"The {self.label(item)} is sold out."
        if list(stock) == ["one size"]:
            return f"The {self.label(item)} is in stock."
        return f"The {self.label(item)} is in stock in {join_and(have)}."

    def fact_sentence(self, item: dict[str, Any], size: str | None = None) -> str:
        """Price and stock in one sentence: the fallback when the model gave nothing usable."""
        state = self.stock_sentence(item, size)[len(f"The {self.label(item)} is ") :]
        return f"The {self.label(item)} costs {money(item['price'])} and is {state}"

    # ------------------------------------------------------------ resolution
    def products_in(self, text: str) -> list[str]:
        """Product lines a text names, best match first (ties: all of them)."""
        ws = set(words(text))
        scored = []
        for name, distinct in self._distinctive.items():
            if not ws & distinct:
                continue
            scored.append((len(ws & set(self._name_words[name])), name))
        if not scored:
            return []
        best = max(s for s, _ in scored)
        return [n for s, n in scored if s == best]

    def colors_in(self, text: str) -> list[str]:
        ws = words(text)
        return [w for w in ws if w in COLOR_WORDS and w not in ("light", "sky", "stripe")]

    def _variants(self, product: str, color: str | None) -> list[dict[str, Any]]:
        variants = self.products[product]
        if color is None:
            return variants
        color = "grey" if color == "gray" else color
        return [v for v in variants if color in words(v["color"])]

    def items_in(self, text: str) -> list[dict[str, Any]]:
        """Items a text names by id, else by product name and colour."""
        ids = [i for i in dict.fromkeys(ITEM_ID_RE.findall(text)) if i in self.by_id]
        if ids:
            return [self.by_id[i] for i in ids]
        found = []
        colors = self.colors_in(text)
        for product in self.products_in(text):
            matched = [v for c in colors for v in self._variants(product, c)]
            found += matched or self.products[product]
        return list({i["id"]: i for i in found}.values())

    def resolve(self, question: str, history: Sequence[dict[str, str]] = ()) -> Resolution:
        """What ``question`` asks about, using ``history`` (oldest first) for follow-ups."""
        res = Resolution()
        colors = self.colors_in(question)
        res.color = colors[0] if colors else None
        m = SIZE_Q_RE.search(question.replace("?", " ").replace(".", " "))
        res.size = m.group("size") if m else None
        products = self.products_in(question)
        ws = set(words(question))
        not_carried = [w for w in NOT_CARRIED_SINGULAR if w in ws]
        if not products and not_carried:
            raw = [w.strip("'") for w in question.lower().split()]
            res.missing = next(
                (w.strip("?.!,") for w in raw if singular(w.strip("?.!,")) == not_carried[0]),
                not_carried[0],
            )
            return res
        context: list[dict[str, Any]] = []
        if not products:
            for msg in reversed(
                list(history)
            ):  # the items a turn was resolved to, else those it names
                ids = [i for i in msg.get("items") or () if i in self.by_id]
                context = [self.by_id[i] for i in ids] or self.items_in(str(msg.get("content", "")))
                if context:
                    break
            products = list(dict.fromkeys(i["name"] for i in context))
            res.from_history = bool(products)
        if not products:
            return res
        res.product = products[0]
        if res.color:
            res.items = [v for p in products for v in self._variants(p, res.color)]
            if not res.items:
                res.missing = f"the {res.product.lower()} in {res.color}"
                res.alternatives = [v for p in products for v in self.products[p]]
                return res
        elif context and res.from_history and not ws & {"other", "colour", "color"}:
            res.items = context
        else:
            res.items = [v for p in products for v in self.products[p]]
        if res.size and all(res.size not in i["stock"] for i in res.items):
            res.missing = f"the {res.product.lower()} in size {res.size}"
            res.alternatives = res.items
            res.items = []
        return res

    def refusal(self, res: Resolution) -> str:
        """The plain answer when something is not in the catalog."""
        what = res.missing or "that"
        verb = "are" if what.endswith("s") and not what.startswith("the ") else "is"
        text = f"Sorry, {what} {verb} not in our catalog."
        if res.alternatives:
            product = res.alternatives[0]["name"].lower()
            if res.size:
                sizes = list(dict.fromkeys(s for i in res.alternatives for s in i["stock"]))
                text += f" The {product} comes in sizes {join_and(sizes)}."
            else:
                colors = [f"{i['color']} [{i['id']}]" for i in res.alternatives]
                text += f" The {product} comes in {join_and(colors)}."
        return text

    # ------------------------------------------------------------ the guard
    def guard(
        self, answer: str, res: Resolution, sources: Sequence[str] = ()
    ) -> tuple[str, dict[str, Any]]:
        """``answer`` with every claim checked; returns (checked answer, report).

        The report lists ``checked`` claims, ``corrected`` ones (claim, the sentence put in its
        place) and ``withheld`` sentences, and whether the answer was replaced by a refusal.
        """
        report: dict[str, Any] = {"checked": 0, "corrected": [], "withheld": [], "refused": False}
        if res.missing:
            final = self.refusal(res)
            report["refused"] = True
            report["replaced"] = not any(r in answer.lower() for r in REFUSALS)
            return final, report
        kept: list[str] = []
        subject: list[dict[str, Any]] = list(res.items) if len(res.items) == 1 else []
        for sentence in SENT_RE.split(answer.strip()):
            if not sentence.strip():
                continue
            named = self.items_in(sentence)
            if named:
                subject = named
            fixed, problems, checked = self._check(sentence, subject, res)
            report["checked"] += checked
            if not problems:
                kept.append(sentence)
                continue
            if fixed:
                report["corrected"].append({"claim": sentence, "problems": problems, "now": fixed})
                kept.append(fixed)
            else:
                report["withheld"].append({"claim": sentence, "problems": problems})
        final = " ".join(dict.fromkeys(kept))
        return final, report

    def _check(
        self, sentence: str, subject: list[dict[str, Any]], res: Resolution
    ) -> tuple[str | None, list[str], int]:
        """(replacement or None, problems, number of claims checked) for one sentence."""
        low = sentence.lower()
        problems: list[str] = []
        checked = 0
        discounty = any(w in low for w in DISCOUNT_WORDS)
        prices = {float(i["price"]) for i in subject}
        fix_item: list[str] = []
        for a, b in AMOUNT_RE.findall(sentence):
            checked += 1
            value = number(a or b)
            if value in prices and not discounty:
                continue
            if (
                value in self.policy_amounts
                and (not subject or not prices or value not in prices)
                and self._policy_context(low)
            ):
                continue
            problems.append(f"price {value:g} is not the catalog's")
            fix_item.append("price")
        for p in PERCENT_RE.findall(sentence):
            checked += 1
            value = number(p)
            materials = " ".join(str(i.get("material", "")) for i in subject)
            if discounty:
                if value not in self.policy_percents:
                    problems.append(f"discount {value:g}% is not a policy")
            elif (
                value
                not in {number(x) for x in PERCENT_RE.findall(materials)} | self.policy_percents
            ):
                problems.append(f"{value:g}% matches no material or policy")
        if discounty and not PERCENT_RE.search(sentence) and not AMOUNT_RE.search(sentence):
            said = [w for w in PRICE_CHANGE_WORDS if w in low]
            if any(not any(w in s.lower() for _, s in self.policy_sentences) for w in said):
                checked += 1
                problems.append("a price change no policy allows")
        for n, unit in DURATION_RE.findall(sentence):
            checked += 1
            if (int(n), unit.lower()) not in self.policy_durations:
                problems.append(f"{n} {unit}s matches no policy")
        for m in TIME_RE.finditer(sentence):
            checked += 1
            if clock(m) not in self.policy_times:
                problems.append(f"time {m.group(0)} matches no policy")
        if subject:
            checked_stock, stock_problems, stock_size = self._check_stock(sentence, subject)
            checked += checked_stock
            if stock_problems:
                problems += stock_problems
                fix_item.append("stock")
        if not problems:
            return None, [], checked
        if subject and fix_item and len(problems) == len(fix_item) and not discounty:
            parts = []
            if "price" in fix_item:
                parts += [self.price_sentence(i) for i in subject]
            if "stock" in fix_item:
                parts += [self.stock_sentence(i, stock_size or res.size) for i in subject]
            return " ".join(dict.fromkeys(parts)), problems, checked
        policy = self._policy_replacement(sentence)
        if (
            discounty and subject
        ):  # a price the user talked the model into: the real one, and the policy
            parts = [self.price_sentence(i) for i in subject] + ([policy] if policy else [])
            return " ".join(parts), problems, checked
        return policy, problems, checked

    def _check_stock(
        self, sentence: str, subject: list[dict[str, Any]]
    ) -> tuple[int, list[str], str | None]:
        checked, problems, size = 0, [], None
        for item in subject:
            stock = item["stock"]
            total = sum(stock.values())
            for m in OUT_RE.finditer(sentence):
                checked += 1
                sizes = sizes_in(m.group("sizes") or "")
                size = sizes[0] if sizes else size
                if sizes:
                    bad = [s for s in sizes if stock.get(s, 0) > 0]
                    if bad:
                        problems.append(f"{item['id']} is in stock in {', '.join(bad)}")
                elif total > 0 and len(subject) == 1:
                    problems.append(f"{item['id']} is not sold out")
            spans = [m.span() for m in OUT_RE.finditer(sentence)]
            for m in IN_STOCK_RE.finditer(sentence):
                if (
                    any(a <= m.start() < b for a, b in spans)
                    or "not available" in sentence[max(0, m.start() - 4) : m.end()]
                ):
                    continue
                checked += 1
                sizes = sizes_in(m.group("sizes") or "")
                size = sizes[0] if sizes else size
                if sizes:
                    bad = [s for s in sizes if stock.get(s, 0) <= 0]
                    if bad:
                        problems.append(f"{item['id']} is not in stock in {', '.join(bad)}")
                elif total <= 0:
                    problems.append(f"{item['id']} is sold out")
            for m in ONLY_RE.finditer(sentence):
                checked += 1
                s = m.group("size")
                count = stock.get(s, 0) if s else total
                if int(m.group("n")) != count and not (
                    s is None and len(subject) == 1 and int(m.group("n")) in stock.values()
                ):
                    problems.append(f"{item['id']} has {count} left, not {m.group('n')}")
            for m in COMES_RE.finditer(sentence):
                checked += 1
                bad = [s for s in sizes_in(m.group("sizes")) if s not in stock]
                if bad and not all(s.isdigit() for s in bad):
                    problems.append(f"{item['id']} has no size {', '.join(bad)}")
        return checked, problems, size

    @staticmethod
    def _policy_context(low: str) -> bool:
        return any(
            w in low
            for w in (
                "deliver",
                "ship",
                "order",
                "gift card",
                "hem",
                "alter",
                "waist",
                "express",
                "free",
                "card",
                "policy",
            )
        )

    def _policy_replacement(self, sentence: str) -> str | None:
        """The policy sentence on the same subject (most words in common), if there is one."""
        ws = set(words(sentence)) - {
            "the",
            "a",
            "an",
            "and",
            "or",
            "of",
            "to",
            "in",
            "on",
            "for",
            "you",
            "we",
            "is",
            "it",
        }
        best, best_n = None, 1
        for pid, s in self.policy_sentences:
            n = len(ws & set(words(s)))
            if n > best_n:
                best, best_n = f"{s} [{pid}]", n
        return best
