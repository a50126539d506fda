"""Score a predictions file against a references file (what ``llmapps evaluate`` does)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmapps import jsonl
from llmapps.errors import InputError


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each a JSON object with an ``id``; every bad line reported at once."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")

    def with_id(row: dict[str, Any]) -> dict[str, Any]:
        if "id" not in row:
            raise InputError("expected a JSON object with an 'id'")
        return {**row, "id": str(row["id"])}

    rows = jsonl.read_jsonl(path, with_id, what="bad line", max_listed=20)
    if not rows:
        raise InputError(f"{path} holds no rows")
    return rows


def normalise_references(
    rows: list[dict[str, Any]], fields: Sequence[str] | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """References with ``reference_<field>`` keys, and the fields to score.

    A references file either uses ``reference_<field>`` keys (as ``llmapps bench`` writes
    ``references.jsonl``) or plain ``<field>`` keys, in which case ``fields`` must name them.
    """
    prefixed = sorted(
        {k[len("reference_") :] for r in rows for k in r if k.startswith("reference_")}
    )
    if prefixed:
        chosen = list(fields or prefixed)
        unknown = [f for f in chosen if f not in prefixed]
        if unknown:
            raise InputError(f"the references have no field(s) {unknown}; they have {prefixed}")
        return rows, chosen
    if not fields:
        raise InputError(
            "the references have no reference_<field> keys: name the fields to score with --fields"
        )
    out = [{**r, **{f"reference_{f}": r[f] for f in fields if f in r}} for r in rows]
    return out, list(fields)


def bench_app(references: Path) -> str | None:
    """The app of the bench folder ``references`` lies in (its ``config.json``), if any."""
    import json

    path = Path(references).parent / "config.json"
    try:
        app = json.loads(path.read_text(encoding="utf-8")).get("bench", {}).get("app")
    except (OSError, ValueError, AttributeError):
        return None
    return app if isinstance(app, str) else None


def evaluate_files(
    predictions: Path,
    references: Path,
    *,
    fields: Sequence[str] | None = None,
    primary_field: str | None = None,
    semantic: bool = True,
    app: Any = None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], Any]:
    """Score ``predictions`` against ``references``.

    Rows with a ``strategy`` key are grouped by it (a bench's sample files can be concatenated).
    ``app`` (default: the app of the bench whose ``references.jsonl`` this is, from the
    ``config.json`` beside it; a name or an ``AppSpec``) says which fields the app's own metrics
    and the answer metrics read; without one only the per-field metrics are scored.

    Returns:
        (aggregate metrics per group, per-row results with ``metrics``, the MetricsConfig used).
    """
    from llmapps.evaluate.scoring import MetricsConfig, Scorer, aggregate

    preds = read_jsonl(predictions)
    refs, chosen = normalise_references(read_jsonl(references), fields)
    app = app or bench_app(Path(references))
    app_fields = None
    if app is not None:
        from llmapps.api.apps import get_app

        spec = get_app(app) if isinstance(app, str) else app  # a name, or the AppSpec itself
        spec.register_metrics()
        app_fields = spec.metric_fields
    config = MetricsConfig.for_fields(
        chosen, app_fields=app_fields, primary_field=primary_field, semantic=semantic
    )
    scorer = Scorer(refs, config)
    metrics = scorer.score(preds)
    scored = [{**p, "metrics": m} for p, m in zip(preds, metrics, strict=True)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in scored:
        groups.setdefault(str(row.get("strategy", "predictions")), []).append(row)
    by_id = {r["id"]: r for r in refs}
    return (
        {g: {"samples": len(rows), **aggregate(rows, config, by_id)} for g, rows in groups.items()},
        scored,
        config,
    )


def rows_path(out: Path) -> Path:
    """Where ``write_evaluation`` puts the per-row metrics beside ``out``."""
    return Path(out).with_suffix(".rows.jsonl")


def write_evaluation(
    out: Path, groups: dict[str, Any], scored: Sequence[dict[str, Any]], config: Any
) -> tuple[Path, Path]:
    """``evaluate_files``' results: the aggregate metrics and config as JSON at ``out``, the
    per-row metrics as JSONL beside it; each file replaced whole (a temp file and a rename)."""
    import json

    rows = rows_path(out)
    jsonl.atomic_write(
        out, json.dumps({"metrics": groups, "config": config.model_dump()}, indent=2) + "\n"
    )
    jsonl.write_jsonl(
        rows,
        ({"id": r["id"], "strategy": r.get("strategy"), "metrics": r["metrics"]} for r in scored),
    )
    return Path(out), rows
