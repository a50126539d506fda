"""Human evaluation: blinded side-by-side sheets out, filled ratings in, win rates and agreement.

``export_sheet`` pairs the outputs of two or more strategies on the same samples, shuffles which
one is shown as A or B (seeded), and writes a CSV to fill in (``preference``: A, B or tie;
``rater``: a name) plus an HTML view of it and a ``key.json`` that unblinds the sheet.
``import_ratings`` reads one or more filled CSVs back and reports each strategy's win rate (a tie
counts half) and, where several raters rated the same item, their agreement (raw and Cohen's kappa
averaged over rater pairs).

``RatingStore`` is the same sheet rated in the web app (``llmapps ui``): each rating is appended to
``ratings.jsonl`` beside the sheet and fsynced, so a closed tab or a killed server loses nothing;
``import_ratings`` reads that file like a filled CSV, so the page and ``llmapps human-eval import``
report the same numbers from one implementation (``summarize_ratings``).
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError, InputError
from llmapps.files import read_text
from llmapps.jsonl import atomic_write

log = logging.getLogger(__name__)

CHOICES = ("A", "B", "tie")
RATINGS_FILE = "ratings.jsonl"
MAX_COMMENT_CHARS = 2000  # a rater's note on one pair; longer is refused, not stored
MAX_RATER_CHARS = 100
SHEET_FILES = ("sheet.csv", "sheet.html", "key.json")  # what export_sheet writes in its folder


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
        fields: output fields shown to raters (e.g. summary, answer).
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
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=["item", "context", "A", "B", "preference", "rater"])
    writer.writeheader()
    writer.writerows(rows)
    # each file replaced whole (a temp file and a rename); the key last, as the sheet's seal
    atomic_write(paths["csv"], buf.getvalue())
    cells = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td></td></tr>".format(
            html.escape(r["item"]),
            *(html.escape(r[c]).replace("\n", "<br>") for c in ("context", "A", "B")),
        )
        for r in rows
    )
    atomic_write(
        paths["html"],
        "<!doctype html><meta charset='utf-8'><title>side-by-side</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;border:1px solid #ccc;padding:6px}"
        "table{border-collapse:collapse}</style>"
        "<p>For each item, which output is better: A, B or tie? Enter it in the <code>preference</code> "
        "column of sheet.csv, with your name in <code>rater</code>.</p>"
        f"<table><tr><th>item</th><th>article</th><th>A</th><th>B</th><th>preference</th></tr>{cells}</table>\n",
    )
    atomic_write(paths["key"], json.dumps({"strategies": names, "items": key}, indent=2) + "\n")
    return paths


def read_key(path: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The items (``{item: {"id", "A", "B"}}``) and strategies of a sheet's ``key.json``.

    Raises:
        InputError: one line naming ``path`` and what is wrong with it (missing, a folder, not
            UTF-8, not JSON, not an object with ``items``, an item without ``id``, ``A``, ``B``).
    """
    path = Path(path)
    hint = "use the key.json written with the sheet (`llmapps human-eval export`)"
    data: Any = None
    try:
        data = json.loads(read_text(path, what="the key"))
    except (json.JSONDecodeError, RecursionError) as err:
        why = getattr(err, "msg", "nested too deeply")
        raise InputError(f"the key {path} is not valid JSON ({why}); {hint}") from err
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, dict) or not items:
        raise InputError(f"the key {path} is not a sheet's key (no 'items' object); {hint}")
    for iid, item in items.items():
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("id", "A", "B")
        ):
            raise InputError(
                f"the key {path}: item {iid!r} needs string 'id', 'A' and 'B' fields; {hint}"
            )
    strategies = data.get("strategies")
    names = [str(n) for n in strategies] if isinstance(strategies, list) else []
    return items, names


