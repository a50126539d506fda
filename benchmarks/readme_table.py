"""The README's speed table, generated from ``benchmarks/results/*.json``.

Every row names one results file; every figure in it is read from that file, so the table cannot
say more than was measured. A file in the harness's schema (``benchmarks/harness.py``) gives each
ratio as the median and min-max of interleaved repeats, with each side's dtype and quality. A file
from before the harness (no ``schema`` key) is shown as what it is: its figures, the number of runs
it says it had, "no spread, pre-harness", and what it did not record. A quick (tiny, smoke) result
is refused. ::

    python benchmarks/readme_table.py            # rewrite the table in README.md
    python benchmarks/readme_table.py --check    # exit 1 if README.md differs from the files

The table sits between ``<!-- speed-table:start -->`` and ``<!-- speed-table:end -->``;
``tests/test_benchmarks.py`` fails when it differs from what the files say. To add a row, add a
``Row`` to ``ROWS``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README = ROOT / "README.md"
START, END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"
HEADER = (
    "| benchmark | ours vs peer (median, min-max) | dtype | quality of each side | runs |"
    " results, command |\n|---|---|---|---|---|---|"
)
PRE = "no spread, pre-harness"

Cells = tuple[str, str, str, str]  # figure, dtype, quality, runs


@dataclass(frozen=True)
class Row:
    """One line of the table: the results file behind it, what it measures, how to rerun it."""

    file: str
    label: str
    command: str
    legacy: Callable[[dict[str, Any]], Cells] | None = None
    optional: bool = False  # a file a benchmark only writes from now on: no row until it exists


def _x(v: float) -> str:
    return f"{v:,.0f}x" if v >= 100 else f"{v:.2f}x"


def _num(v: float) -> str:
    return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"


def harness_cells(doc: dict[str, Any]) -> Cells:
    """Cells of a results file in the harness's schema."""
    if doc.get("quick"):
        raise ValueError(f"{doc['name']}: a --quick result is a smoke test, not a speed figure")
    unit = doc["metric"]["unit"]
    sides = {s["name"]: s for s in doc["sides"]}
    figs = []
    for r in doc["ratios"]:
        o, p, sp = sides[r["ours"]], sides[r["peer"]], r["speedup"]
        who = f"{r['ours']} vs " if len(set(x["ours"] for x in doc["ratios"])) > 1 else "vs "
        ref = " (a reference line, not a peer)" if r.get("peer_role") == "reference" else ""
        figs.append(
            f"{who}{r['peer']}{ref}: **{_x(sp['median'])}** ({_x(sp['min'])}-{_x(sp['max'])}); "
            f"{_num(o['median'])} vs {_num(p['median'])} {unit}"
        )
    dtypes = {str(s["dtype"] or "n/a") for s in doc["sides"]}
    dtype = (
        f"{dtypes.pop()} (every side)"
        if len(dtypes) == 1
        else "; ".join(f"{s['name']}: {s['dtype']}" for s in doc["sides"])
    )
    quals = []
    for s in doc["sides"]:
        q = s.get("quality")
        if not q:
            quals.append(f"{s['name']}: not recorded")
        elif "identical" in q:
            same = (
                "the reference for identical texts"
                if q["identical_to"] == s["name"]
                else f"identical to {q['identical_to']} {q['identical']}/{q['of']}"
            )
            parts = [same]
            if "valid" in q:
                parts.insert(0, f"valid {q['valid']}/{q['of']}")
            quals.append(f"{s['name']}: " + ", ".join(parts))
        else:
            quals.append(f"{s['name']}: " + ", ".join(f"{k} {v}" for k, v in q.items()))
    loads = [v for s in doc["sides"] for v in s["load_1m_before"] + s["load_1m_after"]]
    m = doc["machine"]
    runs = (
        f"{doc['repeats']} interleaved repeats after {doc['warmup']} warm-up, {doc['date'][:10]}, "
        f"{m['cpu']} ({m['cores']} cores), load {min(loads):.1f}-{max(loads):.1f}"
    )
    return "<br>".join(figs), dtype, "<br>".join(quals), runs


