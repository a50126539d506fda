"""Human evaluation: blinded side-by-side sheets out, filled ratings in, win rates and agreement.

``export_sheet`` pairs the outputs of two or more strategies on the same samples, shuffles which
one is shown as A or B (seeded), and writes a CSV to fill in (``preference``: A, B or tie;
``rater``: a name) plus an HTML view of it and a ``key.json`` that unblinds the sheet.
``import_ratings`` reads one or more filled CSVs back and reports each strategy's win rate (a tie
counts half) and, where several raters rated the same item, their agreement (raw and Cohen's kappa
averaged over rater pairs).
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmapps.errors import InputError

CHOICES = ("A", "B", "tie")


def _show(row: Mapping[str, Any] | None, fields: Sequence[str]) -> str:
    if row is None:
        return "(no output)"
    if row.get("error"):
        return f"(failed: {row['error']})"
    return "\n".join(f"{f}: {row.get(f) or ''}" for f in fields)


def export_sheet(
    outputs: Mapping[str, Mapping[str, Mapping[str, Any]]],
    samples: Sequence[Mapping[str, Any]],
    out: Path,
    *,
    fields: Sequence[str],
    context_fields: Sequence[str] = ("title", "text"),
    seed: int = 0,
    context_chars: int = 600,
) -> dict[str, Path]:
    """Write ``out/sheet.csv``, ``out/sheet.html`` and ``out/key.json``.

    Args:
        outputs: strategy -> sample id -> output row (two strategies or more; every pair is asked).
        samples: the inputs, each with an ``id``.
        out: folder to write into.
        fields: output fields shown to raters (e.g. riddle, answer).
        context_fields: input fields shown as context (shortened to ``context_chars``).
        seed: seeds the A/B shuffle and the item order.
    """
    names = sorted(outputs)
    if len(names) < 2:
        raise InputError(
            f"a side-by-side sheet needs two strategies or more, got {names or 'none'}"
        )
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    key: dict[str, dict[str, str]] = {}
    for sample in samples:
        sid = str(sample["id"])
        for left, right in itertools.combinations(names, 2):
            if sid not in outputs[left] and sid not in outputs[right]:
                continue
            a, b = (left, right) if rng.random() < 0.5 else (right, left)
            items.append({"sid": sid, "a": a, "b": b, "sample": sample})
    rng.shuffle(items)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, item in enumerate(items, start=1):
        iid = f"q{n:04d}"
        key[iid] = {"id": item["sid"], "A": item["a"], "B": item["b"]}
        context = "\n".join(str(item["sample"].get(f) or "") for f in context_fields)
        if len(context) > context_chars:
            context = context[:context_chars].rsplit(" ", 1)[0] + " …"
        rows.append(
            {
                "item": iid,
                "context": context,
                "A": _show(outputs[item["a"]].get(item["sid"]), fields),
                "B": _show(outputs[item["b"]].get(item["sid"]), fields),
                "preference": "",
                "rater": "",
            }
        )
    paths = {"csv": out / "sheet.csv", "html": out / "sheet.html", "key": out / "key.json"}
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["item", "context", "A", "B", "preference", "rater"])
        writer.writeheader()
        writer.writerows(rows)
    paths["key"].write_text(
        json.dumps({"strategies": names, "items": key}, indent=2) + "\n", encoding="utf-8"
    )
    cells = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td></td></tr>".format(
            html.escape(r["item"]),
            *(html.escape(r[c]).replace("\n", "<br>") for c in ("context", "A", "B")),
        )
        for r in rows
    )
    paths["html"].write_text(
        "<!doctype html><meta charset='utf-8'><title>side-by-side</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;border:1px solid #ccc;padding:6px}"
        "table{border-collapse:collapse}</style>"
        "<p>For each item, which output is better: A, B or tie? Enter it in the <code>preference</code> "
        "column of sheet.csv, with your name in <code>rater</code>.</p>"
        f"<table><tr><th>item</th><th>article</th><th>A</th><th>B</th><th>preference</th></tr>{cells}</table>\n",
        encoding="utf-8",
    )
    return paths


def _read_ratings(paths: Sequence[Path]) -> list[dict[str, str]]:
    ratings, problems = [], []
    for path in paths:
        with Path(path).open(newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                pref = (row.get("preference") or "").strip()
                if not pref:
                    continue
                norm = {"a": "A", "b": "B", "tie": "tie", "=": "tie"}.get(pref.lower())
                if norm is None:
                    problems.append(f"{path}:{n}: preference {pref!r} is not A, B or tie")
                    continue
                rater = (row.get("rater") or "").strip() or Path(path).stem
                ratings.append(
                    {"item": (row.get("item") or "").strip(), "preference": norm, "rater": rater}
                )
    if problems:
        from llmapps.errors import format_problems

        raise InputError(format_problems(f"{len(problems)} bad rating(s):", problems[:20]))
    return ratings


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (None when undefined)."""
    if len(a) != len(b) or not a:
        return None
    labels = sorted(set(a) | set(b))
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((a.count(lab) / n) * (b.count(lab) / n) for lab in labels)
    if expected >= 1.0:
        return None
    return round((observed - expected) / (1 - expected), 4)


