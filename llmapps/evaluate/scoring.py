"""Score generated rows against references, per row and per set of rows, for any app.

A *row* is what a chain returned for one input (flat output fields such as ``summary``, plus
``id``; a failed row carries ``error``), as written by ``llmapps run`` and ``llmapps bench``. A
*reference* is a sample as ``AppSpec.samples`` gives it: its inputs plus ``reference_<field>``
keys. ``MetricsConfig`` says which fields to compare and which fields an app's own metrics read
(the app's ``AppSpec.metric_fields``, handed in by the caller), so no app is hard-coded here;
what is scored, and how it is summarised, is the metric registry (``llmapps.evaluate.metrics``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmapps.errors import InputError


class MetricsConfig(BaseModel):
    """Which fields the metrics read.

    Attributes:
        fields: output fields with references (``reference_<field>`` in a sample).
        primary_field: the field whose scores the summary table shows.
        target_field: the output text an app's own checks judge (e.g. leakage, copying,
            solvability); None turns them off.
        answer_field: the short answer scored by token F1 and exact match; None: not scored.
        leak_fields: fields (of the output first, else of the input) whose content words must
            not appear in the target field.
        copy_fields: fields (of the output first, else of the input) the target field must not
            repeat nearly word for word.
        source_fields: input fields joined into the source document of a sample (``Scorer.index``
            embeds them, for metrics that retrieve).
        solvability_k: cut-offs of the ``per="k"`` metric families (``name@k``).
        app_columns: metrics of the app's own ``AppSpec.score`` shown in the tables.
        semantic: compute embedding similarity (loads the embedding model).
        embedder: embedding model name or directory.
    """

    model_config = ConfigDict(extra="forbid")

    fields: list[str] = Field(min_length=1)
    primary_field: str
    target_field: str | None = None
    answer_field: str | None = None
    leak_fields: list[str] = Field(default_factory=list)
    copy_fields: list[str] = Field(default_factory=list)
    source_fields: list[str] = Field(default_factory=list)
    solvability_k: list[int] = Field(default_factory=lambda: [1, 3])
    app_columns: list[str] = Field(default_factory=list)
    semantic: bool = True
    embedder: str = "all-MiniLM-L6-v2"

    @property
    def riddle_field(self) -> str | None:
        """The name ``target_field`` had before issue 24 (read-only)."""
        return self.target_field

    @classmethod
    def for_fields(
        cls,
        fields: Sequence[str],
        settings: Any = None,
        app_fields: Any = None,
        **overrides: Any,
    ) -> MetricsConfig:
        """The config for an app whose references have ``fields``: ``overrides`` over
        ``settings.bench`` (where set) over the app's ``app_fields`` (its
        ``AppSpec.metric_fields``, handed in by the caller; None: the app names none)."""
        from llmapps.api.apps import MetricFields
        from llmapps.settings import get_settings

        b = (settings or get_settings()).bench
        app = app_fields or MetricFields()
        fields = list(fields)
        if not fields:
            raise InputError(
                "nothing to score: the app declares no reference fields (AppSpec.reference_keys)"
            )

        def pick(setting: Any, default: Any) -> Any:
            return setting if setting is not None else default

        target = pick(b.target_field, app.target)
        target = target if target in fields else None
        answer = pick(b.answer_field, app.answer)
        primary = b.primary_field or app.primary or target or fields[0]
        if primary not in fields:
            raise InputError(
                f"primary field {primary!r} is not a reference field; choose one of {', '.join(fields)}"
            )
        values: dict[str, Any] = dict(
            fields=fields,
            primary_field=primary,
            target_field=target,
            answer_field=answer if answer in fields else None,
            leak_fields=list(pick(b.leak_fields, app.leak)),
            copy_fields=list(pick(b.copy_fields, app.copy)),
            source_fields=list(pick(b.source_fields, app.source)),
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

    ``index`` (FAISS, built once on first use) embeds every reference's source document, so a
    metric that retrieves (an app's solvability) searches all candidates of the split, not just
    the ones scored in a batch.
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

    def score(
        self, rows: Sequence[Mapping[str, Any]], copy_texts: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Per-row metrics (a dict per row, same order); a failed row scores as an empty output.

        Every registered metric with a ``compute`` runs (``llmapps.evaluate.metrics``), in table
        order. ``copy_texts`` are texts no output may reproduce besides each row's
        ``copy_fields`` (the target fields of the worked examples a strategy was shown).
        """
        from llmapps.evaluate.metrics import Batch, metrics

        missing = [str(r.get("id")) for r in rows if str(r.get("id")) not in self.references]
        if missing:
            raise InputError(
                f"no reference for id(s) {', '.join(missing[:10])}; check the references file"
            )
        batch = Batch(
            rows=rows,
            refs=[self.references[str(r["id"])] for r in rows],
            config=self.config,
            scorer=self,
            copy_texts=copy_texts,
        )
        out: list[dict[str, Any]] = [{} for _ in rows]
        for metric in metrics():
            if metric.compute is None:
                continue
            for m, values in zip(out, metric.compute(batch), strict=True):
                m.update(values)
        return out


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 6) if values else None


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    config: MetricsConfig,
    references: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every per-row metric (rows' ``metrics``) aggregated as its registered ``Metric`` says:
    the mean by default, none for per-row parts (``ppl_nll``), or its own function (corpus BLEU
    given the references by id, corpus perplexity). Unregistered metrics get the mean."""
    from llmapps.evaluate.metrics import metric_for, metrics

    per_row = [r.get("metrics") or {} for r in rows]
    keys = sorted(
        {
            k
            for m in per_row
            for k, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    refs = references or {}
    out: dict[str, Any] = {}
    for k in keys:
        metric = metric_for(k)
        if metric is not None and (metric.aggregation == "none" or callable(metric.aggregation)):
            continue
        out[k] = _mean([float(m[k]) for m in per_row if isinstance(m.get(k), (int, float))])
    for metric in metrics():
        if not callable(metric.aggregation):
            continue
        for column in metric.columns(config):
            value = metric.aggregation(column, rows, per_row, refs, config)
            if value is not None:
                out[column] = value
    return out


def row_checks(
    names: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    refs: Sequence[Mapping[str, Any]],
    config: MetricsConfig,
) -> list[dict[str, Any]]:
    """Per-row values of the registered metrics ``names`` alone, for ``rows`` aligned with
    ``refs`` (inputs or references of each row): an app's checks (e.g. ``leakage``, ``copying``)
    used outside a bench, without a split to retrieve from (``Batch.scorer`` is None). A name no
    metric is registered under is left out (no app offers that check)."""
    from llmapps.evaluate.metrics import METRICS, Batch

    batch = Batch(rows=rows, refs=refs, config=config)
    out: list[dict[str, Any]] = [{} for _ in rows]
    for name in names:
        metric = METRICS.get(name) if name in METRICS else None
        if metric is None or metric.compute is None:
            continue
        for m, values in zip(out, metric.compute(batch), strict=True):
            m.update(values)
    return out
