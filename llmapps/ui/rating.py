"""Rating at speed, without the web: what the Rate tab asks next, the rater's keys (A, B, tie,
skip, both bad, undo), and the statistics shown beside it.

A, B and tie (and "both bad", which counts as a tie) are ratings in the sheet's ``RatingStore``
(``ratings.jsonl``, what ``llmapps human-eval import`` and the preference-pair export read); every
key press is also a line of ``decisions.jsonl`` beside it, the rater's journal, which is what makes
undo and skip survive a reload. Pairs where both sides are invalid (a failed, empty or
``valid: false`` reply on each side) are not asked: they are recorded once in the journal as
``both-invalid``.

Statistics: each strategy's win rate (a tie counts half) with its 95% bootstrap interval
(``llmapps.evaluate.stats.bootstrap_ci``), a "too few ratings" note under ``MIN_RATINGS``, and a
Bradley–Terry strength from every pairwise result (ties as half a win each way).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmapps.errors import InputError

log = logging.getLogger(__name__)

JOURNAL_FILE = "decisions.jsonl"
MIN_RATINGS = 10  # under this many comparisons a win rate is shown with a warning
#: key -> (action, button text); the page binds each key to its button
KEYS = {
    "a": ("A", "A is better  [A]"),
    "b": ("B", "B is better  [B]"),
    "t": ("tie", "Tie  [T]"),
    "x": ("both-bad", "Both bad  [X]"),
    "s": ("skip", "Skip  [S]"),
    "u": ("undo", "Undo  [U]"),
}
RATING_ACTIONS = ("A", "B", "tie", "both-bad")
AUTO_RATER = "(auto)"


def unusable(row: Mapping[str, Any] | None, fields: Sequence[str]) -> bool:
    """A reply not worth a rater's look: missing, failed, marked invalid, or empty in every field."""
    if row is None or row.get("error") or row.get("valid") is False:
        return True
    return not any(str(row.get(f) or "").strip() for f in fields)


def bradley_terry(
    results: Sequence[tuple[str, str, float]], iterations: int = 200
) -> dict[str, float]:
    """Bradley–Terry strengths (summing to the number of players) from ``(first, second, score of
    first)`` results, ties as half a win each way, by the MM algorithm (Hunter 2004). A player
    with no win gets a small floor instead of zero, so a ranking still orders the rest."""
    names = sorted({n for a, b, _ in results for n in (a, b)})
    if not names:
        return {}
    wins = dict.fromkeys(names, 0.0)
    games: dict[tuple[str, str], float] = {}
    for a, b, s in results:
        wins[a] += s
        wins[b] += 1.0 - s
        key = (min(a, b), max(a, b))
        games[key] = games.get(key, 0.0) + 1.0
    strength = dict.fromkeys(names, 1.0)
    for _ in range(iterations):
        new = {}
        for i in names:
            denom = sum(
                n / (strength[i] + strength[j])
                for (x, y), n in games.items()
                for j in ((y,) if x == i else (x,) if y == i else ())
            )
            new[i] = max(wins[i], 0.05) / denom if denom else strength[i]
        total = sum(new.values())
        strength = {n: v * len(names) / total for n, v in new.items()}
    return {n: round(v, 4) for n, v in strength.items()}