def import_ratings(sheets: Sequence[Path], key_path: Path) -> dict[str, Any]:
    """Win rates per strategy and per pair, and inter-rater agreement, from filled sheets.

    Returns:
        ``{"ratings", "win_rate": {strategy: rate}, "pairs": [...], "agreement": {...}}``.
    """
    key = json.loads(Path(key_path).read_text())["items"]
    ratings = _read_ratings(sheets)
    unknown = sorted({r["item"] for r in ratings if r["item"] not in key})
    if unknown:
        raise InputError(
            f"items {unknown[:10]} are not in {key_path}: use the key written with the sheet"
        )
    if not ratings:
        raise InputError("no filled ratings: put A, B or tie in the preference column")
    wins: dict[str, float] = {}
    games: dict[str, int] = {}
    pairs: dict[tuple[str, str], list[float]] = {}
    for r in ratings:
        k = key[r["item"]]
        a, b = k["A"], k["B"]
        score_a = {"A": 1.0, "B": 0.0, "tie": 0.5}[r["preference"]]
        for name, s in ((a, score_a), (b, 1.0 - score_a)):
            wins[name] = wins.get(name, 0.0) + s
            games[name] = games.get(name, 0) + 1
        first, second = sorted((a, b))
        pairs.setdefault((first, second), []).append(score_a if a == first else 1.0 - score_a)
    by_rater: dict[str, dict[str, str]] = {}
    for r in ratings:
        k = key[r["item"]]
        # unblind to a label that means the same whichever side a strategy was shown on
        first = sorted((k["A"], k["B"]))[0]
        label = (
            "tie"
            if r["preference"] == "tie"
            else ("first" if k[r["preference"]] == first else "second")
        )
        by_rater.setdefault(r["rater"], {})[r["item"]] = label
    agree, kappas, shared_items = [], [], 0
    for x, y in itertools.combinations(sorted(by_rater), 2):
        shared = sorted(set(by_rater[x]) & set(by_rater[y]))
        if not shared:
            continue
        shared_items += len(shared)
        la = [by_rater[x][i] for i in shared]
        lb = [by_rater[y][i] for i in shared]
        agree.append(sum(p == q for p, q in zip(la, lb, strict=True)) / len(shared))
        kap = cohen_kappa(la, lb)
        if kap is not None:
            kappas.append(kap)
    return {
        "ratings": len(ratings),
        "raters": sorted(by_rater),
        "win_rate": {n: round(wins[n] / games[n], 4) for n in sorted(wins)},
        "comparisons": games,
        "pairs": [
            {
                "first": p[0],
                "second": p[1],
                "first_win_rate": round(sum(v) / len(v), 4),
                "n": len(v),
            }
            for p, v in sorted(pairs.items())
        ],
        "agreement": {
            "rater_pairs": len(agree),
            "shared_ratings": shared_items,
            "percent": round(sum(agree) / len(agree), 4) if agree else None,
            "cohen_kappa": round(sum(kappas) / len(kappas), 4) if kappas else None,
        },
    }
