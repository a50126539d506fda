"""Augmentation: new training rows from existing ones, each tagged with the transform that made it.

Generic over an app: ``AugmentFields`` says which fields a row carries (every one is rewritten by
an entity swap), which field is the body whose sentences may be reordered or dropped, and which
fields are the references whose facts must survive. Transforms:

- ``entity-swap``: the row's proper-noun words (``llmapps.data.swaps.entity_tokens``) are mapped to
  proper nouns of *other* rows of the same role (first name, surname, single name), the same map
  in every field, and the row is kept only if no swapped word survives anywhere.
- ``sentence-order``: the body's sentences shuffled within their paragraphs, paragraphs shuffled
  after the first (the lede stays first). Every sentence, hence every fact, is kept.
- ``sentence-drop``: up to ``drop_share`` of the body's sentences dropped, only ones that share no
  content word with the references (so every fact a reference uses stays in the article).
- ``teacher``: outputs of another model (``teacher_rows``), kept only when the bench's own
  checks pass: valid, and the app's metrics (``leakage``, ``copying``) within bounds.

Every random choice comes from ``random.Random(f"{seed}:{row id}:{transform}:{copy}")``, so a row's
variants do not depend on which other rows or transforms ran: the same seed gives the same rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmapps.data.swaps import (
    apply_mapping,
    entity_tokens,
    join_sentences,
    lower_words,
    split_sentences,
    surviving,
)
from llmapps.errors import InputError
from llmapps.evaluate.text import content_words

TRANSFORMS = ("entity-swap", "sentence-order", "sentence-drop")
"""The transforms that need no model (``teacher`` needs an endpoint: ``teacher_rows``)."""


@dataclass(frozen=True)
class AugmentFields:
    """Which fields of a row augmentation reads and writes.

    Attributes:
        fields: every text field of a row (inputs and outputs); an entity swap rewrites them all.
        body: the long input whose sentences may be reordered or dropped.
        references: the output fields whose facts must stay in ``body``.
        id_key: the field naming the row. Other keys of a row are copied as they are.
    """

    fields: tuple[str, ...]
    body: str
    references: tuple[str, ...]
    id_key: str = "id"

    def check(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """An ``InputError`` naming the first row that lacks a field (or has a non-string one)."""
        need = (self.id_key, *self.fields)
        if self.body not in self.fields:
            raise InputError(f"the body field {self.body!r} is not among fields {self.fields}")
        for n, row in enumerate(rows, 1):
            bad = [k for k in need if not isinstance(row.get(k), str) or not row[k].strip()]
            if bad:
                raise InputError(
                    f"row {n} ({row.get(self.id_key, '?')}) lacks text in {', '.join(bad)}; "
                    f"every row needs {', '.join(need)}"
                )


def _rng(seed: int, row_id: str, transform: str, copy: int) -> random.Random:
    return random.Random(f"{seed}:{row_id}:{transform}:{copy}")


def _tagged(
    row: Mapping[str, Any], spec: AugmentFields, transform: str, copy: int, **changes: Any
) -> dict[str, Any]:
    base = str(row[spec.id_key])
    return {
        **row,
        **changes,
        spec.id_key: f"{base}~{transform}~{copy}",
        "source_id": base,
        "transform": transform,
    }


class EntityPool:
    """Proper nouns of a set of rows by role, to draw replacements from (built once per run)."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], spec: AugmentFields) -> None:
        self.spec = spec
        self.common = lower_words(str(r[k]) for r in rows for k in spec.fields)
        self.by_row: dict[str, dict[str, str]] = {}
        self.by_role: dict[str, list[str]] = {"first": [], "last": [], "single": []}
        seen: set[str] = set()
        for row in rows:
            found = self.entities(row)
            self.by_row[str(row[spec.id_key])] = found
            for word, role in found.items():
                if word not in seen:
                    seen.add(word)
                    self.by_role[role].append(word)
        for words in self.by_role.values():
            words.sort()

    def entities(self, row: Mapping[str, Any]) -> dict[str, str]:
        # the title is title case: its capitals say nothing, but a swap still rewrites it
        texts = [str(row[k]) for k in self.spec.fields if k != "title"]
        return entity_tokens(texts, common=self.common)


def entity_swap(
    row: Mapping[str, Any], spec: AugmentFields, pool: EntityPool, rng: random.Random
) -> dict[str, str] | None:
    """The fields of ``row`` with its proper nouns consistently replaced; None if it has none or
    a swapped word would survive (a replacement that contains an original, say)."""
    found = pool.entities(row)
    if not found:
        return None
    mine = {w.lower() for w in found}
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for word in sorted(found):
        options = [
            w
            for w in pool.by_role[found[word]] or pool.by_role["single"]
            if w.lower() not in mine and w.lower() not in used
        ]
        if not options:
            return None
        choice = rng.choice(options)
        used.add(choice.lower())
        mapping[word] = choice
    out = {k: apply_mapping(str(row[k]), mapping) for k in spec.fields}
    if surviving(out.values(), mapping):
        return None
    return out