def _legacy_generation(doc: dict[str, Any]) -> Cells:
    runs = doc["runs"]
    names = list(runs)
    ours = runs[names[0]]
    figs = [
        f"vs {n}: **{_x(runs[n]['ours_speedup'])}**; "
        f"{ours['tokens_per_s']:.1f} vs {runs[n]['tokens_per_s']:.1f} tokens/s"
        for n in names[1:]
    ]
    n = doc["config"]["n"]
    qual = "<br>".join(f"{k}: identical to (a) {v['identical_to_a']}/{n}" for k, v in runs.items())
    reps = doc["config"]["repeats"]
    how = f"median of {reps}, {PRE}" if reps > 1 else f"1 run, {PRE}"
    return "<br>".join(figs), "not recorded", qual, how


def _legacy_lora_training(doc: dict[str, Any]) -> Cells:
    med = doc["median"]
    f, n = med["finetune"], med["naive"]
    fig = (
        f"vs HF Trainer + PEFT: **{_x(doc['speedup'])}**; {f['tokens_per_s']:.1f} vs "
        f"{n['tokens_per_s']:.1f} real tokens/s; peak RSS {f['peak_rss_mb']:,.0f} vs "
        f"{n['peak_rss_mb']:,.0f} MB"
    )
    qual = f"validation loss ours {f['eval_loss']:.3f}, peer {n['eval_loss']:.3f}"
    reps = doc["config"]["repeats"]
    return fig, "fp32 (stated in the old row, not recorded)", qual, f"{reps} run, {PRE}"


def _legacy_service(doc: dict[str, Any]) -> Cells:
    rows = doc["rows"]
    ours = rows[0]["seconds"]
    figs = [
        f"vs {r['run'].split(': ', 1)[1]}: **{_x(r['seconds'] / ours)}**; "
        f"{ours:.2f} vs {r['seconds']:.2f} s"
        for r in rows[1:]
    ]
    figs.append(f"ours {rows[0]['x_ideal']:.3f}x the ideal {doc['ideal_s']:.2f} s")
    reps = doc["config"]["repeats"]
    how = f"median of {reps} (sequential loop: 1 run), {PRE}"
    return "<br>".join(figs), "n/a (HTTP client)", "texts not compared", how


def _legacy_server(doc: dict[str, Any]) -> Cells:
    seq, conc = doc["rows"]
    fig = (
        f"16 concurrent clients vs our own server one by one: **{_x(doc['ratio'])}**; "
        f"{conc['tokens_per_s']:.0f} vs {seq['tokens_per_s']:.0f} tokens/s"
    )
    rounds = doc["config"]["rounds"]
    return fig, "not recorded", "texts not compared", f"{rounds} rounds summed, {PRE}"


def _legacy_retrieval(doc: dict[str, Any]) -> Cells:
    rows = doc["rows"]
    exact = rows["faiss flat (exact)"]
    hnsw = rows.get("faiss hnsw (M=32, efSearch=64)")
    figs = [f"exact vs SimpleVectorStore: **{_x(exact['speedup_vs_simple'])}**"]
    qual = ["exact: recall@10 1.0"]
    if hnsw:
        figs.append(f"HNSW efSearch=64: **{_x(hnsw['speedup_vs_simple'])}**")
        qual.append(f"HNSW: recall@10 {hnsw['recall_at_10']:.3f}")
    figs.append(
        f"median ms/query over {doc['queries']} queries, the peer over {doc['peer_queries']}"
    )
    return "<br>".join(figs), "float32", "<br>".join(qual), f"1 run, {PRE}"


