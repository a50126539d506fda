"""The built-in metrics of ``llmapps.evaluate.metrics``: their computations and registrations.

Loaded by the registry on first use. Each entry is one ``Metric``; see that module for how to add
one of your own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from llmapps.evaluate.metrics import Batch, Compute, Metric


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _per_field(score: Callable[[str, str], float], name: str) -> Compute:
    """A per-field reference metric: ``score(prediction, gold)`` for each field with a gold."""

    def compute(batch: Batch) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in batch.rows]
        for f in batch.config.fields:
            for m, r, ref in zip(out, batch.rows, batch.refs, strict=True):
                gold = _text(ref.get(f"reference_{f}"))
                if gold:
                    m[f"{name}_{f}"] = score(_text(r.get(f)), gold)
        return out

    return compute


def _rouge(kind: str) -> Compute:
    def score(pred: str, gold: str) -> float:
        from llmapps.evaluate.reference import rouge

        return float(rouge(pred, gold)[kind])

    return _per_field(score, kind)


def _bleu(pred: str, gold: str) -> float:
    from llmapps.evaluate.reference import sentence_bleu

    return float(sentence_bleu(pred, gold))


def _semsim(batch: Batch) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{} for _ in batch.rows]
    c = batch.config
    if not c.semantic:
        return out
    from llmapps.evaluate.embedding import cosine_similarities

    for f in c.fields:
        golds = [_text(ref.get(f"reference_{f}")) for ref in batch.refs]
        pairs = [i for i, g in enumerate(golds) if g]
        sims = cosine_similarities(
            [_text(batch.rows[i].get(f)) for i in pairs], [golds[i] for i in pairs], c.embedder
        )
        for i, s in zip(pairs, sims, strict=True):
            out[i][f"semsim_{f}"] = s
    return out


def _answer(name: str) -> Compute:
    def compute(batch: Batch) -> list[dict[str, Any]]:
        from llmapps.evaluate.reference import exact_match, token_f1

        field = batch.config.answer_field
        score = token_f1 if name == "answer_f1" else exact_match
        out: list[dict[str, Any]] = [{} for _ in batch.rows]
        if not field:
            return out
        for m, r, ref in zip(out, batch.rows, batch.refs, strict=True):
            gold = _text(ref.get(f"reference_{field}"))
            if gold.strip():
                m[name] = score(_text(r.get(field)), gold)
        return out

    return compute


def _format_valid(batch: Batch) -> list[dict[str, Any]]:
    from llmapps.evaluate.riddle import format_valid

    fields = batch.config.fields
    # a structured reply the backend could not close (constraint_error) is not well formed, even
    # where the tolerant parser found every field in what was written
    return [
        {
            "format_valid": float(
                not r.get("error") and not r.get("constraint_error") and format_valid(r, fields)
            )
        }
        for r in batch.rows
    ]


def _words(batch: Batch) -> list[dict[str, Any]]:
    from llmapps.evaluate.riddle import word_count

    p = batch.config.primary_field
    return [{f"words_{p}": word_count(_text(r.get(p)))} for r in batch.rows]


def _leakage(batch: Batch) -> list[dict[str, Any]]:
    from llmapps.evaluate.riddle import leakage

    c = batch.config
    if not c.riddle_field:
        return [{} for _ in batch.rows]
    out = []
    for r, ref in zip(batch.rows, batch.refs, strict=True):
        sources = [
            _text(r.get(f)) or _text(ref.get(f)) or _text(ref.get(f"reference_{f}"))
            for f in c.leak_fields
        ]
        out.append({"leakage": leakage(_text(r.get(c.riddle_field)), [s for s in sources if s])})
    return out


def _copying(batch: Batch) -> list[dict[str, Any]]:
    from llmapps.evaluate.riddle import copied

    c = batch.config
    out: list[dict[str, Any]] = [{} for _ in batch.rows]
    if not c.riddle_field:
        return out
    for m, r, ref in zip(out, batch.rows, batch.refs, strict=True):
        texts = [_text(r.get(f)) or _text(ref.get(f)) for f in c.copy_fields]
        copy = copied(_text(r.get(c.riddle_field)), [*(t for t in texts if t), *batch.copy_texts])
        if copy is not None:
            m["copying"], m["copy_overlap"] = copy
    return out


def _solvability(batch: Batch) -> list[dict[str, Any]]:
    from llmapps.evaluate.riddle import solvability_at_k

    c = batch.config
    if not (c.riddle_field and c.source_fields and len(batch.scorer.references) > 1):
        return [{} for _ in batch.rows]
    index = batch.scorer.index
    if index is None:
        return [{} for _ in batch.rows]
    solved = solvability_at_k(
        [_text(r.get(c.riddle_field)) for r in batch.rows],
        [str(r["id"]) for r in batch.rows],
        index,
        c.solvability_k,
    )
    return [dict(s) for s in solved]


def _corpus_bleu(
    column: str,
    rows: Sequence[Mapping[str, Any]],
    per_row: Sequence[Mapping[str, Any]],
    refs: Mapping[str, Any],
    config: Any,
) -> float | None:
    """Corpus BLEU over the rows scored on the field (replaces the mean of sentence BLEU)."""
    from llmapps.evaluate.reference import corpus_bleu

    field = column[len("bleu_") :]
    scored = [r for r, m in zip(rows, per_row, strict=True) if column in m]
    if not refs:
        values = [float(m[column]) for m in per_row if isinstance(m.get(column), (int, float))]
        return round(statistics.fmean(values), 6) if values else None
    scored = [r for r in scored if str(r.get("id")) in refs]
    if not scored:
        return None
    return float(
        corpus_bleu(
            [_text(r.get(field)) for r in scored],
            [_text(refs[str(r["id"])].get(f"reference_{field}")) for r in scored],
        )
    )


def _perplexity(
    column: str,
    rows: Sequence[Mapping[str, Any]],
    per_row: Sequence[Mapping[str, Any]],
    refs: Mapping[str, Any],
    config: Any,
) -> float | None:
    """Corpus perplexity: exp of the summed negative log-likelihood over the summed tokens."""
    nll = sum(float(m.get("ppl_nll", 0.0)) for m in per_row)
    toks = sum(int(m.get("ppl_tokens", 0)) for m in per_row)
    return round(math.exp(nll / toks), 4) if toks else None


def _builtins() -> list[Metric]:
    s: Literal["speed"] = "speed"
    return [
        Metric(
            "rouge1",
            higher_is_better=True,
            compute=_rouge("rouge1"),
            per="field",
            table="",
            rank=10,
            description="ROUGE-1 F against the reference",
        ),
        Metric(
            "rouge2",
            higher_is_better=True,
            compute=_rouge("rouge2"),
            per="field",
            table="",
            rank=11,
            description="ROUGE-2 F against the reference",
        ),
        Metric(
            "rougeL",
            compute=_rouge("rougeL"),
            per="field",
            rank=12,
            description="ROUGE-L F against the reference",
        ),
        Metric(
            "bleu",
            compute=_per_field(_bleu, "bleu"),
            per="field",
            aggregation=_corpus_bleu,
            rank=20,
            description="sentence BLEU per row; corpus BLEU in the summary",
        ),
        Metric(
            "semsim",
            label="sem",
            compute=_semsim,
            per="field",
            rank=30,
            description="cosine similarity of embeddings to the reference",
        ),
        Metric(
            "perplexity",
            label="ppl",
            higher_is_better=False,
            aggregation=_perplexity,
            rank=40,
            description="perplexity of the reference after the strategy's prompt",
        ),
        Metric(
            "ppl_nll",
            aggregation="none",
            table="",
            higher_is_better=None,
            rank=41,
            description="summed negative log-likelihood of the reference (per row)",
        ),
        Metric(
            "ppl_tokens",
            aggregation="none",
            table="",
            higher_is_better=None,
            rank=42,
            description="tokens of the reference scored (per row)",
        ),
        Metric(
            "solvability",
            label="solv",
            compute=_solvability,
            per="k",
            rank=50,
            description="the source is among the k documents nearest the riddle",
        ),
        Metric(
            "source_rank",
            aggregation="none",
            table="",
            higher_is_better=False,
            rank=51,
            description="rank of the source among the candidates (per row)",
        ),
        Metric(
            "leakage",
            label="leak",
            higher_is_better=False,
            compute=_leakage,
            rank=60,
            description="share of the answer's and title's content words in the riddle",
        ),
        Metric(
            "copying",
            label="copy",
            higher_is_better=False,
            compute=_copying,
            rank=70,
            description="the riddle repeats a text nearly word for word",
        ),
        Metric(
            "copy_overlap",
            higher_is_better=False,
            table="",
            rank=71,
            description="largest share of the riddle's word trigrams found in one text",
        ),
        Metric(
            "answer_f1",
            label="ans F1",
            compute=_answer("answer_f1"),
            rank=80,
            description="token F1 of the answer",
        ),
        Metric(
            "answer_em",
            label="ans EM",
            compute=_answer("answer_em"),
            rank=81,
            description="exact match of the answer",
        ),
        Metric(
            "format_valid",
            label="valid",
            compute=_format_valid,
            rank=90,
            description="every reference field is a non-empty string",
        ),
        Metric(
            "words",
            higher_is_better=None,
            compute=_words,
            per="field",
            rank=100,
            description="words in the primary field",
        ),
        Metric(
            "judge_score",
            label="judge",
            rank=110,
            description="the LLM judge's grade (llmapps bench --judge)",
        ),
        # speed, cost and memory: the bench's summary measures them from its runs
        Metric(
            "latency_p50_s",
            label="p50 s",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            rank=10,
            description="median latency of a batch",
        ),
        Metric(
            "latency_p95_s",
            label="p95 s",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            rank=11,
            description="95th-percentile latency of a batch",
        ),
        Metric(
            "sample_s",
            label="s/sample",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            table="terminal",
            rank=12,
            description="generation time per sample",
        ),
        Metric(
            "tokens_per_s",
            label="tok/s",
            aggregation="summary",
            group=s,
            rank=20,
            description="output tokens per second of generation",
        ),
        Metric(
            "output_tokens_mean",
            higher_is_better=None,
            aggregation="summary",
            group=s,
            table="",
            rank=21,
            description="output tokens per sample",
        ),
        Metric(
            "cost_per_1k_usd",
            label="$/1k",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            rank=30,
            description="cost of 1,000 samples (prices in settings.bench)",
        ),
        Metric(
            "peak_rss_mb",
            label="peak MB",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            rank=40,
            description="peak resident memory of the process while the strategy ran",
        ),
        Metric(
            "rss_delta_mb",
            label="+MB",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            table="terminal",
            rank=41,
            description="peak memory minus memory before the strategy loaded",
        ),
        Metric(
            "gpu_peak_mb",
            label="GPU MB",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            table="terminal",
            rank=42,
            description="peak CUDA memory allocated",
        ),
        Metric(
            "load_s",
            label="load s",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            table="terminal",
            rank=50,
            description="time to build the strategy and load its model",
        ),
        Metric(
            "failures",
            label="fail",
            higher_is_better=False,
            aggregation="summary",
            group=s,
            table="",
            rank=60,
            description="samples that failed",
        ),
    ]


BUILTINS = _builtins()