class RatingFlow:
    """The Rate tab's state on disk: a ``RatingStore`` plus the raters' journal.

    Args:
        store: the sheet's store.
        outputs: strategy -> sample id -> output row of the bench run (to find pairs where both
            sides are invalid); None: every pair is asked.
        samples: the run's samples by id (the full article of a pair).
        fields: the output fields a rater sees.
    """

    def __init__(
        self,
        store: Any,
        outputs: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        samples: Mapping[str, Mapping[str, Any]] | None = None,
        fields: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.samples = dict(samples or {})
        self.path = Path(store.folder) / JOURNAL_FILE
        self._lock = threading.Lock()
        self.both_invalid: set[str] = set()
        if outputs is not None:
            for iid, k in store.key.items():
                a = outputs.get(k["A"], {}).get(k["id"])
                b = outputs.get(k["B"], {}).get(k["id"])
                if unusable(a, fields) and unusable(b, fields):
                    self.both_invalid.add(iid)
        recorded = {
            e["item"] for e in self._journal() if e.get("action") == "both-invalid"
        }  # recorded once, so the journal says why they were never asked
        for iid in sorted(self.both_invalid - recorded):
            self._append({"item": iid, "rater": AUTO_RATER, "action": "both-invalid"})

    # ------------------------------------------------------------------ the journal
    def _journal(self) -> list[dict[str, Any]]:
        from llmapps.jsonl import scan_jsonl

        if not self.path.is_file():
            return []
        out = []
        for line in scan_jsonl(self.path.read_bytes(), str(self.path)):
            if isinstance(line.row, dict) and line.row.get("item") and line.row.get("action"):
                out.append(line.row)
        return out

    def _append(self, entry: dict[str, Any]) -> None:
        entry = {**entry, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def history(self, rater: str) -> list[tuple[str, str]]:
        """``(item, action)`` of ``rater``'s key presses still standing (undos applied)."""
        stack: list[tuple[str, str]] = []
        for e in self._journal():
            if e.get("rater") != rater:
                continue
            if e["action"] == "undo":
                if stack:
                    stack.pop()
            elif e["action"] in (*RATING_ACTIONS, "skip"):
                stack.append((str(e["item"]), str(e["action"])))
        return stack

    # ------------------------------------------------------------------ what to ask
    def counts(self, rater: str) -> dict[str, int]:
        rated = self.store.rated_by(rater)
        skipped = {i for i, a in self.history(rater) if a == "skip"} - rated
        return {
            "pairs": len(self.store.items),
            "rated": len(rated),
            "skipped": len(skipped),
            "both_invalid": len(self.both_invalid - rated - skipped),
        }

    def next_item(self, rater: str) -> dict[str, str] | None:
        """The first pair ``rater`` has not rated or skipped, leaving out pairs whose both sides
        are invalid (None when nothing is left)."""
        done = self.store.rated_by(rater) | {i for i, a in self.history(rater) if a == "skip"}
        done |= self.both_invalid
        return next((it for it in self.store.items if it["item"] not in done), None)

    def article(self, item: str) -> str:
        """The full article of a pair (title and text), or the sheet's excerpt."""
        sid = self.store.key.get(item, {}).get("id")
        sample = self.samples.get(str(sid)) if sid is not None else None
        if not sample:
            return next((it["context"] for it in self.store.items if it["item"] == item), "")
        return "\n\n".join(str(sample.get(k) or "") for k in ("title", "text") if sample.get(k))

    def act(self, rater: str, item: str | None, action: str, comment: str = "") -> str:
        """Apply one key; the status line to show. ``InputError`` for a key with nothing to act on."""
        rater = " ".join((rater or "").split())
        if not rater:
            raise InputError("type your name and press Start first")
        if action == "undo":
            hist = self.history(rater)
            if not hist:
                raise InputError("nothing to undo yet")
            last_item, last = hist[-1]
            if last in RATING_ACTIONS:
                self.store.withdraw(last_item, rater)
            self._append({"item": last_item, "rater": rater, "action": "undo"})
            return f"undid {last} on {last_item}"
        if not item:
            raise InputError("no pair to rate: type your name and press Start")
        if action not in (*RATING_ACTIONS, "skip"):
            raise InputError(f"{action!r} is not a rating: use A, B, tie, both bad, skip or undo")
        if action in RATING_ACTIONS:
            pref = "tie" if action == "both-bad" else action
            note = (
                "both bad" + (f"; {comment}" if comment else "")
                if action == "both-bad"
                else comment
            )
            self.store.add(item, pref, rater, note)
        self._append({"item": item, "rater": rater, "action": action})
        return f"saved {item}: {action}"


def win_table(store: Any) -> tuple[list[list[Any]], str]:
    """(rows of the statistics table, a note under it) from the store's counted ratings."""
    from llmapps.evaluate.stats import bootstrap_ci

    ratings = store.ratings()
    if not ratings:
        return [], "no ratings yet"
    scores: dict[str, list[float]] = {n: [] for n in store.strategies}
    results: list[tuple[str, str, float]] = []
    for r in ratings:
        k = store.key.get(r["item"])
        if k is None:
            continue
        s_a = {"A": 1.0, "B": 0.0, "tie": 0.5}[r["preference"]]
        scores.setdefault(k["A"], []).append(s_a)
        scores.setdefault(k["B"], []).append(1.0 - s_a)
        results.append((k["A"], k["B"], s_a))
    strength = bradley_terry(results)
    ranked = sorted(scores, key=lambda n: -strength.get(n, 0.0))
    rows = []
    for rank, name in enumerate(ranked, start=1):
        ci = bootstrap_ci(scores[name])
        n = ci.n
        rows.append(
            [
                rank,
                name,
                "-" if n == 0 else f"{ci.mean:.2f}",
                "-" if n < 2 else f"{ci.low:.2f} – {ci.high:.2f}",
                n,
                f"{strength.get(name, 0.0):.2f}" if name in strength else "-",
                "" if n >= MIN_RATINGS else f"too few ratings (under {MIN_RATINGS})",
            ]
        )
    raters = len({r["rater"] for r in ratings})
    note = (
        f"{len(ratings)} ratings by {raters} rater(s). Win rate: the share of its comparisons a "
        "strategy won, a tie or 'both bad' counting half; the interval is a 95% bootstrap over "
        "those comparisons. Strength: Bradley–Terry from every pairwise result (the rank's order; "
        "1.0 is average)."
    )
    report = store.summary()
    kappa = report["agreement"]["cohen_kappa"] if report else None
    note += (
        f" Agreement between raters (Cohen's kappa, 1 = always agree, 0 = chance): {kappa:.2f}."
        if kappa is not None
        else " Agreement between raters needs two raters on the same pair."
    )
    return rows, note


WIN_HEADERS = ["rank", "strategy", "win rate", "95% interval", "comparisons", "strength", "note"]


def keys_script() -> str:
    """The page's keyboard shortcuts: a key clicks its button while the Rate tab shows (never
    while the rater types in a box)."""
    mapping = {k: f"rate-key-{action}" for k, (action, _) in KEYS.items()}
    return (
        "<script>\n(() => {\n"
        f"  const keys = {json.dumps(mapping)};\n"
        "  document.addEventListener('keydown', (e) => {\n"
        "    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;\n"
        "    const t = e.target;\n"
        "    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName)))"
        " return;\n"
        "    const id = keys[e.key.toLowerCase()];\n"
        "    const button = id && document.getElementById(id);\n"
        "    if (!button || button.offsetParent === null || button.disabled) return;\n"
        "    e.preventDefault();\n"
        "    button.click();\n"
        "  });\n"
        "})();\n</script>"
    )