def _legacy_embeddings(doc: dict[str, Any]) -> Cells:
    figs = [
        f"vs HuggingFaceEmbeddings: **{_x(doc['throughput_ratio'])}**; "
        f"{doc['ours_texts_per_s']:.1f} vs {doc['peer_texts_per_s']:.1f} texts/s",
        f"unchanged-corpus rebuild (warm cache) vs first build (cold): "
        f"{_x(doc['rebuild_speedup'])}",
    ]
    qual = f"min cosine ours vs peer {doc['min_cosine']:.4f}"
    return "<br>".join(figs), "not recorded", qual, f"median of {doc['rounds']} rounds, {PRE}"


def _legacy_local_backends(doc: dict[str, Any]) -> Cells:
    s, sides = doc["summary"], doc["sides"]
    plain = sides["plain-llama.cpp"]
    figs = []
    for name, key in (
        ("ours-transformers", "ours_transformers_vs_plain_articles_per_s"),
        ("ours-llama.cpp", "ours_llamacpp_vs_plain_articles_per_s"),
    ):
        figs.append(
            f"{name} vs plain llama-cpp-python: **{_x(s[key])}**; "
            f"{sides[name]['wall_s']:.1f} vs {plain['wall_s']:.1f} s"
        )
    n = doc["config"]["n"]
    qual = [
        f"ours-transformers: valid {sides['ours-transformers']['valid']}/{n}, "
        f"identical to ours-llama.cpp {s['transformers_texts_equal_to_llamacpp']}/{n}",
        f"ours-llama.cpp: valid {sides['ours-llama.cpp']['valid']}/{n}, "
        f"identical to plain {s['texts_equal_to_plain_cached']}",
        "plain-llama.cpp: valid not recorded",
    ]
    dtype = "transformers: not recorded (dtype `auto`); llama.cpp: GGUF Q4_K_M"
    return "<br>".join(figs), dtype, "<br>".join(qual), f"1 run each, sides in turn, {PRE}"


ROWS: tuple[Row, ...] = (
    Row(
        "bench_generation.json",
        "batched generation, tiny-base, 32 prompts: ours vs LangChain `HuggingFacePipeline` "
        "`.batch()` default (a) / with `batch_size=32` (b)",
        "python benchmarks/bench_generation.py",
        _legacy_generation,
    ),
    Row(
        "bench_generation_gemma.json",
        "the same on Gemma 3 270M, 16 few-shot prompts packed to 2,048 tokens, 64 new tokens, vs "
        "the tuned pipeline (`batch_size=16`: every prompt in one batch; the same model object: "
        "bf16, sdpa, left padding, 2 threads)",
        "python benchmarks/bench_generation.py --real -n 16 --max-new-tokens 64",
        _legacy_generation,
    ),
    Row(
        "bench_lora_training.json",
        "LoRA training on Gemma 3 270M (16 examples, 4 steps of 4) vs HF `Trainer` + PEFT padded "
        "to the longest with full-vocabulary logits",
        "python benchmarks/bench_lora_training.py --examples 16 --repeats 3",
        _legacy_lora_training,
    ),
    Row(
        "bench_dpo_training.json",
        "DPO training on Gemma 3 270M + the full-recipe SFT adapter (its 9 AI-feedback pairs, 2 "
        "optimizer steps of 1 pair, 640 tokens) vs TRL `DPOTrainer` + PEFT",
        "python benchmarks/bench_dpo_training.py --adapter SFT_DIR --pairs PAIRS --steps 2 "
        "--repeats 3",
    ),
    Row(
        "bench_service_client.json",
        "`service` client, 64 requests at concurrency 16 to a 200 ms endpoint",
        "python benchmarks/bench_service_client.py",
        _legacy_service,
    ),
    Row(
        "bench_server_batching.json",
        "`llmapps serve`, 16 concurrent clients, SmolLM2-135M-Instruct GGUF (Q4_1), 32 tokens each",
        "python benchmarks/bench_server_batching.py",
        _legacy_server,
    ),
    Row(
        "bench_retrieval.json",
        "FAISS query at 100k x 384 vs LlamaIndex `SimpleVectorStore`",
        "python benchmarks/bench_retrieval.py",
        _legacy_retrieval,
    ),
    Row(
        "bench_embeddings.json",
        "embeddings (all-MiniLM-L6-v2, 150 articles) vs `HuggingFaceEmbeddings`",
        "python benchmarks/bench_embeddings.py",
        _legacy_embeddings,
    ),
    Row(
        "bench_embeddings_rebuild.json",
        "index build of the unchanged bundled corpus: warm cache vs cold (ours vs ours)",
        "python benchmarks/bench_embeddings.py",
        optional=True,
    ),
    Row(
        "bench_local_backends.json",
        "news-riddle few-shot on Gemma 3 270M, 16 articles, 64 new tokens, free text "
        "(constrained decoding off: plain llama-cpp-python has none), `example_selection=order`",
        "python benchmarks/bench_local_backends.py --structured off",
        _legacy_local_backends,
    ),
    Row(
        "bench_local_backends_similarity.json",
        "the same with `example_selection=similarity` (the default)",
        "python benchmarks/bench_local_backends.py --structured off --selection similarity "
        "--repeats 3",
        _legacy_local_backends,
    ),
    Row(
        "bench_local_backends_lora.json",
        "news-riddle `lora` on Gemma 3 270M + the full-recipe adapter, 16 articles, 64 new tokens "
        "(every reply is cut before its `[Answer]`: valid 0/16 on every side)",
        "python benchmarks/bench_local_backends.py --structured off --strategy lora --repeats 3",
        _legacy_local_backends,
    ),
)


