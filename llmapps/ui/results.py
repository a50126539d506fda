"""The Results tab: a bench run on the page, as promptfoo's viewer shows an eval.

- a grid of samples x strategies, each cell the chosen metric's value with a mark, coloured by
  pass/fail: red when the reply failed or is not valid or copies a text (``copying``), amber when
  its riddle leaks words of the answer or title (``leakage`` > 0), green otherwise; sorted by a
  metric of one strategy and filtered (failing anywhere, passing everywhere);
- a click on a cell opens that reply: the prompt it was sent, its raw output, parsed fields,
  metrics, tokens and latency;
- two strategies' outputs of one sample diffed side by side, word by word;
- the run's summary table, each metric's mean with its 95% bootstrap interval over the samples
  (``llmapps.evaluate.stats.bootstrap_ci``), and its plots (``RUN/plots``).

Every model text is shown as text (text boxes, a text-only table, highlighted text), never as
HTML or Markdown. ``RunView`` does the work without Gradio; ``results_tab`` puts it on the page.
"""

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError

PASS, LEAK, FAIL = "#d9f2dc", "#fff1c7", "#f8d3d7"
#: metrics offered first in the pickers, when the run has them
PREFERRED = ("format_valid", "leakage", "copying", "answer_f1", "rougeL_riddle", "solvability@1")
FILTERS = ("all samples", "failing anywhere", "passing everywhere")


def verdict(row: Mapping[str, Any] | None) -> tuple[str, str]:
    """(``pass``/``leak``/``fail``, why) of one reply."""
    if row is None:
        return "fail", "not run"
    if row.get("error"):
        return "fail", f"failed: {row['error']}"
    m = row.get("metrics") or {}
    if row.get("valid") is False:
        return "fail", "not valid: " + "; ".join(map(str, row.get("errors") or [])) or "not valid"
    if m.get("copying") == 1.0:
        return "fail", "copies a text nearly word for word"
    if isinstance(m.get("leakage"), (int, float)) and m["leakage"] > 0:
        return "leak", f"leaks {m['leakage']:.0%} of the answer's or title's words"
    return "pass", "valid"


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not math.isnan(float(value)):
        return float(value)
    return None


