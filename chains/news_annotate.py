"""Annotation of news riddles: the format, its checker, two annotators' agreement, and the merge of
annotated rows into the splits (never into, or out of, the test split).

The format (JSONL, one row per article and annotator)::

    {"id": "a200", "annotator": "ann1",
     "title": "...", "text": "...",                    # a new article (omit both for a bundled id)
     "date": "2026-05-01", "source": "...", "beat": "science",   # new articles only
     "summary": "...", "riddle": "...", "answer": "..."}

The guide (``GUIDE``, shown by ``llmapps annotate guide``) says what a good row is; ``check_rows``
enforces the parts a program can: every field present, a one-sentence summary of 8-45 words, a
riddle of 1-4 lines and 6-60 words that neither names its answer nor repeats the summary nor copies
the article, an answer of 1-6 words without a final full stop. Problems are all listed at once,
each with its line number.

``llmapps annotate check FILE`` checks, ``llmapps annotate agree FILE`` reports agreement between
annotators on the articles they share, ``llmapps annotate format FILE --out DIR`` writes a data
folder (articles, riddles, splits) usable as ``LLMAPPS_DATA_DIR``: new articles join ``train``
(or ``--split validation``); the test split's ids are copied unchanged, and a row for a test
article is refused.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chains import news_data
from chains.news_riddle_metrics import copy_overlap
from llmapps import jsonl
from llmapps.errors import InputError, format_problems
from llmapps.evaluate.reference import exact_match, rouge, token_f1
from llmapps.evaluate.stats import bootstrap_ci

GUIDE = """\
Writing a news riddle (one row per article, in your own words):

1. summary: ONE sentence (8-45 words) a reader could check against the article: who did what,
   where, and the key figure. No opinion, no quote copied from the article.
2. riddle: 1-4 short lines (6-60 words) that point at the answer without naming it. Use an image
   or a play on words; the key fact of the story should make it solvable. Do not repeat the
   summary, do not copy phrases of the article (at most a name or a figure), and never write any
   content word of the answer.
3. answer: 1-6 words, a noun phrase as a quiz answer ("the mayoral recount", "a new comet"),
   lower case unless a name, no full stop.
4. New articles need title, text (120-400 words), date (YYYY-MM-DD), source and beat (politics,
   science, sport, business, culture, weather). For a bundled article give its id only.
5. Never annotate an article of the test split: its references are fixed so results stay
   comparable. The checker refuses such rows.
6. Two annotators on the same articles: write independently; `llmapps annotate agree` compares
   answers (exact and token F1) and summaries and riddles (ROUGE-L).
"""

FIELDS = ("summary", "riddle", "answer")
_WORD = re.compile(r"[a-z0-9]+")
COPY_LIMIT = 0.5  # share of the riddle's word trigrams found in the article


class Annotation(BaseModel):
    """One annotator's reference for one article (new or bundled)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    annotator: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    riddle: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    title: str | None = None
    text: str | None = None
    date: str | None = None
    source: str | None = None
    beat: str | None = None


def is_news_annotation_file(path: Path) -> bool:
    """True when the first JSON row of ``path`` looks like a news-riddle annotation."""
    try:
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    return isinstance(row, dict) and "riddle" in row and "turns" not in row
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def _content(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) > 3]


def row_problems(row: Annotation, article_text: str) -> list[str]:
    """What is wrong with one annotation, as the guide states it (empty: the row is good)."""
    problems = []
    summary, riddle, answer = row.summary.strip(), row.riddle.strip(), row.answer.strip()
    n_sum = len(summary.split())
    if "\n" in summary or len(re.findall(r"[.!?](?:\s|$)", summary)) > 1:
        problems.append("summary: write one sentence")
    if not 8 <= n_sum <= 45:
        problems.append(f"summary: {n_sum} words, expected 8-45")
    lines = [ln for ln in riddle.splitlines() if ln.strip()]
    n_rid = len(riddle.split())
    if not 1 <= len(lines) <= 4:
        problems.append(f"riddle: {len(lines)} lines, expected 1-4")
    if not 6 <= n_rid <= 60:
        problems.append(f"riddle: {n_rid} words, expected 6-60")
    named = sorted(set(_content(answer)) & set(_WORD.findall(riddle.lower())))
    if named:
        problems.append(f"riddle: names its answer ({', '.join(named)})")
    if _WORD.findall(riddle.lower()) == _WORD.findall(summary.lower()):
        problems.append("riddle: repeats the summary")
    overlap = copy_overlap(riddle, article_text) if article_text else None
    if overlap is not None and overlap >= COPY_LIMIT:
        problems.append(f"riddle: copies the article ({overlap:.0%} of its word trigrams)")
    n_ans = len(answer.split())
    if not 1 <= n_ans <= 6:
        problems.append(f"answer: {n_ans} words, expected 1-6")
    if answer.endswith("."):
        problems.append("answer: no full stop at the end")
    return problems


