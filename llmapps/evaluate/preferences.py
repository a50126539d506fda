"""Preference pairs: one file format for preference tuning, and human ratings turned into it.

A pairs file is JSONL, one ``PreferencePair`` a line::

    {"id": "h-q0003", "sample_id": "a017", "source": "human",
     "prompt": {"title": "...", "text": "..."},          # the input fields of the sample
     "chosen": {"summary": "...", ...},                   # the preferred reply's output fields
     "rejected": {"summary": "...", ...},
     "provenance": {...}}                                 # who or what preferred it, and why

``prompt``, ``chosen`` and ``rejected`` are field dicts, not rendered text: the trainer renders
them with the same prompt layout it trains and serves with, so a pair never carries a stale
template. ``provenance`` says where the pair came from: for ``human`` pairs the sheet item, the
raters for and against, ties and the vote margin, and each reply's producer (strategy, its options:
adapter, seed, temperature); for ``ai`` pairs (AI feedback, built by a trainer) the reward terms of
both replies and the adapter and seed that sampled them.

``ratings_to_pairs`` turns blinded A/B ratings (``llmapps.evaluate.human``: a sheet's ``key.json``
and its ``ratings.jsonl`` or filled CSVs) into pairs, counting every rating it does not turn into
a pair and why (``PairsReport.counts``): ties, raters who contradict each other with no majority,
ratings of items the key does not know, items whose reply is missing or failed, identical replies.
``read_rating_files`` reads the rating files with their own counts (re-ratings superseded, bad
lines, a torn last line). The web app's "export as pairs" and the training side's pairs command share
them. ``write_pairs`` writes a file atomically and returns its SHA-256 (what an adapter's manifest
cites); ``read_pairs`` reads one back, naming every bad line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmapps.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "COUNT_KEYS",
    "PairsReport",
    "PreferencePair",
    "RatingsRead",
    "pairs_sha256",
    "ratings_to_pairs",
    "read_pairs",
    "read_rating_files",
    "write_pairs",
]

# What a report counts, in the order it is shown (every key always present, zeros included).
COUNT_KEYS = (
    "ratings",  # ratings read (the latest per rater and item)
    "items_rated",  # sheet items with at least one counted rating
    "pairs",  # pairs written
    "ties",  # items whose every vote was a tie: no preference to learn
    "conflicts",  # items where raters disagreed with no majority (as many A as B votes)
    "majority_with_dissent",  # items kept by majority although a rater voted the other way
    "unknown_items",  # ratings of items the key does not hold (another sheet's ratings?)
    "missing_outputs",  # items whose sample or one of whose replies is not in the outputs
    "failed_outputs",  # items where one reply is a failure (an error row): not a reply to prefer
    "identical_replies",  # items whose two replies have the same output fields
)


class PreferencePair(BaseModel):
    """One line of a pairs file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    sample_id: str
    source: Literal["human", "ai"]
    prompt: dict[str, str]
    chosen: dict[str, str]
    rejected: dict[str, str]
    provenance: dict[str, Any] = Field(default_factory=dict)


@dataclass
class RatingsRead:
    """Ratings read from files: the latest per (rater, item), and what was not counted."""

    ratings: list[dict[str, str]] = field(default_factory=list)
    superseded: int = 0  # earlier ratings of the same item by the same rater, replaced
    bad_lines: int = 0
    torn_last_line: int = 0  # a last line cut by a kill mid-write (0 or one per file)
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "superseded": self.superseded,
            "bad_lines": self.bad_lines,
            "torn_last_line": self.torn_last_line,
        }


@dataclass
class PairsReport:
    """The pairs made and every count of what was not made into a pair (``COUNT_KEYS``)."""

    pairs: list[PreferencePair] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    notes: list[str] = field(default_factory=list)  # one line per skipped item, for the log

    def summary(self) -> str:
        """One line: ``12 pairs from 20 rated items (3 ties, 1 conflict, ...)``."""
        c = self.counts
        skipped = [f"{c[k]} {k.replace('_', ' ')}" for k in COUNT_KEYS[3:] if c.get(k)] + [
            f"{v} {k.replace('_', ' ')}"
            for k, v in c.items()
            if k not in COUNT_KEYS and isinstance(v, int) and v
        ]
        return (
            f"{c['pairs']} pairs from {c['items_rated']} rated items ({c['ratings']} ratings)"
            + (f"; {', '.join(skipped)}" if skipped else "")
        )


