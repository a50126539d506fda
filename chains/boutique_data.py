"""The boutique app's bundled data: catalog, policies, dialogues and their split.

Everything lives in ``data/boutique/`` as small hand-written text files:

- ``catalog.jsonl``: one item per line (``id``, ``name``, ``category``, ``color``, ``price`` in EUR,
  ``stock`` per size, ``material``, ``description``); colour variants are separate items;
- ``policies.yaml``: the shop's policy page, one section per retrievable document;
- ``dialogues.jsonl``: multi-turn dialogues, one per line, in the *annotation format* below;
- ``split.json``: dialogue ids per split (train / validation / test).

Annotation format (one dialogue per JSONL line; ``validate_dialogue`` checks it and
``llmapps finetune annotate FILE`` checks a whole file of new dialogues)::

    {"id": "d01", "turns": [
      {"kind": "fact", "user": "How much is the white linen shirt?",
       "assistant": "The white linen shirt [LB-001] costs €49.",
       "items": ["LB-001"], "facts": ["€49"]},
      {"kind": "follow-up", "user": "And in blue?", ...}]}

``kind`` is one of ``KINDS``; ``items`` are the catalog/policy ids the answer rests on (cited as
``[LB-001]`` / ``[P-RETURNS]``); ``facts`` are short strings a correct answer must contain.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError, InputError

SPLITS = ("train", "validation", "test")
KINDS = ("fact", "follow-up", "policy", "out-of-catalog", "injection")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def data_dir() -> Path:
    """``data/boutique`` of this checkout (``LLMAPPS_BOUTIQUE_DATA`` overrides it)."""
    override = os.environ.get("LLMAPPS_BOUTIQUE_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "data" / "boutique"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from llmapps.jsonl import read_jsonl

    if not path.exists():
        raise ConfigError(f"{path} is missing: the boutique app needs its bundled data folder")
    return read_jsonl(path, lambda row: row, what="malformed row")


@lru_cache(maxsize=4)
def _catalog(folder: str) -> tuple[dict[str, Any], ...]:
    items = _read_jsonl(Path(folder) / "catalog.jsonl")
    problems = []
    for n, item in enumerate(items, 1):
        missing = [
            k for k in ("id", "name", "category", "color", "price", "stock") if k not in item
        ]
        if missing:
            problems.append(f"catalog.jsonl:{n}: missing {', '.join(missing)}")
        elif not isinstance(item["stock"], dict) or not item["stock"]:
            problems.append(f"catalog.jsonl:{n}: stock must map sizes to counts")
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(items)


def catalog() -> list[dict[str, Any]]:
    """Every catalog item (colour variants are items of their own)."""
    return [dict(i) for i in _catalog(str(data_dir()))]


@lru_cache(maxsize=4)
def _policies(folder: str) -> dict[str, Any]:
    import yaml

    path = Path(folder) / "policies.yaml"
    if not path.exists():
        raise ConfigError(f"{path} is missing: the boutique app needs its bundled data folder")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("sections"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'sections' list")
    for s in data["sections"]:
        s["text"] = " ".join(str(s["text"]).split())
    return data


def policies() -> list[dict[str, str]]:
    """The policy sections (``id``, ``title``, ``text``)."""
    return [dict(s) for s in _policies(str(data_dir()))["sections"]]


def known_ids() -> set[str]:
    return {i["id"] for i in catalog()} | {p["id"] for p in policies()}


# ---------------------------------------------------------------- cleaning and validation


def clean_text(text: Any) -> str:
    """Unicode NFC, one space between words, no control characters, straight quotes."""
    s = unicodedata.normalize("NFC", str(text))
    s = (
        s.replace("\u2019", "'")
        .replace("\u2018", "'")
        .replace("\u201c", '"')
        .replace("\u201d", '"')
    )
    s = "".join(ch for ch in s if ch == "\n" or unicodedata.category(ch)[0] != "C")
    return " ".join(s.split())


def validate_dialogue(row: Any, ids: set[str] | None = None) -> list[str]:
    """Every problem of one annotated dialogue (empty list: valid)."""
    if not isinstance(row, dict):
        return [f"expected an object with 'id' and 'turns', got {type(row).__name__}"]
    problems = []
    if not isinstance(row.get("id"), str) or not _ID_RE.match(row["id"]):
        problems.append("'id' must be a short name of letters, digits, '-', '_' or '.'")
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns:
        return [*problems, "'turns' must be a non-empty list"]
    extra = set(row) - {"id", "turns"}
    if extra:
        problems.append(f"unknown keys {sorted(extra)} (expected id, turns)")
    ids = known_ids() if ids is None else ids
    for t_n, turn in enumerate(turns, 1):
        where = f"turn {t_n}"
        if not isinstance(turn, dict):
            problems.append(f"{where}: expected an object")
            continue
        unknown = set(turn) - {"kind", "user", "assistant", "items", "facts"}
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        if turn.get("kind") not in KINDS:
            problems.append(f"{where}: 'kind' must be one of {', '.join(KINDS)}")
        for key in ("user", "assistant"):
            if not isinstance(turn.get(key), str) or not clean_text(turn[key]):
                problems.append(f"{where}: '{key}' must be non-empty text")
        for key in ("items", "facts"):
            if not isinstance(turn.get(key, []), list) or not all(
                isinstance(v, str) for v in turn.get(key, [])
            ):
                problems.append(f"{where}: '{key}' must be a list of strings")
        bad = [i for i in turn.get("items", []) if isinstance(i, str) and i not in ids]
        if bad:
            problems.append(f"{where}: unknown catalog/policy ids {bad}")
        answer = clean_text(turn.get("assistant", "")).lower()
        missing = [
            f for f in turn.get("facts", []) if isinstance(f, str) and f.lower() not in answer
        ]
        if missing:
            problems.append(f"{where}: facts {missing} do not occur in the assistant's answer")
    return problems


def clean_dialogue(row: dict[str, Any]) -> dict[str, Any]:
    """A valid dialogue with its texts cleaned and turns without a question or answer dropped."""
    turns = []
    for t in row["turns"]:
        user, assistant = clean_text(t.get("user", "")), clean_text(t.get("assistant", ""))
        if user and assistant:
            turns.append(
                {
                    "kind": t["kind"],
                    "user": user,
                    "assistant": assistant,
                    "items": list(t.get("items", [])),
                    "facts": list(t.get("facts", [])),
                }
            )
    return {"id": row["id"], "turns": turns}


def read_dialogues(path: Path | str) -> list[dict[str, Any]]:
    """Annotated dialogues from a JSONL file: validated (every problem named with its line),
    cleaned, and de-duplicated by id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a file; give a JSONL file of annotated dialogues")
    ids = known_ids()
    from llmapps.jsonl import parse_jsonl  # the project's one JSONL reader

    parsed, problems = parse_jsonl(path.read_bytes(), str(path))
    rows, seen = [], set()
    for n, row in parsed:
        found = validate_dialogue(row, ids)
        if not found and row["id"] in seen:
            found = [f"duplicate dialogue id {row['id']!r}"]
        problems += [f"{path}:{n}: {p}" for p in found]
        if not found:
            seen.add(row["id"])
            rows.append(clean_dialogue(row))
    if problems:
        from llmapps.errors import format_problems

        raise InputError(format_problems(f"{path}: {len(problems)} problem(s):", problems))
    return rows


