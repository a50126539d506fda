"""Score generated rows against references, per row and per set of rows, for any app.

A *row* is what a chain returned for one input (flat output fields such as ``riddle``, plus
``id``; a failed row carries ``error``), as written by ``llmapps run`` and ``llmapps bench``. A
*reference* is a sample as ``AppSpec.samples`` gives it: its inputs plus ``reference_<field>``
keys. ``MetricsConfig`` says which fields to compare and which fields the riddle metrics read, so
no app is hard-coded here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmapps.errors import InputError

QUALITY_HIGHER = (
    "rouge1",
    "rouge2",
    "rougeL",
    "bleu",
    "semsim",
    "solvability",
    "format_valid",
    "judge_score",
    "answer_f1",
    "answer_em",
)


class MetricsConfig(BaseModel):
    """Which fields the metrics read.

    Attributes:
        fields: output fields with references (``reference_<field>`` in a sample).
        primary_field: the field whose scores the summary table shows.
        riddle_field: the text solvability, leakage and copying judge; None turns them off.
        answer_field: the short answer scored by token F1 and exact match; None: not scored.
        leak_fields: fields (of the output first, else of the input) that must not leak.
        copy_fields: fields (of the output first, else of the input) the riddle must not repeat
            nearly word for word (``llmapps.evaluate.riddle.copied``).
        source_fields: input fields joined into the source document a riddle is solved against.
        solvability_k: cut-offs for solvability@k.
        app_columns: metrics of the app's own ``AppSpec.score`` shown in the tables.
        semantic: compute embedding similarity (loads the embedding model).
        embedder: embedding model name or directory.
    """

    model_config = ConfigDict(extra="forbid")

    fields: list[str] = Field(min_length=1)
    primary_field: str
    riddle_field: str | None = None
    answer_field: str | None = None
    leak_fields: list[str] = Field(default_factory=list)
    copy_fields: list[str] = Field(default_factory=list)
    source_fields: list[str] = Field(default_factory=list)
    solvability_k: list[int] = Field(default_factory=lambda: [1, 3])
    app_columns: list[str] = Field(default_factory=list)
    semantic: bool = True
    embedder: str = "all-MiniLM-L6-v2"

    @classmethod
    def for_fields(
        cls, fields: Sequence[str], settings: Any = None, **overrides: Any
    ) -> MetricsConfig:
        """Defaults from ``settings.bench`` for an app whose references have ``fields``."""
        from llmapps.settings import get_settings

        b = (settings or get_settings()).bench
        fields = list(fields)
        if not fields:
            raise InputError(
                "nothing to score: the app declares no reference fields (AppSpec.reference_keys)"
            )
        riddle = b.riddle_field if b.riddle_field in fields else None
        primary = b.primary_field or riddle or fields[0]
        if primary not in fields:
            raise InputError(
                f"primary field {primary!r} is not a reference field; choose one of {', '.join(fields)}"
            )
        values: dict[str, Any] = dict(
            fields=fields,
            primary_field=primary,
            riddle_field=riddle,
            answer_field=b.answer_field if b.answer_field in fields else None,
            leak_fields=list(b.leak_fields),
            copy_fields=list(b.copy_fields),
            source_fields=list(b.source_fields),
            solvability_k=list(b.solvability_k),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def source_text(sample: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The source document of a sample: its ``fields`` joined (e.g. title and text)."""
    return "\n".join(_text(sample.get(f)) for f in fields if _text(sample.get(f)).strip())


