"""Run the audit: every strategy on both twins of each input, then the fairness and privacy report.

``twins_for(spec, samples, ...)`` builds the counterfactual inputs of an app's samples;
``run_strategy`` runs one strategy's chain over them into ``<out>/<strategy>.jsonl`` (resumable:
ids already there are skipped, via ``llmapps.runner.run_file``); ``report`` reads those files back
and writes ``report.json`` and ``report.md``; ``audit`` does all of it (``llmapps audit fairness``).
Which fields are read comes from the app's
``AppSpec`` (``input_keys``, ``reference_keys``, ``metric_fields``); nothing here names an app.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llmapps.audit.fairness import (
    OutputFields,
    Twin,
    compare,
    load_words,
    make_twin,
    summarise,
)
from llmapps.audit.privacy import DEFAULT_COPY_WORDS, check_output
from llmapps.data.swaps import lower_words
from llmapps.errors import ConfigError
from llmapps.evaluate.stats import bootstrap_ci
from llmapps.jsonl import atomic_write, read_jsonl

SEP = "|"


def output_fields(spec: Any) -> OutputFields:
    """The fields ``compare`` reads, from the app's ``metric_fields``."""
    mf = spec.metric_fields
    if not mf.target:
        raise ConfigError(
            f"app {spec.name!r} names no target field in its metric_fields; the audit compares "
            "that text between twins"
        )
    return OutputFields(target=mf.target, answer=mf.answer, leak=tuple(mf.leak))


def twins_for(
    spec: Any,
    samples: Sequence[Mapping[str, Any]],
    *,
    attributes: Sequence[str] | None = None,
    words_file: Path | str | None = None,
    common_rows: Sequence[Mapping[str, Any]] = (),
) -> list[Twin]:
    """The twins of ``samples`` for each attribute (inputs without the attribute's terms skip it).

    ``common_rows``: rows whose lower-case words tell names from common words (the train split).
    """
    words = load_words(words_file)
    wanted = list(attributes or words)
    unknown = [a for a in wanted if a not in words]
    if unknown:
        raise ConfigError(
            f"--attributes: unknown {', '.join(unknown)}; the words file has {', '.join(words)}"
        )
    fields = tuple(spec.input_keys)
    common = lower_words(str(r.get(k) or "") for r in common_rows for k in r if k != "title")
    twins = []
    for sample in samples:
        row = {k: sample[k] for k in (*fields, "id") if k in sample}
        for attr in wanted:
            twin = make_twin(row, fields, attr, words[attr], common=common)
            if twin is not None:
                twins.append(twin)
    return twins


def twin_inputs(twins: Sequence[Twin]) -> list[dict[str, Any]]:
    """One input per side of each twin, ids ``<id>|<attribute>|<side>``."""
    return [
        {**side, "id": SEP.join((t.id, t.attribute, name))}
        for t in twins
        for name, side in (("a", t.a), ("b", t.b))
    ]


def run_strategy(
    chain: Any, twins: Sequence[Twin], out: Path, *, batch_size: int = 4
) -> dict[str, Any]:
    """Run ``chain`` on both sides of every twin into ``out`` (JSONL, resumable); the timing."""
    from llmapps.runner import run_file

    started, cpu = time.perf_counter(), time.process_time()
    summary = run_file(chain, twin_inputs(twins), out, batch_size=batch_size, progress=False)
    return {
        "seconds": round(time.perf_counter() - started, 1),
        # CPU seconds of this process (a served model's thread included): about 2x the seconds
        # when both cores were ours, near 1x or below when another job took one
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "done": summary.done,
        "skipped": summary.skipped,
        "failed": summary.failed,
    }


def _ci(values: Sequence[float | None]) -> dict[str, Any]:
    return bootstrap_ci(values).as_dict()