def _norm_choice(value: Any) -> str | None:
    return {"a": "A", "b": "B", "tie": "tie", "=": "tie"}.get(str(value or "").strip().lower())


def read_rating_files(paths: Sequence[Path | str]) -> RatingsRead:
    """Ratings from ``ratings.jsonl`` stores and/or filled sheet CSVs, with counts.

    The latest rating of each (rater, item) counts, as in ``llmapps.evaluate.human``; a bad line is
    counted and named in ``problems`` (not fatal: one damaged line must not lose a session of
    ratings); a last line without its newline (a kill mid-write) is counted as torn.

    Raises:
        InputError: a path that is missing or a folder (named, with what to give instead).
    """
    from llmapps.evaluate.human import read_sheet
    from llmapps.jsonl import scan_jsonl

    out = RatingsRead()
    latest: dict[tuple[str, str], dict[str, str]] = {}

    def add(item: Any, pref: Any, rater: Any, where: str) -> None:
        norm = _norm_choice(pref)
        if norm is None or not str(item or "").strip() or not str(rater or "").strip():
            out.bad_lines += 1
            out.problems.append(f"{where}: expected item, rater and preference A, B or tie")
            return
        k = (" ".join(str(rater).split()), str(item).strip())
        if k in latest:
            out.superseded += 1
            latest.pop(k)
        latest[k] = {"item": k[1], "preference": norm, "rater": k[0]}

    for p in paths:
        path = Path(p)
        if not path.is_file():
            kind = "is a folder" if path.is_dir() else "does not exist"
            raise InputError(
                f"the ratings {path} {kind}; give a ratings.jsonl of the web app or a filled sheet.csv"
            )
        if path.suffix == ".jsonl":
            for line in scan_jsonl(path.read_bytes(), str(path)):
                if line.row is None:
                    if not line.complete:
                        out.torn_last_line += 1
                        out.problems.append(f"{path}:{line.lineno}: a half-written last line")
                        continue
                    out.bad_lines += 1
                    out.problems.append(line.problem or f"{path}:{line.lineno}: not valid JSON")
                    continue
                r = line.row
                add(r.get("item"), r.get("preference"), r.get("rater"), f"{path}:{line.lineno}")
            continue
        for n, row in read_sheet(path):
            if not (row.get("preference") or "").strip():
                continue  # not rated yet
            add(
                row.get("item"),
                row.get("preference"),
                (row.get("rater") or "").strip() or path.stem,
                f"{path}:{n}",
            )
    out.ratings = list(latest.values())
    return out


def _fields(row: Mapping[str, Any], names: Sequence[str]) -> dict[str, str]:
    return {n: "" if row.get(n) is None else str(row.get(n)) for n in names}


