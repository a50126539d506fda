"""The Rate tab: blinded A/B pairs of a bench run, rated with one key each (``rating.KEYS``), the
full article one click away, statistics with intervals, and the ratings exported as preference
pairs for fine-tuning (``llmapps.evaluate.preferences``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmapps.evaluate.human import MAX_COMMENT_CHARS
from llmapps.ui.rating import KEYS, WIN_HEADERS, RatingFlow, win_table
from llmapps.ui.widgets import ok, safe, stats_table

log = logging.getLogger(__name__)


def export_pairs(flow: RatingFlow, run: Path | None, fields: Any, inputs: Any) -> tuple[Path, str]:
    """Write the ratings as preference pairs beside the sheet; (path, one-line summary)."""
    from llmapps.errors import InputError
    from llmapps.evaluate.human import load_run_outputs
    from llmapps.evaluate.preferences import ratings_to_pairs, write_pairs

    if run is None:
        raise InputError("exporting pairs needs the bench run: start with `llmapps ui --run RUN`")
    ratings = flow.store.ratings()
    if not ratings:
        raise InputError("no ratings to export yet: rate some pairs first")
    outputs, refs = load_run_outputs(run, flow.store.strategies)
    report = ratings_to_pairs(
        ratings,
        flow.store.key,
        outputs,
        refs,
        input_fields=list(inputs),
        output_fields=list(fields),
    )
    path = Path(flow.store.folder) / "preference-pairs.jsonl"
    write_pairs(path, report.pairs)
    return path, f"{report.summary()} -> {path}"


def rate_tab(
    gr: Any,
    blocks: Any,
    flow: RatingFlow,
    saved_name: Any,
    *,
    run: Path | None = None,
    fields: Any = (),
    inputs: Any = (),
) -> None:
    store = flow.store
    legend = " · ".join(f"**{k.upper()}** {label.split('  ')[0]}" for k, (_, label) in KEYS.items())
    gr.Markdown(
        f"Which output is better, **A** or **B**? The strategies are hidden and their sides "
        f"shuffled. {len(store.items)} pairs from {len(store.strategies)} strategies; ratings "
        f"are saved as you go. Keys: {legend}."
    )
    with gr.Row():
        rater = gr.Textbox(label="Your name", elem_id="rate-rater", scale=3)
        start = gr.Button("Start or resume", elem_id="rate-start", scale=1)
    progress = gr.Textbox(
        "type your name and press Start",
        label="Progress",
        interactive=False,
        elem_id="rate-progress",
    )
    context = gr.Textbox(label="Article", interactive=False, lines=3, elem_id="rate-context")
    with gr.Accordion("Full article", open=False, elem_id="rate-article-box"):
        article = gr.Textbox(
            show_label=False, interactive=False, lines=12, max_lines=40, elem_id="rate-article"
        )
    with gr.Row():
        a = gr.Textbox(label="A", interactive=False, lines=4, elem_id="rate-a")
        b = gr.Textbox(label="B", interactive=False, lines=4, elem_id="rate-b")
    with gr.Row(elem_classes=["rate-keys"]):
        buttons = {
            action: gr.Button(
                label,
                elem_id=f"rate-key-{action}",
                variant="primary" if action in ("A", "B") else "secondary",
                size="sm",
            )
            for action, label in KEYS.values()
        }
    comment = gr.Textbox(
        label="Comment (optional, sent with the next key)",
        elem_id="rate-comment",
        max_length=MAX_COMMENT_CHARS,
    )
    status = gr.Textbox(label="Status", interactive=False, elem_id="rate-status")
    with gr.Row():
        with gr.Column(scale=3):
            stats = stats_table("Win rates and ranking", "rate-stats", headers=WIN_HEADERS)
            note = gr.Markdown("no ratings yet", elem_id="rate-note")
        plot = gr.Plot(label="Win rates", elem_id="rate-plot")
    with gr.Row():
        export = gr.Button("Export ratings as preference pairs", elem_id="rate-export", size="sm")
        exported = gr.File(label="Preference pairs", elem_id="rate-pairs", visible=False)
    current = gr.State(None)

    def stats_view() -> tuple[Any, Any, Any]:
        from llmapps.evaluate.human import plot_win_rates

        rows, text = win_table(store)
        if store.skipped:
            text += f" ({len(store.skipped)} bad line(s) in {store.path.name} skipped.)"
        report = store.summary() if rows else None
        return rows or None, text, plot_win_rates(report) if report else None

    def view(name: str) -> tuple[Any, ...]:
        name = " ".join((name or "").split())
        if not name:
            return (None, "type your name and press Start", "", "", "", "", *stats_view())
        item = flow.next_item(name)
        c = flow.counts(name)
        extra = []
        if c["skipped"]:
            extra.append(f"{c['skipped']} skipped")
        if c["both_invalid"]:
            extra.append(f"{c['both_invalid']} not asked: both sides invalid")
        tail = f" ({', '.join(extra)})" if extra else ""
        if item is None:
            return (
                None,
                f"{name}: {c['rated']} of {c['pairs']} pairs rated{tail}; nothing left, thank you",
                "",
                "",
                "",
                "",
                *stats_view(),
            )
        return (
            item["item"],
            f"{name}: pair {c['rated'] + 1} of {c['pairs']} ({item['item']}){tail}",
            item["context"],
            flow.article(item["item"]),
            item["A"],
            item["B"],
            *stats_view(),
        )

    view_outputs = [current, progress, context, article, a, b, stats, note, plot]
    n_view = len(view_outputs)

    def on_load(saved: str) -> tuple[Any, ...]:
        if not saved:  # leave alone whatever the rater typed while the page loaded
            return (gr.skip(), *[gr.skip()] * (n_view - 3), *stats_view(), gr.skip())
        return (saved, *view(saved), ok(""))

    def on_start(name: str) -> tuple[Any, ...]:
        name = " ".join((name or "").split())
        return (name, name, *view(name), ok(""))

    skips = [gr.skip()] * (n_view + 2)
    blocks.load(
        safe(on_load, [gr.skip()] * (n_view + 2), n_view + 1),
        saved_name,
        [rater, *view_outputs, status],
        api_visibility="private",
    )
    for trigger in (start.click, rater.submit):
        trigger(
            safe(on_start, [gr.skip(), *skips], n_view + 2),
            rater,
            [saved_name, rater, *view_outputs, status],
            api_visibility="private",
        )

    for action, button in buttons.items():

        def on_key(name: str, item: str | None, text: str, action: str = action) -> tuple[Any, ...]:
            said = flow.act(name, item, action, text or "")
            return (*view(name), "", ok(said))

        button.click(
            safe(on_key, skips, n_view + 1),
            [rater, current, comment],
            [*view_outputs, comment, status],
            api_name=f"rate_{action.replace('-', '_')}",
            concurrency_id="rate",
        )

    def on_export() -> tuple[Any, Any]:
        path, said = export_pairs(flow, run, fields, inputs)
        return gr.update(value=str(path), visible=True), ok(said)

    export.click(
        safe(on_export, [gr.update(visible=False), ""], 1),
        None,
        [exported, status],
        api_visibility="private",
    )