class Scorer:
    """Scores rows against a fixed set of references (one per id).

    The FAISS index for solvability is built once over every reference's source document, so a
    riddle is solved against all candidates of the split, not just the ones scored in a batch.
    """

    def __init__(self, references: Sequence[Mapping[str, Any]], config: MetricsConfig) -> None:
        self.config = config
        self.references = {str(r["id"]): dict(r) for r in references}
        if len(self.references) != len(references):
            raise InputError("reference ids must be unique")
        self._index: Any = None

    @property
    def index(self) -> Any:
        from llmapps.evaluate.embedding import NearestIndex

        if self._index is None:
            ids = list(self.references)
            docs = [source_text(self.references[i], self.config.source_fields) for i in ids]
            if not any(d.strip() for d in docs):
                return None
            self._index = NearestIndex(ids, docs, self.config.embedder)
        return self._index

    def _can_solve(self) -> bool:
        c = self.config
        return bool(c.riddle_field and c.source_fields and len(self.references) > 1)

    def score(
        self, rows: Sequence[Mapping[str, Any]], copy_texts: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Per-row metrics (a dict per row, same order); a failed row scores as an empty output.

        ``copy_texts`` are texts no riddle may reproduce besides each row's ``copy_fields`` (the
        riddles of the worked examples a strategy was shown).
        """
        from llmapps.evaluate.reference import exact_match, rouge, sentence_bleu, token_f1
        from llmapps.evaluate.riddle import (
            copied,
            format_valid,
            leakage,
            solvability_at_k,
            word_count,
        )

        c = self.config
        missing = [str(r.get("id")) for r in rows if str(r.get("id")) not in self.references]
        if missing:
            raise InputError(
                f"no reference for id(s) {', '.join(missing[:10])}; check the references file"
            )
        refs = [self.references[str(r["id"])] for r in rows]
        out: list[dict[str, Any]] = [{} for _ in rows]
        for f in c.fields:
            preds = [_text(r.get(f)) for r in rows]
            golds = [_text(ref.get(f"reference_{f}")) for ref in refs]
            for m, p, g in zip(out, preds, golds, strict=True):
                if not g:
                    continue
                for k, v in rouge(p, g).items():
                    m[f"{k}_{f}"] = v
                m[f"bleu_{f}"] = sentence_bleu(p, g)
            if c.semantic:
                from llmapps.evaluate.embedding import cosine_similarities

                pairs = [i for i, g in enumerate(golds) if g]
                sims = cosine_similarities(
                    [preds[i] for i in pairs], [golds[i] for i in pairs], c.embedder
                )
                for i, s in zip(pairs, sims, strict=True):
                    out[i][f"semsim_{f}"] = s
        if c.answer_field:
            for m, r, ref in zip(out, rows, refs, strict=True):
                gold = _text(ref.get(f"reference_{c.answer_field}"))
                if gold.strip():
                    said = _text(r.get(c.answer_field))
                    m["answer_f1"], m["answer_em"] = token_f1(said, gold), exact_match(said, gold)
        for m, r in zip(out, rows, strict=True):
            m["format_valid"] = float(not r.get("error") and format_valid(r, c.fields))
            m[f"words_{c.primary_field}"] = word_count(_text(r.get(c.primary_field)))
        if c.riddle_field:
            for m, r, ref in zip(out, rows, refs, strict=True):
                sources = [
                    _text(r.get(f)) or _text(ref.get(f)) or _text(ref.get(f"reference_{f}"))
                    for f in c.leak_fields
                ]
                m["leakage"] = leakage(_text(r.get(c.riddle_field)), [s for s in sources if s])
                texts = [_text(r.get(f)) or _text(ref.get(f)) for f in c.copy_fields]
                copy = copied(_text(r.get(c.riddle_field)), [*(t for t in texts if t), *copy_texts])
                if copy is not None:
                    m["copying"], m["copy_overlap"] = copy
            if self._can_solve() and self.index is not None:
                solved = solvability_at_k(
                    [_text(r.get(c.riddle_field)) for r in rows],
                    [str(r["id"]) for r in rows],
                    self.index,
                    c.solvability_k,
                )
                for m, row_solved in zip(out, solved, strict=True):
                    m.update(row_solved)
        return out


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 6) if values else None


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    config: MetricsConfig,
    references: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Mean of every per-row metric (rows' ``metrics``), corpus perplexity and, given the
    references by id, corpus BLEU (which replaces the mean sentence BLEU)."""
    from llmapps.evaluate.reference import corpus_bleu

    metrics = [r.get("metrics") or {} for r in rows]
    keys = sorted(
        {
            k
            for m in metrics
            for k, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    out: dict[str, Any] = {}
    for k in keys:
        if k in ("ppl_nll", "ppl_tokens", "source_rank"):
            continue
        out[k] = _mean([float(m[k]) for m in metrics if isinstance(m.get(k), (int, float))])
    refs = references or {}  # no references: no field is scored below
    for f in config.fields if refs else ():
        scored = [
            r
            for r, m in zip(rows, metrics, strict=True)
            if f"bleu_{f}" in m and str(r.get("id")) in refs
        ]
        if scored:
            out[f"bleu_{f}"] = corpus_bleu(
                [_text(r.get(f)) for r in scored],
                [_text(refs[str(r["id"])].get(f"reference_{f}")) for r in scored],
            )
    nll = sum(float(m.get("ppl_nll", 0.0)) for m in metrics)
    toks = sum(int(m.get("ppl_tokens", 0)) for m in metrics)
    if toks:
        out["perplexity"] = round(math.exp(nll / toks), 4)
    return out