class RunView:
    """A bench run folder read for the page (``RUN/references.jsonl``, ``samples/*.jsonl``,
    ``strategies.json``, ``plots/``)."""

    def __init__(self, run: Path, title_key: str = "title") -> None:
        from llmapps.evaluate.human import load_run_outputs

        self.run = Path(run)
        self.outputs, refs = load_run_outputs(self.run)
        if not self.outputs:
            raise ConfigError(f"{self.run} has no results yet (samples/ is empty): run the bench")
        self.samples = {str(s["id"]): s for s in refs}
        self.ids = [i for i in self.samples if any(i in o for o in self.outputs.values())]
        self.strategies = list(self.outputs)
        self.title_key = title_key
        found = {
            k
            for rows in self.outputs.values()
            for r in rows.values()
            for k, v in (r.get("metrics") or {}).items()
            if _num(v) is not None
        }
        self.metrics = [m for m in PREFERRED if m in found] + sorted(found - set(PREFERRED))
        path = self.run / "strategies.json"
        self.status = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def value(self, sid: str, strategy: str, metric: str) -> float | None:
        row = self.outputs.get(strategy, {}).get(sid)
        return _num((row or {}).get("metrics", {}).get(metric)) if row else None

    def grid(
        self, metric: str, sort_by: str | None = None, keep: str = FILTERS[0]
    ) -> tuple[list[str], list[list[str]], list[list[str]]]:
        """(ids in shown order, rows of cell texts, rows of cell colours); the columns are
        id, title, then one per strategy."""
        ids = list(self.ids)
        if keep != FILTERS[0]:
            want_fail = keep == FILTERS[1]
            ids = [
                i
                for i in ids
                if any(verdict(o.get(i))[0] != "pass" for o in self.outputs.values()) == want_fail
            ]
        if sort_by in self.strategies:
            ids.sort(key=lambda i: -(self.value(i, sort_by, metric) or -math.inf))
        rows, colours = [], []
        for i in ids:
            cells = [i, str(self.samples[i].get(self.title_key) or "")[:80]]
            tint = ["", ""]
            for s in self.strategies:
                state, _ = verdict(self.outputs[s].get(i))
                v = self.value(i, s, metric)
                mark = {"pass": "✓", "leak": "!", "fail": "✗"}[state]
                cells.append(f"{mark} {'-' if v is None else f'{v:.3g}'}")
                tint.append({"pass": PASS, "leak": LEAK, "fail": FAIL}[state])
            rows.append(cells)
            colours.append(tint)
        return ids, rows, colours

    def detail(self, sid: str, strategy: str) -> dict[str, str]:
        """The texts the cell opens: heading, prompt, raw output, fields, metrics, facts."""
        row = self.outputs.get(strategy, {}).get(sid)
        if row is None:
            return {"heading": f"{strategy} has no result for {sid}"}
        _, why = verdict(row)
        skip = {"id", "strategy", "metrics", "prompt", "raw", "errors", "error", "valid"}
        fields = "\n".join(
            f"{k}: {v}" for k, v in row.items() if k not in skip and isinstance(v, str)
        )
        facts = (
            f"{row.get('input_tokens', 0)} tokens in / {row.get('output_tokens', 0)} out; "
            f"{row.get('sample_s', row.get('latency_s', 0))} s per sample "
            f"(batch of {row.get('batch_size', 1)}: {row.get('latency_s', 0)} s); {why}"
        )
        metrics = "\n".join(
            f"{k}: {v}" for k, v in sorted((row.get("metrics") or {}).items()) if v is not None
        )
        return {
            "heading": f"{strategy} on {sid}: {self.samples.get(sid, {}).get(self.title_key, '')}",
            "prompt": str(row.get("prompt") or "(not recorded by this run)"),
            "raw": str(row.get("raw") or row.get("error") or ""),
            "fields": fields,
            "metrics": metrics,
            "facts": facts,
        }

    def text_of(self, sid: str, strategy: str, fields: Sequence[str]) -> str:
        row = self.outputs.get(strategy, {}).get(sid) or {}
        if row.get("error"):
            return f"(failed: {row['error']})"
        return "\n".join(f"{f}: {row.get(f) or ''}" for f in fields)

    def summary(self, metrics: Sequence[str] | None = None) -> tuple[list[str], list[list[Any]]]:
        """(headers, rows): per strategy, samples (n), failed, valid (the app's check), green (valid,
        no leak, no copy) and each metric's mean with its 95% bootstrap interval over the samples."""
        from llmapps.evaluate.stats import bootstrap_ci

        metrics = list(metrics or self.metrics[:8])
        headers = ["strategy", "n", "failed", "valid", "green", *metrics]
        rows = []
        for s in self.strategies:
            rs = [self.outputs[s].get(i) for i in self.ids]
            cells: list[Any] = [
                s,
                sum(1 for r in rs if r is not None),
                sum(1 for r in rs if r is not None and r.get("error")),
                sum(1 for r in rs if r is not None and r.get("valid") is True),
                sum(1 for r in rs if verdict(r)[0] == "pass"),
            ]
            for m in metrics:
                ci = bootstrap_ci([self.value(i, s, m) for i in self.ids])
                cells.append(
                    "-" if ci.n == 0 else f"{ci.mean:.3g} [{ci.low:.3g}, {ci.high:.3g}] n={ci.n}"
                )
            rows.append(cells)
        return headers, rows

    def plots(self) -> list[str]:
        folder = self.run / "plots"
        return sorted(str(p) for p in folder.glob("*.png")) if folder.is_dir() else []


def word_diff(
    left: str, right: str
) -> tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]:
    """Both texts as (segment, mark) lists: words only in the left marked ``-``, only in the
    right ``+``, shared words unmarked (for two ``HighlightedText`` boxes)."""
    a, b = left.split(" "), right.split(" ")
    out_a: list[tuple[str, str | None]] = []
    out_b: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if i2 > i1:
            out_a.append((" ".join(a[i1:i2]) + " ", None if op == "equal" else "-"))
        if j2 > j1:
            out_b.append((" ".join(b[j1:j2]) + " ", None if op == "equal" else "+"))
    return out_a, out_b