@lru_cache(maxsize=4)
def _dialogues(folder: str) -> tuple[dict[str, Any], ...]:
    return tuple(read_dialogues(Path(folder) / "dialogues.jsonl"))


def dialogues(split: str | None = None) -> list[dict[str, Any]]:
    """The bundled dialogues, all or those of ``split``."""
    rows = list(_dialogues(str(data_dir())))
    if split is None:
        return rows
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    wanted = json.loads((data_dir() / "split.json").read_text())[split]
    by_id = {d["id"]: d for d in rows}
    return [by_id[i] for i in wanted]


def turns_with_history(
    split: str | None = None, rows: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per turn (of ``rows``, else the bundled ``split``): its id (``d01-2``), question,
    the gold history before it, and its references."""
    out = []
    for d in rows if rows is not None else dialogues(split):
        history: list[dict[str, str]] = []
        for n, t in enumerate(d["turns"], 1):
            out.append(
                {
                    "id": f"{d['id']}-{n}",
                    "dialogue": d["id"],
                    "turn": n,
                    "question": t["user"],
                    "history": list(history),
                    "kind": t["kind"],
                    "answer": t["assistant"],
                    "items": t["items"],
                    "facts": t["facts"],
                }
            )
            history += [
                {"role": "user", "content": t["user"]},
                {"role": "assistant", "content": t["assistant"]},
            ]
    return out


def samples(split: str = "test") -> list[dict[str, Any]]:
    """Bench inputs: question + gold history, with the reference answer, items, facts and kind."""
    return [
        {
            "id": r["id"],
            "question": r["question"],
            "history": r["history"],
            "reference_answer": r["answer"],
            "reference_items": r["items"],
            "reference_facts": r["facts"],
            "kind": r["kind"],
        }
        for r in turns_with_history(split)
    ]