def ratings_to_pairs(
    ratings: Sequence[Mapping[str, str]],
    key: Mapping[str, Mapping[str, str]],
    outputs: Mapping[str, Mapping[str, Mapping[str, Any]]],
    samples: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    *,
    input_fields: Sequence[str],
    output_fields: Sequence[str],
    producers: Mapping[str, Mapping[str, Any]] | None = None,
    read: RatingsRead | None = None,
) -> PairsReport:
    """Pairs from blinded A/B ratings: one pair per sheet item with a majority.

    Each item's votes are counted over its raters (the latest rating of each): the side with more
    A-or-B votes is ``chosen``; ties count for neither side. An item with only tie votes is a
    *tie*, one with as many votes for A as for B a *conflict*: no pair, both counted. A majority
    with a dissenting rater makes a pair and is counted as ``majority_with_dissent`` (its margin
    is in the provenance, for a trainer that wants to weigh or drop them).

    Args:
        ratings: ``{"item", "preference", "rater"}`` rows (``read_rating_files`` or
            ``RatingStore.ratings()``).
        key: the sheet key's items, ``{item: {"id", "A", "B"}}`` (``human.read_key``).
        outputs: strategy -> sample id -> output row (``human.load_run_outputs``).
        samples: the inputs, a list of rows with ``id`` or a dict by id.
        input_fields: the sample fields that form the prompt (a task's input variables).
        output_fields: the reply fields compared (a task's output variables).
        producers: strategy -> what produced its replies (options: adapter, seed, temperature),
            copied into each pair's provenance.
        read: the ``RatingsRead`` the ratings came from: its counts join the report's.

    Returns:
        A ``PairsReport``: the pairs, in sheet-item order, and the counts (``COUNT_KEYS``, plus
        ``superseded``, ``bad_lines`` and ``torn_last_line`` when ``read`` is given).
    """
    by_id = (
        {str(k): v for k, v in samples.items()}
        if isinstance(samples, Mapping)
        else {str(s.get("id")): s for s in samples}
    )
    report = PairsReport()
    c = report.counts
    if read is not None:
        c.update(read.counts())
        report.notes += read.problems
    votes: dict[str, list[Mapping[str, str]]] = {}
    c["ratings"] = len(ratings)
    for r in ratings:
        item = str(r.get("item", ""))
        if item not in key:
            c["unknown_items"] += 1
            report.notes.append(f"rating of item {item!r} by {r.get('rater')!r}: not in the key")
            continue
        votes.setdefault(item, []).append(r)
    c["items_rated"] = len(votes)
    for item in sorted(votes):
        k = key[item]
        rs = votes[item]
        a_for = sorted(r["rater"] for r in rs if r["preference"] == "A")
        b_for = sorted(r["rater"] for r in rs if r["preference"] == "B")
        tie_by = sorted(r["rater"] for r in rs if r["preference"] == "tie")
        if not a_for and not b_for:
            c["ties"] += 1
            continue
        if len(a_for) == len(b_for):
            c["conflicts"] += 1
            report.notes.append(f"{item}: {len(a_for)} rater(s) for A, as many for B: no pair")
            continue
        win, lose = ("A", "B") if len(a_for) > len(b_for) else ("B", "A")
        sid = str(k["id"])
        sample = by_id.get(sid)
        won = outputs.get(k[win], {}).get(sid)
        lost = outputs.get(k[lose], {}).get(sid)
        if sample is None or won is None or lost is None:
            c["missing_outputs"] += 1
            report.notes.append(f"{item}: sample {sid!r} or a reply of it is missing")
            continue
        if won.get("error") or lost.get("error"):
            c["failed_outputs"] += 1
            report.notes.append(f"{item}: a reply of sample {sid!r} is a failure")
            continue
        chosen, rejected = _fields(won, output_fields), _fields(lost, output_fields)
        if chosen == rejected:
            c["identical_replies"] += 1
            continue
        if a_for and b_for:
            c["majority_with_dissent"] += 1
        producers = producers or {}
        report.pairs.append(
            PreferencePair(
                id=f"h-{item}",
                sample_id=sid,
                source="human",
                prompt=_fields(sample, input_fields),
                chosen=chosen,
                rejected=rejected,
                provenance={
                    "item": item,
                    "raters_for": a_for if win == "A" else b_for,
                    "raters_against": b_for if win == "A" else a_for,
                    "raters_tie": tie_by,
                    "margin": abs(len(a_for) - len(b_for)),
                    "chosen_by": {"strategy": k[win], **dict(producers.get(k[win], {}))},
                    "rejected_by": {"strategy": k[lose], **dict(producers.get(k[lose], {}))},
                    "chosen_valid": won.get("valid"),
                    "rejected_valid": lost.get("valid"),
                },
            )
        )
    c["pairs"] = len(report.pairs)
    return report


def write_pairs(path: Path | str, pairs: Sequence[PreferencePair]) -> str:
    """Replace ``path`` atomically with ``pairs`` (one JSON line each); return its SHA-256."""
    from llmapps.jsonl import atomic_write

    text = "".join(
        json.dumps(p.model_dump(mode="json"), ensure_ascii=False, sort_keys=True) + "\n"
        for p in pairs
    )
    atomic_write(path, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pairs_sha256(path: Path | str) -> str:
    """SHA-256 of a pairs file's bytes (what an adapter trained on it records)."""
    from llmapps.hashing import sha256_file

    return sha256_file(Path(path))


def read_pairs(path: Path | str) -> list[PreferencePair]:
    """The pairs of a pairs file.

    Raises:
        InputError: the file is missing, a folder or empty; or lines that are not JSON objects or
            not pairs (each named with its number); or two pairs with the same ``id``.
    """
    from llmapps.jsonl import read_jsonl

    path = Path(path)
    pairs = read_jsonl(
        path,
        PreferencePair.model_validate,
        what="bad pair",
    )
    if not pairs:
        raise InputError(
            f"{path} holds no preference pairs; build some from ratings or sampled replies first (the pairs command of the training side)"
        )
    seen: set[str] = set()
    for p in pairs:
        if p.id in seen:
            raise InputError(f"{path}: pair id {p.id!r} occurs twice; ids must be unique")
        seen.add(p.id)
    return pairs