def read_sheet(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of a sheet CSV with their line numbers (the header is line 1).

    Raises:
        InputError: one line naming ``path``: missing, a folder, not UTF-8, or not a CSV this
            reader can read (a field over the csv module's limit, a NUL byte ...).
    """
    path = Path(path)
    text = read_text(path, what="the sheet")
    rows: list[tuple[int, dict[str, str]]] = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            rows.append((reader.line_num, {k: v or "" for k, v in row.items() if k}))
    except csv.Error as err:
        raise InputError(
            f"the sheet {path}:{reader.line_num} is not a readable CSV ({err}); re-export it "
            "with `llmapps human-eval export`"
        ) from err
    return rows


def _normalize_preference(pref: str) -> str | None:
    return {"a": "A", "b": "B", "tie": "tie", "=": "tie"}.get(pref.strip().lower())


def _read_jsonl_ratings(path: Path, problems: list[str]) -> list[dict[str, str]]:
    """A ``ratings.jsonl`` store: the latest rating of each (rater, item) counts; a torn last
    line (a kill mid-write) is ignored."""
    from llmapps.jsonl import scan_jsonl  # the project's one JSONL reader

    latest: dict[tuple[str, str], dict[str, str]] = {}
    for line in scan_jsonl(Path(path).read_bytes(), str(path)):
        n, row = line.lineno, line.row
        if row is None:
            if not line.complete:  # the last line, cut by a kill mid-write
                log.warning("%s: ignoring a half-written last line", path)
                break
            problems.append(line.problem or f"{path}:{n}: not valid JSON")
            continue
        norm = (
            _normalize_preference(str(row.get("preference") or ""))
            if isinstance(row, dict)
            else None
        )
        if norm is None or not row.get("item") or not row.get("rater"):
            problems.append(f"{path}:{n}: expected item, rater and preference A, B or tie")
            continue
        rating = {"item": str(row["item"]), "preference": norm, "rater": str(row["rater"])}
        latest.pop((rating["rater"], rating["item"]), None)  # a re-rating moves to the end
        latest[(rating["rater"], rating["item"])] = rating
    return list(latest.values())


def _read_ratings(paths: Sequence[Path]) -> list[dict[str, str]]:
    ratings: list[dict[str, str]] = []
    problems: list[str] = []
    for path in paths:
        if not Path(path).is_file():
            kind = "is a folder" if Path(path).is_dir() else "does not exist"
            raise InputError(f"the ratings {path} {kind}; give a filled sheet.csv or ratings.jsonl")
        if Path(path).suffix == ".jsonl":
            ratings.extend(_read_jsonl_ratings(Path(path), problems))
            continue
        for n, row in read_sheet(Path(path)):
            pref = (row.get("preference") or "").strip()
            if not pref:
                continue
            norm = _normalize_preference(pref)
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

    Args:
        sheets: filled ``sheet.csv`` files and/or ``ratings.jsonl`` stores of the web app.
        key_path: the ``key.json`` written with the sheet.

    Returns:
        ``{"ratings", "win_rate": {strategy: rate}, "pairs": [...], "agreement": {...}}``.
    """
    key, _names = read_key(Path(key_path))
    return summarize_ratings(_read_ratings(sheets), key, key_path)


def summarize_ratings(
    ratings: Sequence[Mapping[str, str]],
    key: Mapping[str, Mapping[str, str]],
    key_path: Any = "the key",
) -> dict[str, Any]:
    """The statistics of ``import_ratings`` from ratings (item, preference, rater) and a key's items."""
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


def load_run_outputs(
    run: Path, strategies: Sequence[str] | None = None
) -> tuple[dict[str, dict[str, dict[str, Any]]], list[dict[str, Any]]]:
    """A bench run's outputs (strategy -> sample id -> row) and its ``references.jsonl`` samples."""
    from llmapps.evaluate.files import read_jsonl
    from llmapps.runner import read_done

    run = Path(run)
    if not (run / "references.jsonl").exists():
        raise ConfigError(
            f"{run} is not a bench run (no references.jsonl): point at the --out folder of "
            "`llmapps bench`"
        )
    refs = read_jsonl(run / "references.jsonl")
    files = sorted((run / "samples").glob("*.jsonl"))
    names = list(strategies) if strategies else [f.stem for f in files]
    outputs = {}
    for n in names:
        path = run / "samples" / f"{n}.jsonl"
        if not path.exists():
            raise ConfigError(
                f"{run} has no results of {n!r}; it has {', '.join(f.stem for f in files) or 'none'}"
            )
        outputs[n] = read_done(path)
    return outputs, refs


class RatingStore:
    """Blinded A/B ratings of one exported sheet, appended durably to ``ratings.jsonl`` beside it.

    Every rating is one JSON line, flushed and fsynced before ``add`` returns; a re-rating of the
    same item by the same rater replaces the earlier one in the statistics. Safe to share between
    the threads of a web server.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        key_path = self.folder / "key.json"
        sheet_path = self.folder / "sheet.csv"
        if not key_path.exists() or not sheet_path.exists():
            raise ConfigError(
                f"{self.folder} holds no exported sheet (key.json and sheet.csv): run "
                "`llmapps human-eval export RUN --out DIR` or open a bench run with `llmapps ui --run RUN`"
            )
        self.key_path = key_path
        self.key, self.strategies = read_key(key_path)
        self.items = [
            {k: row.get(k) or "" for k in ("item", "context", "A", "B")}
            for _n, row in read_sheet(sheet_path)
        ]
        self._by_id = {it["item"]: it for it in self.items}
        self.path = self.folder / RATINGS_FILE
        self.skipped: list[str] = []  # the bad lines of the ratings file, as last read
        self._lock = threading.Lock()
        self._repair_tail()

    @classmethod
    def from_run(
        cls,
        run: Path,
        folder: Path | None = None,
        *,
        strategies: Sequence[str] | None = None,
        fields: Sequence[str],
        seed: int = 0,
        limit: int | None = None,
    ) -> RatingStore:
        """The store for a bench run: exports the blinded sheet into ``folder`` (default
        ``RUN/human-eval``) the first time, and reopens it (with its ratings) after that."""
        folder = Path(folder) if folder else Path(run) / "human-eval"
        if not (folder / "key.json").exists():
            outputs, refs = load_run_outputs(Path(run), strategies)
            export_sheet(outputs, refs[:limit] if limit else refs, folder, fields=fields, seed=seed)
        return cls(folder)

    def _repair_tail(self) -> None:
        """Cut a half-written last line (a kill mid-write) so the next append starts a line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a half-written last rating", self.path)
            with self.path.open("r+b") as f:
                f.truncate(keep)

    def add(self, item: str, preference: str, rater: str, comment: str = "") -> dict[str, Any]:
        """Append one rating; ``InputError`` for an item not in the sheet, a bad choice or no rater."""
        problems = []
        if item not in self._by_id:
            problems.append(f"item {item!r} is not in this run's sheet ({self.folder})")
        norm = _normalize_preference(preference or "")
        if norm is None:
            problems.append(f"preference {preference!r} is not A, B or tie")
        rater = " ".join((rater or "").split())
        if not rater:
            problems.append("no rater name: type your name first")
        elif len(rater) > MAX_RATER_CHARS:
            problems.append(f"the rater name is over {MAX_RATER_CHARS} characters: shorten it")
        if len(comment or "") > MAX_COMMENT_CHARS:
            problems.append(
                f"the comment is {len(comment):,} characters, over the {MAX_COMMENT_CHARS:,} "
                "a comment may hold: shorten it"
            )
        if problems:
            raise InputError("; ".join(problems))
        row = {
            "item": item,
            "preference": norm,
            "rater": rater,
            "comment": (comment or "").strip(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return row

    def withdraw(self, item: str, rater: str) -> bool:
        """Take back ``rater``'s latest rating of ``item`` (the web app's undo): the file is
        rewritten whole without that line (a temp file and a rename). False if there was none."""
        rater = " ".join((rater or "").split())
        with self._lock:
            if not self.path.is_file():
                return False
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            for n in range(len(lines) - 1, -1, -1):
                try:
                    row = json.loads(lines[n])
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("item") == item and row.get("rater") == rater:
                    atomic_write(self.path, "".join(lines[:n] + lines[n + 1 :]))
                    return True
        return False

    def ratings(self) -> list[dict[str, str]]:
        """Every counted rating (the latest per rater and item). A bad line (not JSON, not a
        rating) is skipped and reported in ``skipped`` and the log, so one damaged line does not
        turn every rater away; ``InputError`` only when the file is not a file."""
        if self.path.is_dir():
            raise InputError(f"the ratings {self.path} is a folder; move it aside to rate")
        if not self.path.exists():
            return []
        problems: list[str] = []
        ratings = _read_jsonl_ratings(self.path, problems)  # the project's tolerant JSONL scan
        if problems and problems != self.skipped:
            log.warning("%s: skipping %d bad line(s): %s", self.path, len(problems), problems[0])
        self.skipped = problems
        return ratings

    def rated_by(self, rater: str) -> set[str]:
        rater = " ".join((rater or "").split())
        return {r["item"] for r in self.ratings() if r["rater"] == rater}

    def next_item(self, rater: str) -> dict[str, str] | None:
        """The first item of the sheet ``rater`` has not rated yet (None when all are done)."""
        done = self.rated_by(rater)
        return next((it for it in self.items if it["item"] not in done), None)

    def summary(self) -> dict[str, Any] | None:
        """``import_ratings``'s statistics of the ratings so far (None before the first)."""
        ratings = self.ratings()
        return summarize_ratings(ratings, self.key, self.key_path) if ratings else None


def plot_win_rates(report: Mapping[str, Any]) -> Any:
    """A bar chart of each strategy's win rate (a matplotlib ``Figure``, no pyplot state)."""
    from matplotlib.figure import Figure

    names = sorted(report["win_rate"], key=lambda n: -report["win_rate"][n])
    fig = Figure(figsize=(5, 2.6), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(names, [report["win_rate"][n] for n in names], color="#3b6ea5")
    for bar, n in zip(bars, names, strict=True):
        ax.annotate(
            f"{report['win_rate'][n]:.2f} (n={report['comparisons'][n]})",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(0.5, color="#999", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("win rate (tie = 0.5)")
    kappa = report["agreement"]["cohen_kappa"]
    ax.set_title(
        f"{report['ratings']} ratings, {len(report['raters'])} rater(s), "
        f"kappa {kappa if kappa is not None else 'n/a'}",
        fontsize=9,
    )
    return fig