def read_annotations(path: Path) -> list[Annotation]:
    """Rows of ``path`` validated and checked; an ``InputError`` listing every problem."""
    problems: list[str] = []
    rows: list[Annotation] = []
    raw_rows = jsonl.read_jsonl(Path(path), lambda r: r, what="malformed row")
    if not raw_rows:
        raise InputError(f"{path} holds no annotations; see `llmapps annotate guide`")
    articles, _, splits = news_data.load_bundled()
    test_ids = set(splits["test"])
    seen: set[tuple[str, str]] = set()
    for n, raw in enumerate(raw_rows, 1):
        try:
            row = Annotation.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(row)"
            problems.append(f"line {n}: {where}: {first['msg']}")
            continue
        where = f"line {n} ({row.id}, {row.annotator})"
        if row.id in test_ids:
            problems.append(f"{where}: {row.id} is a test article; its references stay fixed")
        if (row.id, row.annotator) in seen:
            problems.append(f"{where}: a second row by the same annotator for this article")
        seen.add((row.id, row.annotator))
        new = row.id not in articles
        if new:
            try:
                news_data.BundledArticle.model_validate(
                    {k: getattr(row, k) for k in ("id", "title", "text", "date", "source", "beat")}
                )
            except ValidationError as err:
                problems += [
                    f"{where}: new article: {'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                    for e in err.errors()
                ]
        elif row.title is not None or row.text is not None:
            problems.append(f"{where}: {row.id} is a bundled article; give its id only")
        text = row.text or (articles[row.id].text if row.id in articles else "")
        problems += [f"{where}: {p}" for p in row_problems(row, text)]
        rows.append(row)
    if problems:
        raise InputError(format_problems(f"{path}: {len(problems)} problem(s):", problems))
    return rows


def agreement(rows: Sequence[Annotation]) -> dict[str, Any]:
    """Agreement of annotator pairs on the articles both annotated, with bootstrap intervals:
    answer exact match and token F1, summary and riddle ROUGE-L F1."""
    by_id: dict[str, list[Annotation]] = defaultdict(list)
    for r in rows:
        by_id[r.id].append(r)
    scores: dict[str, list[float]] = defaultdict(list)
    pairs = 0
    for group in by_id.values():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                pairs += 1
                scores["answer_exact"].append(exact_match(a.answer, b.answer))
                scores["answer_f1"].append(token_f1(a.answer, b.answer))
                scores["summary_rougeL"].append(rouge(a.summary, b.summary)["rougeL"])
                scores["riddle_rougeL"].append(rouge(a.riddle, b.riddle)["rougeL"])
    return {
        "articles": len(by_id),
        "shared": sum(len(g) > 1 for g in by_id.values()),
        "annotators": sorted({r.annotator for r in rows}),
        "pairs": pairs,
        **{k: bootstrap_ci(v).as_dict() for k, v in scores.items()},
    }


def merge(rows: Sequence[Annotation], split: str = "train") -> dict[str, Any]:
    """Bundled data plus the annotations: (articles, riddles, splits) as rows to write.

    One reference per article (the first annotator's, in file order). New articles join
    ``split``; a bundled train/validation article gets its reference replaced. The test split's
    ids and references are copied unchanged.
    """
    if split not in ("train", "validation"):
        raise InputError(f"--split {split}: annotated rows join train or validation, never test")
    articles, riddles, splits = news_data.load_bundled()
    arts = {k: v.model_dump() for k, v in articles.items()}
    refs = {k: v.model_dump() for k, v in riddles.items()}
    new_splits = {k: list(v) for k, v in splits.items()}
    taken: set[str] = set()
    for r in rows:
        if r.id in taken:
            continue
        taken.add(r.id)
        if r.id in set(splits["test"]):
            raise InputError(f"{r.id} is a test article; its references stay fixed")
        if r.id not in arts:
            arts[r.id] = {k: getattr(r, k) for k in ("id", "title", "date", "source", "beat")}
            arts[r.id]["text"] = r.text
            new_splits[split].append(r.id)
        elif r.id not in refs or not any(r.id in v for v in splits.values()):
            new_splits[split].append(r.id)
        refs[r.id] = {"id": r.id, **{k: getattr(r, k) for k in FIELDS}}
    return {"articles": list(arts.values()), "riddles": list(refs.values()), "splits": new_splits}


def write_data_dir(out: Path, merged: dict[str, Any]) -> Path:
    """Write ``merged`` as a data folder (``articles.jsonl``, ``riddles.jsonl``, ``splits.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    jsonl.write_jsonl(out / "articles.jsonl", merged["articles"])
    jsonl.write_jsonl(out / "riddles.jsonl", merged["riddles"])
    jsonl.atomic_write(out / "splits.json", json.dumps(merged["splits"], indent=1) + "\n")
    return out


def cmd_annotate(args: Any) -> int:
    """``llmapps annotate check|agree|format|guide`` on a news-riddle annotation file."""
    from llmapps.files import writing

    if args.action == "guide":
        print(GUIDE, end="")
        return 0
    rows = read_annotations(Path(args.file))
    people = sorted({r.annotator for r in rows})
    print(f"{args.file}: {len(rows)} news-riddle annotations by {len(people)} annotator(s) valid")
    if args.action == "agree":
        agree = agreement(rows)
        if not agree["pairs"]:
            raise InputError(
                f"{args.file}: no article was annotated by two annotators; agreement needs overlap"
            )
        for k in ("answer_exact", "answer_f1", "summary_rougeL", "riddle_rougeL"):
            a = agree[k]
            print(f"  {k}: {a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}] (n={a['n']})")
    if args.action == "format":
        if not args.out:
            raise InputError("annotate format FILE needs --out DIR (a data folder to write)")
        merged = merge(rows, args.split)
        with writing(args.out, [args.file], kind="folder") as out:
            write_data_dir(out, merged)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in merged["splits"].items())
        print(f"data folder -> {out} ({sizes}); use it with LLMAPPS_DATA_DIR={out}")
    return 0
