"""The generic built-in metrics: a table of what each is, and how each is computed.

Imported by ``llmapps.evaluate.metrics``, which registers them in ``llmapps.api.metrics.METRICS``
like any other metric. An app's own metrics (e.g. how much of its answer an output gives away)
live with the app and register through the ``llmapps.metrics`` entry-point group; see
``llmapps.api.metrics`` for how to add one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llmapps.api.metrics import METRICS, Batch, Compute, metric_table

Rows = Sequence[Mapping[str, Any]]
Refs = Mapping[str, Any]


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
    from llmapps.evaluate.text import format_valid

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
    from llmapps.evaluate.text import word_count

    p = batch.config.primary_field
    return [{f"words_{p}": word_count(_text(r.get(p)))} for r in batch.rows]


def _corpus_bleu(column: str, rows: Rows, per_row: Rows, refs: Refs, config: Any) -> float | None:
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


def _perplexity(column: str, rows: Rows, per_row: Rows, refs: Refs, config: Any) -> float | None:
    """Corpus perplexity: exp of the summed negative log-likelihood over the summed tokens."""
    nll = sum(float(m.get("ppl_nll", 0.0)) for m in per_row)
    toks = sum(int(m.get("ppl_tokens", 0)) for m in per_row)
    return round(math.exp(nll / toks), 4) if toks else None


# One metric a line, columns as ``llmapps.api.metrics.metric_table`` reads them; how each is
# computed and summarised is in _COMPUTE and _AGGREGATE below (default: computed elsewhere, the
# mean of the rows; the speed table's: the bench's summary).
_QUALITY = """
rouge1       | -      | + | 10  | field | -   | ROUGE-1 F against the reference
rouge2       | -      | + | 11  | field | -   | ROUGE-2 F against the reference
rougeL       | -      | + | 12  | field | all | ROUGE-L F against the reference
bleu         | -      | + | 20  | field | all | sentence BLEU per row; corpus BLEU in the summary
semsim       | sem    | + | 30  | field | all | cosine similarity of embeddings to the reference
perplexity   | ppl    | - | 40  | -     | all | perplexity of the reference after the strategy's prompt
ppl_nll      | -      | = | 41  | -     | -   | summed negative log-likelihood of the reference (per row)
ppl_tokens   | -      | = | 42  | -     | -   | tokens of the reference scored (per row)
answer_f1    | ans F1 | + | 80  | -     | all | token F1 of the answer
answer_em    | ans EM | + | 81  | -     | all | exact match of the answer
format_valid | valid  | + | 90  | -     | all | every reference field is a non-empty string
words        | -      | = | 100 | field | all | words in the primary field
judge_score  | judge  | + | 110 | -     | all | the LLM judge's grade (llmapps bench --judge)
"""
# speed, cost and memory: the bench's summary measures them from its runs
_SPEED = """
latency_p50_s      | p50 s    | - | 10 | - | all      | median latency of a batch
latency_p95_s      | p95 s    | - | 11 | - | all      | 95th-percentile latency of a batch
sample_s           | s/sample | - | 12 | - | terminal | generation time per sample
tokens_per_s       | tok/s    | + | 20 | - | all      | output tokens per second of generation
output_tokens_mean | -        | = | 21 | - | -        | output tokens per sample
cost_per_1k_usd    | $/1k     | - | 30 | - | all      | cost of 1,000 samples (prices in settings.bench)
peak_rss_mb        | peak MB  | - | 40 | - | all      | peak resident memory of the process while the strategy ran
rss_delta_mb       | +MB      | - | 41 | - | terminal | peak memory minus memory before the strategy loaded
gpu_peak_mb        | GPU MB   | - | 42 | - | terminal | peak CUDA memory allocated
load_s             | load s   | - | 50 | - | terminal | time to build the strategy and load its model
failures           | fail     | - | 60 | - | -        | samples that failed
"""
_COMPUTE: dict[str, Compute] = {
    "rouge1": _rouge("rouge1"),
    "rouge2": _rouge("rouge2"),
    "rougeL": _rouge("rougeL"),
    "bleu": _per_field(_bleu, "bleu"),
    "semsim": _semsim,
    "answer_f1": _answer("answer_f1"),
    "answer_em": _answer("answer_em"),
    "format_valid": _format_valid,
    "words": _words,
}
_AGGREGATE: dict[str, Any] = {
    "bleu": _corpus_bleu,
    "perplexity": _perplexity,
    "ppl_nll": "none",
    "ppl_tokens": "none",
}
BUILTINS = [
    *metric_table(_QUALITY, compute=_COMPUTE, aggregate=_AGGREGATE),
    *metric_table(_SPEED, group="speed", aggregate=_AGGREGATE),
]
for _metric in BUILTINS:  # the generic metrics, registered like any other
    METRICS.register(_metric.name, _metric)
