"""The bundled news data: articles, hand-written riddles and a fixed train/validation/test split.

Files under ``data/`` (or ``$LLMAPPS_DATA_DIR``):

- ``articles.jsonl``: ``id, title, date, source, beat, text``
- ``riddles.jsonl``: ``id, summary, riddle, answer`` for most articles
- ``splits.json``: ``{"train": [ids], "validation": [ids], "test": [ids]}`` over riddled articles

Every row is validated; a bad one is reported with its file and line number.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmapps import jsonl
from llmapps.errors import InputError
from llmapps.files import read_text

SPLITS = ("train", "validation", "test")


def data_dir() -> Path:
    """``$LLMAPPS_DATA_DIR`` or the project's ``data/`` folder."""
    env = os.environ.get("LLMAPPS_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


class Article(BaseModel):
    """A news article as bundled or read from a user's file."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1)
    title: str = Field(min_length=1)
    text: str
    date: str = ""
    source: str = ""
    beat: str = ""
    url: str = ""

    @field_validator("text")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return v


class BundledArticle(Article):
    model_config = ConfigDict(extra="forbid")
    beat: Literal["politics", "science", "sport", "business", "culture", "weather"]
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    source: str = Field(min_length=1)

    @field_validator("text")
    @classmethod
    def _length(cls, v: str) -> str:
        n = len(v.split())
        if not 120 <= n <= 400:
            raise ValueError(f"text has {n} words, expected 120-400")
        return v


class Riddle(BaseModel):
    """A hand-written reference: summary, riddle and answer for one article."""

    model_config = ConfigDict(extra="forbid")
    id: str
    summary: str = Field(min_length=1)
    riddle: str = Field(min_length=1)
    answer: str = Field(min_length=1)


def read_jsonl(path: Path, model: type[BaseModel]) -> list[Any]:
    """Read and validate a JSONL file; every bad line is reported with its number."""
    return jsonl.read_jsonl(path, model.model_validate)


@lru_cache(maxsize=4)
def _load(root: str) -> tuple[dict[str, BundledArticle], dict[str, Riddle], dict[str, list[str]]]:
    base = Path(root)
    articles = {a.id: a for a in read_jsonl(base / "articles.jsonl", BundledArticle)}
    riddles = {r.id: r for r in read_jsonl(base / "riddles.jsonl", Riddle)}
    unknown = sorted(set(riddles) - set(articles))
    if unknown:
        raise InputError(
            f"{base / 'riddles.jsonl'}: riddles for unknown article ids {unknown[:10]}"
        )
    splits = json.loads((base / "splits.json").read_text())
    for split in SPLITS:
        missing = [i for i in splits.get(split, []) if i not in riddles]
        if missing:
            raise InputError(
                f"{base / 'splits.json'}: {split} lists ids without a riddle: {missing[:10]}"
            )
    return articles, riddles, splits


def load_bundled() -> tuple[dict[str, BundledArticle], dict[str, Riddle], dict[str, list[str]]]:
    return _load(str(data_dir()))


def samples(split: str = "test") -> list[dict[str, Any]]:
    """Bundled articles of ``split`` with their references (``reference_*`` keys)."""
    if split not in (*SPLITS, "all"):
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    articles, riddles, splits = load_bundled()
    ids = [i for s in SPLITS for i in splits[s]] if split == "all" else splits[split]
    out = []
    for i in ids:
        a, r = articles[i], riddles[i]
        out.append(
            {
                **a.model_dump(),
                "reference_summary": r.summary,
                "reference_riddle": r.riddle,
                "reference_answer": r.answer,
            }
        )
    return out


def examples(split: str = "train") -> list[dict[str, Any]]:
    """Worked examples (article + summary, riddle, answer) from a split, for prompts and training."""
    articles, riddles, splits = load_bundled()
    return [{**articles[i].model_dump(), **riddles[i].model_dump()} for i in splits[split]]


def corpus() -> list[dict[str, str]]:
    """Every bundled article's title and text (what the tiny models are pretrained on)."""
    articles, _, _ = load_bundled()
    return [{"title": a.title, "text": a.text} for a in articles.values()]


def _content_id(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()[:12]


def read_articles(path: Path) -> list[dict[str, Any]]:
    """Articles from a JSONL file, a text file, or a directory of text/JSONL files.

    A text file's first non-empty line is its title; the rest is its text. An id is derived from
    the content when a row has none, so reruns recognise the same article.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"input {path} does not exist; pass a .jsonl file, a .txt file or a folder of them"
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in {".jsonl", ".txt", ".md"})
        if not files:
            raise InputError(f"{path} holds no .jsonl, .txt or .md files")
        return [row for f in files for row in read_articles(f)]
    if path.suffix == ".jsonl":

        def article(raw: dict[str, Any]) -> dict[str, Any]:
            if "id" not in raw:
                raw = {
                    **raw,
                    "id": _content_id(str(raw.get("title", "")), str(raw.get("text", ""))),
                }
            return Article.model_validate(raw).model_dump()

        return jsonl.read_jsonl(path, article)
    lines = [ln for ln in read_text(path).splitlines()]  # not UTF-8: one InputError
    nonempty = [ln for ln in lines if ln.strip()]
    if len(nonempty) < 2:
        raise InputError(f"{path}: a text article needs a title line and at least one line of text")
    title = nonempty[0].strip().lstrip("# ")
    text = "\n".join(lines[lines.index(nonempty[0]) + 1 :]).strip()
    return [Article(id=_content_id(title, text), title=title, text=text).model_dump()]