def sentence_order(row: Mapping[str, Any], spec: AugmentFields, rng: random.Random) -> str | None:
    """The body with sentences shuffled inside each paragraph and the paragraphs after the first
    shuffled; None when there is nothing to reorder."""
    paras = split_sentences(str(row[spec.body]))
    shuffled = [list(p) for p in paras]
    for p in shuffled[1:] if len(shuffled) > 1 else shuffled:
        rng.shuffle(p)
    head, rest = shuffled[:1], shuffled[1:]
    rng.shuffle(rest)
    out = join_sentences(head + rest)
    return None if out == join_sentences(paras) else out


def sentence_drop(
    row: Mapping[str, Any], spec: AugmentFields, rng: random.Random, share: float = 0.25
) -> str | None:
    """The body without up to ``share`` of its sentences, each sharing no content word with the
    references (never the first sentence); None when no sentence may go."""
    facts = set().union(*(content_words(str(row[k])) for k in spec.references))
    paras = split_sentences(str(row[spec.body]))
    spots = [
        (i, j)
        for i, p in enumerate(paras)
        for j, s in enumerate(p)
        if (i, j) != (0, 0) and not (content_words(s) & facts)
    ]
    total = sum(len(p) for p in paras)
    k = min(len(spots), max(1, int(total * share)))
    if not spots or total < 3:
        return None
    gone = set(rng.sample(spots, k))
    return join_sentences(
        [s for j, s in enumerate(p) if (i, j) not in gone] for i, p in enumerate(paras)
    )


def augment_rows(
    rows: Sequence[Mapping[str, Any]],
    spec: AugmentFields,
    *,
    transforms: Iterable[str] = TRANSFORMS,
    copies: int = 1,
    seed: int = 0,
    drop_share: float = 0.25,
) -> list[dict[str, Any]]:
    """New rows made from ``rows`` by each of ``transforms``, ``copies`` variants each.

    Rows that a transform cannot change (no names, one sentence) yield nothing for it; identical
    variants are written once. Deterministic in ``seed``.
    """
    transforms = list(transforms)
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise InputError(f"unknown transforms {unknown}; use some of {', '.join(TRANSFORMS)}")
    if copies < 1:
        raise InputError(f"copies must be at least 1, got {copies}")
    spec.check(rows)
    pool = EntityPool(rows, spec) if "entity-swap" in transforms else None
    out: list[dict[str, Any]] = []
    for row in rows:
        rid = str(row[spec.id_key])
        seen: set[tuple[str, ...]] = set()
        for transform in transforms:
            for copy in range(copies):
                rng = _rng(seed, rid, transform, copy)
                changes: dict[str, Any] | None
                if transform == "entity-swap":
                    assert pool is not None
                    changes = entity_swap(row, spec, pool, rng)
                else:
                    make: Callable[..., str | None] = (
                        sentence_order if transform == "sentence-order" else sentence_drop
                    )
                    extra = {"share": drop_share} if transform == "sentence-drop" else {}
                    body = make(row, spec, rng, **extra)
                    changes = None if body is None else {spec.body: body}
                if not changes:
                    continue
                new = _tagged(row, spec, transform, copy, **changes)
                key = tuple(str(new[k]) for k in spec.fields)
                if key not in seen:
                    seen.add(key)
                    out.append(new)
    return out


def teacher_rows(
    rows: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    spec: AugmentFields,
    *,
    target: str | None = None,
    answer: str | None,
    leak: Sequence[str] = (),
    copy: Sequence[str] = (),
    max_leakage: float = 0.5,
    riddle: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows whose reference fields are a teacher's ``outputs`` (aligned with ``rows``), kept only
    when the output is valid, every reference field is filled, and the ``target`` field passes
    the app's own checks as the bench scores them: its ``leakage`` of the ``leak`` fields' content
    words at most ``max_leakage``, and no ``copying`` of a ``copy`` field (a check no registered
    metric offers is skipped). ``riddle`` is the name ``target`` had before issue 24.
    Returns (kept rows, counts of why the others were dropped)."""
    from llmapps.evaluate.scoring import MetricsConfig, row_checks

    target = target or riddle
    if len(rows) != len(outputs):
        raise InputError(f"{len(rows)} rows but {len(outputs)} teacher outputs; they must align")
    kept: list[dict[str, Any]] = []
    dropped = {"invalid": 0, "empty": 0, "leaks": 0, "copies": 0}
    config = None
    if target:
        config = MetricsConfig(
            fields=[target],
            primary_field=target,
            target_field=target,
            leak_fields=[k for k in leak if k != target],
            copy_fields=[k for k in copy if k != target],
            semantic=False,
        )
    for row, out in zip(rows, outputs, strict=True):
        if out.get("error") or out.get("valid") is False:
            dropped["invalid"] += 1
            continue
        if any(not str(out.get(k) or "").strip() for k in spec.references):
            dropped["empty"] += 1
            continue
        both = {**row, **{k: out[k] for k in spec.references}}
        if config is not None:
            checks = row_checks(("leakage", "copying"), [both], [{}], config)[0]
            leaked = checks.get("leakage")
            if leaked is not None and leaked > max_leakage:
                dropped["leaks"] += 1
                continue
            if checks.get("copying", 0.0) >= 1.0:
                dropped["copies"] += 1
                continue
        if answer and not str(both.get(answer) or "").strip():
            dropped["empty"] += 1
            continue
        kept.append(_tagged(both, spec, "teacher", 0))
    return kept, dropped