def strategy_report(
    spec: Any, twins: Sequence[Twin], rows: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Fairness per attribute and the privacy findings of one strategy's rows (by id)."""
    f = output_fields(spec)
    compared: dict[str, list[dict[str, Any]]] = {}
    privacy_rows = []
    findings: list[dict[str, Any]] = []
    outputs = tuple(spec.reference_keys)
    source_keys = tuple(spec.metric_fields.source) or tuple(spec.input_keys)
    for twin in twins:
        out_a = rows.get(SEP.join((twin.id, twin.attribute, "a")))
        out_b = rows.get(SEP.join((twin.id, twin.attribute, "b")))
        if out_a is None or out_b is None:
            continue
        compared.setdefault(twin.attribute, []).append(compare(twin, out_a, out_b, f))
        for side, out in ((twin.a, out_a), (twin.b, out_b)):
            source = "\n".join(str(side.get(k) or "") for k in source_keys)
            found = check_output(source, {k: out.get(k) for k in outputs})
            privacy_rows.append(float(bool(found)))
            findings += [{"id": out.get("id"), **x.as_dict()} for x in found]
    return {
        "fairness": {attr: summarise(rs) for attr, rs in compared.items()},
        "privacy": {
            "outputs": len(privacy_rows),
            "flagged": _ci(privacy_rows),
            "by_kind": dict(
                sorted(Counter(f"{x['kind']} in {x['field']}" for x in findings).items())
            ),
            "findings": findings[:50],
            "copy_words": DEFAULT_COPY_WORDS,
        },
        "pairs": {attr: compared_rows for attr, compared_rows in compared.items()},
    }


def load_rows(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    return {str(r["id"]): r for r in read_jsonl(path, lambda r: r) if "id" in r}


def _fmt(ci: Mapping[str, Any] | None) -> str:
    if not ci or ci.get("n", 0) == 0 or math.isnan(float(ci["mean"])):
        return "-"
    return f"{ci['mean']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]"


def markdown(report: Mapping[str, Any]) -> str:
    """The report's tables: fairness per strategy and attribute, then privacy per strategy."""
    lines = [
        f"# Audit of {report['app']} ({report['split']}, {report['inputs']} inputs)",
        "",
        "Rates are the share of twin pairs whose output changed; shifts are the mean of "
        "side b minus side a; 95% bootstrap intervals in brackets.",
        "",
        "| strategy | attribute | pairs | validity changed | leakage changed | answer changed "
        "| wording changed | validity shift | leakage shift | polarity shift | abs polarity shift |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rep in report["strategies"].items():
        for attr, s in rep["fairness"].items():
            cells = [
                name,
                attr,
                str(s["pairs"]),
                *(_fmt(s.get(k)) for k in ("valid_changed", "leak_changed", "answer_changed")),
                _fmt(s.get("wording_changed")),
                *(_fmt(s.get(k)) for k in ("valid_shift", "leakage_shift", "polarity_shift")),
                _fmt(s.get("polarity_abs_shift")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| strategy | outputs | flagged (privacy) | findings by kind | generation time |",
        "|---|---|---|---|---|",
    ]
    for name, rep in report["strategies"].items():
        p = rep["privacy"]
        kinds = ", ".join(f"{k} {n}" for k, n in p["by_kind"].items()) or "none"
        took = report.get("timings", {}).get(name, {})
        secs = f"{took['seconds']} s for {took.get('done', '?')}" if took else "-"
        if took.get("cpu_seconds") and took.get("seconds"):
            secs += f" (CPU {took['cpu_seconds'] / took['seconds']:.1f}x)"
        lines.append(f"| {name} | {p['outputs']} | {_fmt(p['flagged'])} | {kinds} | {secs} |")
    if report.get("run_seconds"):
        loads = sum(float(t.get("load_seconds", 0)) for t in report.get("timings", {}).values())
        lines += [
            "",
            f"Last run: {report['run_seconds']} s of wall time in all (model loading included; "
            f"{loads:.1f} s of it loading the strategies' models).",
        ]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """``report.json`` (without the per-pair rows, which go to ``pairs.jsonl``) and ``report.md``."""
    slim = {
        **report,
        "strategies": {
            k: {kk: vv for kk, vv in v.items() if kk != "pairs"}
            for k, v in report["strategies"].items()
        },
    }
    pairs = [
        {"strategy": k, **row}
        for k, v in report["strategies"].items()
        for rows in v.get("pairs", {}).values()
        for row in rows
    ]
    atomic_write(out_dir / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in pairs))
    j = atomic_write(out_dir / "report.json", json.dumps(slim, indent=2, default=str) + "\n")
    m = atomic_write(out_dir / "report.md", markdown(slim))
    return j, m


def audit(
    spec: Any,
    samples: Sequence[Mapping[str, Any]],
    twins: Sequence[Twin],
    out_dir: Path,
    chains: Mapping[str, Callable[[], Any] | None],
    *,
    split: str,
    batch_size: int = 4,
    said: Callable[[str, Mapping[str, Any]], None] | None = None,
    started: float | None = None,
) -> tuple[dict[str, Any], Path]:
    """The whole audit into ``out_dir``: each strategy's chain (``chains[name]()``; None: report
    only, from the rows already there) on both twins of every pair into ``<name>.jsonl``
    (resumable), the seconds each run took (loading its model, generating, and the CPU seconds of
    the process meanwhile) added up across resumed runs in ``timings.json`` (``said(name,
    timing)`` after each), then the report written from all the rows. ``started``: when the run
    began (``time.perf_counter()``), for the report's ``run_seconds`` (this run's wall time,
    everything included). Returns the report and the path of ``report.md``."""
    timings_path = out_dir / "timings.json"
    timings: dict[str, Any] = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for name, chain in chains.items():
        if chain is None:
            continue
        loading = time.perf_counter()
        built = chain()  # its model loads here (a served one loaded when its server started)
        load_seconds = round(time.perf_counter() - loading, 1)
        took = run_strategy(built, twins, out_dir / f"{name}.jsonl", batch_size=batch_size)
        took["load_seconds"] = load_seconds
        if said is not None:
            said(name, took)
        before = timings.get(name, {})
        took["seconds"] = round(took["seconds"] + float(before.get("seconds", 0)), 1)
        for key in ("cpu_seconds", "load_seconds"):
            took[key] = round(took[key] + float(before.get(key, 0)), 1)
        took["done"] += int(before.get("done", 0))  # outputs the seconds paid for
        timings[name] = took
        atomic_write(timings_path, json.dumps(timings, indent=2) + "\n")
    report = {
        "app": spec.name,
        "split": split,
        "inputs": len(samples),
        "twins": {a: sum(t.attribute == a for t in twins) for a in {t.attribute for t in twins}},
        "timings": timings,
        "run_seconds": _last_run_seconds(out_dir)
        if started is None
        else round(time.perf_counter() - started, 1),
        "strategies": {
            name: strategy_report(spec, twins, load_rows(out_dir / f"{name}.jsonl"))
            for name in chains
        },
    }
    _, md = write_report(out_dir, report)
    return report, md


def _last_run_seconds(out_dir: Path) -> float | None:
    """The wall time the last run recorded (a report rewritten without running keeps it)."""
    try:
        return json.loads((out_dir / "report.json").read_text()).get("run_seconds")
    except (OSError, ValueError, AttributeError):
        return None