def styled(rows: list[list[str]], colours: list[list[str]], headers: list[str]) -> Any:
    """The grid as a pandas Styler (a cell's colour as its background), for ``gr.Dataframe``."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=headers)
    if frame.empty:
        return frame

    def paint(_: Any) -> Any:
        return pd.DataFrame(
            [[f"background-color: {c}" if c else "" for c in r] for r in colours],
            index=frame.index,
            columns=frame.columns,
        )

    return frame.style.apply(paint, axis=None)


def results_tab(gr: Any, view: RunView, fields: Sequence[str]) -> None:
    """The Results tab's components and events for ``view``."""
    from llmapps.ui.widgets import bad, ok, safe, stats_table

    headers = ["id", "title", *view.strategies]
    metric0 = view.metrics[0] if view.metrics else ""
    gr.Markdown(
        f"Bench run `{view.run.name}`: {len(view.ids)} samples × {len(view.strategies)} "
        "strategies. Cells: the metric's value; green passes, amber leaks words of the answer, "
        "red failed, is not valid or copies a text. Click a cell to open that reply."
    )
    with gr.Row():
        metric = gr.Dropdown(view.metrics, value=metric0, label="Metric", elem_id="res-metric")
        sort_by = gr.Dropdown(
            [("sample order", ""), *[(f"{s} (highest first)", s) for s in view.strategies]],
            value="",
            label="Sort by the metric of",
            elem_id="res-sort",
        )
        keep = gr.Radio(list(FILTERS), value=FILTERS[0], label="Show", elem_id="res-filter")
    ids0, rows0, colours0 = view.grid(metric0)
    grid = gr.Dataframe(
        value=styled(rows0, colours0, headers),
        headers=headers,
        interactive=False,
        wrap=True,
        max_height=420,
        elem_id="results-grid",
        elem_classes=["grid"],
    )
    shown = gr.State(ids0)
    heading = gr.Textbox(label="Reply", interactive=False, elem_id="res-heading")
    with gr.Row():
        facts = gr.Textbox(label="Tokens, latency, verdict", interactive=False, elem_id="res-facts")
    with gr.Row():
        out_fields = gr.Textbox(label="Output", interactive=False, lines=4, elem_id="res-fields")
        out_metrics = gr.Textbox(label="Metrics", interactive=False, lines=4, elem_id="res-metrics")
    with gr.Accordion("Prompt and raw output", open=False):
        prompt = gr.Textbox(label="Prompt sent", interactive=False, lines=8, elem_id="res-prompt")
        raw = gr.Textbox(label="Raw output", interactive=False, lines=4, elem_id="res-raw")
    status = gr.Textbox(label="Status", interactive=False, elem_id="res-status")

    def regrid(m: str, s: str, k: str) -> tuple[Any, Any]:
        ids, rows, colours = view.grid(m, s or None, k)
        return styled(rows, colours, headers), ids

    for control in (metric, sort_by, keep):
        control.change(regrid, [metric, sort_by, keep], [grid, shown], api_visibility="private")

    detail_out = [heading, facts, out_fields, out_metrics, prompt, raw, status]

    def open_cell(ids: list[str], evt: gr.SelectData) -> tuple[Any, ...]:
        r, c = (evt.index or [0, 0])[:2]
        if not (0 <= r < len(ids)):
            return (*[gr.skip()] * 6, bad("that row is no longer shown; click again"))
        col = c - 2
        strategy = view.strategies[col] if 0 <= col < len(view.strategies) else view.strategies[0]
        d = view.detail(ids[r], strategy)
        return (
            d["heading"],
            d.get("facts", ""),
            d.get("fields", ""),
            d.get("metrics", ""),
            d.get("prompt", ""),
            d.get("raw", ""),
            ok(""),
        )

    grid.select(
        safe(open_cell, ["", "", "", "", "", "", ""], 6),
        shown,
        detail_out,
        api_visibility="private",
    )

    with gr.Accordion("Side by side", open=True):
        with gr.Row():
            left = gr.Dropdown(view.strategies, value=view.strategies[0], label="Left")
            right = gr.Dropdown(view.strategies, value=view.strategies[-1], label="Right")
            sample = gr.Dropdown(
                [
                    (f"{i} · {str(view.samples[i].get(view.title_key) or '')[:60]}", i)
                    for i in view.ids
                ],
                value=view.ids[0] if view.ids else None,
                label="Sample",
                elem_id="res-diff-sample",
            )
        first = (
            word_diff(
                view.text_of(view.ids[0], view.strategies[0], fields),
                view.text_of(view.ids[0], view.strategies[-1], fields),
            )
            if view.ids
            else ([], [])
        )
        with gr.Row():
            diff_left, diff_right = (
                gr.HighlightedText(
                    words,
                    label=side.title(),
                    combine_adjacent=True,
                    show_legend=False,
                    elem_id=f"res-diff-{side}",
                    color_map=colour,
                )
                for words, side, colour in (
                    (first[0], "left", {"-": "red"}),
                    (first[1], "right", {"+": "green"}),
                )
            )

    def diff(lname: str, rname: str, sid: str) -> tuple[Any, Any]:
        if not sid:
            return [], []
        return word_diff(view.text_of(sid, lname, fields), view.text_of(sid, rname, fields))

    for control in (left, right, sample):
        control.change(
            diff, [left, right, sample], [diff_left, diff_right], api_visibility="private"
        )

    headers_s, rows_s = view.summary()
    stats_table(
        "Summary: each metric's mean [95% bootstrap interval] over the samples",
        "res-summary",
        value=rows_s,
        headers=headers_s,
    )
    plots = view.plots()
    if plots:
        gr.Gallery(plots, label="The run's plots", columns=3, height="auto", elem_id="res-plots")