def row_cells(row: Row, results: Path = RESULTS) -> Cells:
    """The cells of ``row``, read from its results file."""
    path = results / row.file
    if not path.is_file():
        raise FileNotFoundError(f"{row.file}: no results file behind this row ({path})")
    doc = json.loads(path.read_text())
    if doc.get("schema"):
        return harness_cells(doc)
    if row.legacy is None:
        raise ValueError(f"{row.file}: not in the harness's schema and no legacy reader")
    return row.legacy(doc)


def present(rows: tuple[Row, ...], results: Path) -> tuple[Row, ...]:
    """The rows to show: all but optional ones whose file does not exist yet."""
    return tuple(r for r in rows if not (r.optional and not (results / r.file).is_file()))


def render(rows: tuple[Row, ...] = ROWS, results: Path = RESULTS) -> str:
    """The table's Markdown (without the markers)."""
    lines = [HEADER]
    for row in present(rows, results):
        fig, dtype, qual, runs = row_cells(row, results)
        link = f"[json](benchmarks/results/{row.file})"
        lines.append(
            f"| {row.label} | {fig} | {dtype} | {qual} | {runs} | {link} `{row.command}` |"
        )
    return "\n".join(lines)


def current(readme: str) -> str:
    """What the README holds between the markers."""
    if START not in readme or END not in readme:
        raise ValueError(f"README has no {START} ... {END} markers")
    return readme.split(START, 1)[1].split(END, 1)[0].strip("\n")


def replace(readme: str, table: str) -> str:
    head, rest = readme.split(START, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{START}\n{table}\n{END}{tail}"


def check(readme: str, rows: tuple[Row, ...] = ROWS, results: Path = RESULTS) -> list[str]:
    """Problems: a row whose file is missing or unreadable, or a table that differs from the files."""
    problems = []
    for row in present(rows, results):
        try:
            row_cells(row, results)
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"{row.file}: {err}")
    if problems:
        return problems
    try:
        shown = current(readme)
    except ValueError as err:
        return [str(err)]
    expected = render(rows, results)
    if shown != expected:
        for a, b in zip(shown.splitlines() + [""] * 50, expected.splitlines(), strict=False):
            if a != b:
                problems.append(f"README says {a[:160]!r}; the results files say {b[:160]!r}")
        if len(shown.splitlines()) != len(expected.splitlines()):
            problems.append("README's table has rows with no results file behind them")
        problems = problems or ["README's table differs from the results files"]
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    if args.check:
        problems = check(text)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    args.readme.write_text(replace(text, render()))
    print(f"rewrote the speed table in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
