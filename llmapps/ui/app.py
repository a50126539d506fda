"""The web page of ``llmapps ui`` (Gradio): try an app, compare strategies, rate outputs blinded.

Three tabs, labelled from the app's ``UiSpec``:

- the app's own tab (news-riddle: "Riddle me this"): paste an input or pick a bundled/ingested
  one, pick a strategy (its model shown), get the outputs with the hidden ones (the answer) kept
  on the server until the reader asks; latency, tokens and a truncation notice below. A batch of
  N bundled inputs runs with a progress bar.
- Compare: the same input through 2-4 strategies side by side.
- Rate: blinded A/B/tie rating of a bench run's outputs into a ``RatingStore`` (the one
  ``llmapps human-eval import`` reads), resuming where the rater stopped; win rates, agreement and
  a plot.

Every model output is shown in text boxes and text-only tables, never as HTML or Markdown; every
error becomes a line in the page (the traceback goes to the log). Generation events share one
queue (``concurrency_id="generate"``), so many sessions wait their turn instead of piling onto
the CPU.

What a request meets first is ``serve``'s guard (``PageGuard``): the Host header must be one the
page answers to (on loopback: ``127.0.0.1``, ``localhost``, ``[::1]``), and so must the Origin of a
request that has one, so a DNS-rebinding or cross-site page cannot drive it (400/403); bodies over
``max_body_bytes`` get 413. Off loopback the page needs a key (Gradio's sign-in, the key as the
password); ``llmapps ui`` refuses to listen there without one.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from llmapps.evaluate.human import MAX_COMMENT_CHARS, RatingStore, plot_win_rates
from llmapps.serving.guard import LOOPBACK_HOSTS, Guard, host_of
from llmapps.serving.protocol import APIError
from llmapps.serving.server import is_loopback
from llmapps.ui.session import AppSession, error_text, status_line

log = logging.getLogger(__name__)

COMPARE_MAX = 4
MAX_BODY_BYTES = 2_000_000  # an input of MAX_INPUT_CHARS characters, JSON-escaped, fits
CSS = """
.gradio-container {max-width: 1200px !important}
footer {display: none !important}
"""


class PageGuard(Guard):
    """``serve``'s guard (Host check, body size limit) with the Origin checked too: a browser
    sends the page's own origin, so another one is a cross-site or rebinding page (403)."""

    def _refusal(self, scope: Any) -> APIError | None:
        refusal = super()._refusal(scope)
        if refusal is not None or self.allowed is None:
            return refusal
        origin = dict(scope.get("headers") or []).get(b"origin")
        if origin is None:
            return None
        name = host_of(urlsplit(origin.decode("latin-1")).netloc)
        if name not in self.allowed:
            return APIError(
                403,
                f"this page does not answer requests from the origin {name[:80]!r}; open it as "
                f"http://{sorted(self.allowed)[0]}:PORT or start it with --allowed-hosts",
                code="origin_not_allowed",
            )
        return None


def _safe(fn: Callable[..., Any], n_out: int, status_index: int) -> Callable[..., Any]:
    """``fn`` with any exception turned into a message in its status output (logged in full)."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            log.warning("ui: %s failed: %s", fn.__name__, err, exc_info=True)
            out: list[Any] = [gr.skip()] * n_out
            out[status_index] = f"error: {error_text(err)}"
            return tuple(out) if n_out > 1 else out[0]

    return wrapper


def _out(values: Sequence[Any]) -> Any:
    """Handler results for a list of outputs: Gradio takes a lone output's value as it is."""
    return values[0] if len(values) == 1 else tuple(values)


def stats_text(report: dict[str, Any] | None) -> str:
    """The statistics ``llmapps human-eval import`` prints, as plain text."""
    if not report:
        return "no ratings yet"
    lines = [f"{report['ratings']} ratings by {len(report['raters'])} rater(s)", ""]
    lines.append(f"{'strategy':<24} {'win rate':>8} {'comparisons':>12}")
    for name, rate in sorted(report["win_rate"].items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:<24} {rate:>8.3f} {report['comparisons'][name]:>12}")
    a = report["agreement"]
    lines.append("")
    lines.append(
        f"agreement: {a['percent'] if a['percent'] is not None else 'n/a (one rater per item)'}"
        f", Cohen's kappa {a['cohen_kappa'] if a['cohen_kappa'] is not None else 'n/a'}"
    )
    return "\n".join(lines)


def build_blocks(session: AppSession, store: RatingStore | None = None) -> Any:
    """The Gradio ``Blocks`` of the page for ``session`` (and ``store`` for the Rate tab)."""
    import gradio as gr

    ui = session.ui
    strategies = session.strategy_choices()
    first_strategy = strategies[0][1] if strategies else None
    articles = session.article_choices()
    input_keys = list(ui.inputs)
    shown, hidden = list(ui.outputs), list(ui.hidden)

    def input_boxes(prefix: str) -> list[Any]:
        return [
            gr.Textbox(
                label=ui.inputs[k],
                lines=10 if k in ui.long_inputs else 1,
                max_lines=20 if k in ui.long_inputs else 2,
                elem_id=f"{prefix}-in-{k}",
            )
            for k in input_keys
        ]

    def fill(ident: str | None) -> tuple[Any, ...]:
        article = session.articles.get(ident or "")
        if not article:
            return _out([gr.skip() for _ in input_keys])
        return _out([article.get(k, "") for k in input_keys])

    with gr.Blocks(title=f"llmapps · {session.app}", analytics_enabled=False) as blocks:
        gr.Markdown(
            f"## {session.app}\n{session.spec.description}. Outputs are machine-generated "
            "(AI) and shown as plain text."
        )
        # outside the tabs: a tab's children mount only when it is first shown, and the rater's
        # name must be read from the browser's storage when the page loads
        saved_name = gr.BrowserState("", storage_key="llmapps-rater")
        with gr.Tabs():
            # ------------------------------------------------------------ the app's own tab
            with gr.Tab(ui.title, id="try"):
                with gr.Row():
                    with gr.Column(scale=3):
                        pick = gr.Dropdown(
                            choices=articles,
                            value=None,
                            label="Pick an article",
                            elem_id="try-pick",
                        )
                        ins = input_boxes("try")
                    with gr.Column(scale=2):
                        strategy = gr.Dropdown(
                            choices=strategies,
                            value=first_strategy,
                            label="Strategy (model)",
                            elem_id="try-strategy",
                        )
                        go = gr.Button(ui.title or "Run", variant="primary", elem_id="try-go")
                        outs = [
                            gr.Textbox(
                                label=ui.outputs[k],
                                interactive=False,
                                lines=2,
                                elem_id=f"try-out-{k}",
                            )
                            for k in shown
                        ]
                        reveal = gr.Button(ui.reveal, elem_id="try-reveal", visible=bool(hidden))
                        secrets = [
                            gr.Textbox(
                                label=ui.hidden[k],
                                interactive=False,
                                placeholder=f"hidden: press “{ui.reveal}”",
                                elem_id=f"try-hidden-{k}",
                            )
                            for k in hidden
                        ]
                        status = gr.Textbox(
                            label="Status", interactive=False, lines=2, elem_id="try-status"
                        )
                kept = gr.State({})  # the hidden outputs stay on the server until asked for
                pick.change(fill, pick, ins, queue=False)

                n_try = len(outs) + len(secrets) + 2

                def run_one(*values: Any) -> tuple[Any, ...]:
                    *texts, name = values
                    inputs = session.check_input(dict(zip(input_keys, texts, strict=True)))
                    row = session.run(name, [inputs])[0]
                    return (
                        *[str(row.get(k) or "") for k in shown],
                        *["" for _ in hidden],
                        {k: str(row.get(k) or "") for k in hidden},
                        status_line(row, session.entries[name].label),
                    )

                go.click(
                    _safe(run_one, n_try, n_try - 1),
                    [*ins, strategy],
                    [*outs, *secrets, kept, status],
                    concurrency_id="generate",
                    api_name="run",
                )

                def show_hidden(values: dict[str, str]) -> Any:
                    if not values:
                        return _out([gr.skip() for _ in hidden])
                    return _out([values.get(k, "") for k in hidden])

                reveal.click(show_hidden, kept, secrets, api_visibility="private")

                with gr.Accordion("A batch of articles", open=False):
                    with gr.Row():
                        n_batch = gr.Slider(
                            1,
                            max(1, len(articles)),
                            value=min(4, max(1, len(articles))),
                            step=1,
                            label="How many of the listed articles",
                            elem_id="batch-n",
                        )
                        batch_go = gr.Button("Run the batch", elem_id="batch-go")
                        batch_reveal = gr.Button(f"{ui.reveal} (all)", elem_id="batch-reveal")
                    batch_status = gr.Textbox(
                        label="Batch status", interactive=False, elem_id="batch-status"
                    )
                    table = gr.Dataframe(
                        headers=[
                            "id",
                            ui.inputs[input_keys[0]],
                            *[ui.outputs[k] for k in shown],
                            "status",
                        ],
                        datatype="str",
                        interactive=False,
                        wrap=True,
                        elem_id="batch-table",
                    )
                    batch_rows = gr.State([])

                def batch_table(rows: list[dict[str, Any]], with_hidden: bool) -> Any:
                    headers = ["id", ui.inputs[input_keys[0]], *[ui.outputs[k] for k in shown]]
                    headers += [ui.hidden[k] for k in hidden] if with_hidden else []
                    body = [
                        [
                            r["id"],
                            r["input"].get(input_keys[0], ""),
                            *[str(r.get(k) or "") for k in shown],
                        ]
                        + ([str(r.get(k) or "") for k in hidden] if with_hidden else [])
                        + [status_line(r).replace("\n", " ")]
                        for r in rows
                    ]
                    return gr.update(value=body, headers=[*headers, "status"])

                def run_batch(
                    n: float,
                    name: str,
                    progress: Any = gr.Progress(),
                ) -> tuple[Any, ...]:
                    picked = list(session.articles.items())[: int(n)]
                    rows: list[dict[str, Any]] = []
                    size = 4
                    progress((0, len(picked)), desc="generating", unit="articles")
                    for start in range(0, len(picked), size):
                        chunk = picked[start : start + size]
                        results = session.run(name, [session.check_input(a) for _, a in chunk])
                        for (ident, article), row in zip(chunk, results, strict=True):
                            rows.append({**row, "id": ident, "input": article})
                        progress((len(rows), len(picked)), desc="generating", unit="articles")
                    ok = sum(1 for r in rows if not r.get("error"))
                    secs = sum(r["latency_s"] for r in rows[::size])
                    return (
                        batch_table(rows, False),
                        rows,
                        f"{ok}/{len(rows)} done with {session.entries[name].label} in {secs:.1f} s",
                    )

                batch_go.click(
                    _safe(run_batch, 3, 2),
                    [n_batch, strategy],
                    [table, batch_rows, batch_status],
                    concurrency_id="generate",
                    api_name="batch",
                )
                batch_reveal.click(
                    lambda rows: batch_table(rows, True) if rows else gr.skip(),
                    batch_rows,
                    table,
                    queue=False,
                    api_visibility="private",
                )

            # ------------------------------------------------------------------- compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=3):
                        cpick = gr.Dropdown(
                            choices=articles,
                            value=None,
                            label="Pick an article",
                            elem_id="cmp-pick",
                        )
                        cins = input_boxes("cmp")
                    with gr.Column(scale=2):
                        chosen = gr.CheckboxGroup(
                            choices=strategies,
                            value=[v for _, v in strategies[:2]],
                            label=f"Strategies (2 to {COMPARE_MAX})",
                            elem_id="cmp-strategies",
                        )
                        cgo = gr.Button("Compare", variant="primary", elem_id="cmp-go")
                        cstatus = gr.Textbox(
                            label="Status", interactive=False, elem_id="cmp-status"
                        )
                cpick.change(fill, cpick, cins, queue=False)
                cols, cboxes = [], []
                with gr.Row():
                    for i in range(COMPARE_MAX):
                        with gr.Column(visible=False, min_width=220) as col:
                            boxes = [
                                gr.Textbox(
                                    label="Strategy", interactive=False, elem_id=f"cmp-{i}-name"
                                )
                            ]
                            boxes += [
                                gr.Textbox(
                                    label=ui.outputs.get(k) or ui.hidden[k],
                                    interactive=False,
                                    lines=2,
                                    elem_id=f"cmp-{i}-{k}",
                                )
                                for k in (*shown, *hidden)
                            ]
                            boxes.append(
                                gr.Textbox(
                                    label="Status", interactive=False, elem_id=f"cmp-{i}-status"
                                )
                            )
                        cols.append(col)
                        cboxes.append(boxes)

                per_col = 2 + len(shown) + len(hidden)
                n_cmp = COMPARE_MAX * (1 + per_col) + 1

                def compare(*values: Any) -> tuple[Any, ...]:
                    *texts, names = values
                    names = list(names or [])
                    if not 2 <= len(names) <= COMPARE_MAX:
                        raise ValueError(
                            f"pick 2 to {COMPARE_MAX} strategies to compare, not {len(names)}"
                        )
                    inputs = session.check_input(dict(zip(input_keys, texts, strict=True)))
                    out: list[Any] = []
                    for i in range(COMPARE_MAX):
                        if i >= len(names):
                            out += [gr.update(visible=False)] + [gr.skip()] * per_col
                            continue
                        try:
                            row = session.run(names[i], [inputs])[0]
                        except Exception as err:  # one strategy failing does not hide the others
                            log.warning("ui: %s failed: %s", names[i], err, exc_info=True)
                            row = {"error": error_text(err)}
                        out.append(gr.update(visible=True))
                        out.append(session.entries[names[i]].label)
                        out += [str(row.get(k) or "") for k in (*shown, *hidden)]
                        out.append(status_line(row))
                    return (*out, f"compared {len(names)} strategies")

                flat = [c for col, boxes in zip(cols, cboxes, strict=True) for c in (col, *boxes)]
                cgo.click(
                    _safe(compare, n_cmp, n_cmp - 1),
                    [*cins, chosen],
                    [*flat, cstatus],
                    concurrency_id="generate",
                    api_name="compare",
                )

            # ---------------------------------------------------------------------- rate
            with gr.Tab("Rate", id="rate"):
                if store is None:
                    gr.Markdown(
                        "No bench run to rate. Start the app with `llmapps ui --run RUN_DIR` "
                        "(the `--out` folder of `llmapps bench`)."
                    )
                else:
                    _rate_tab(gr, blocks, store, saved_name)
    return blocks


def _rate_tab(gr: Any, blocks: Any, store: RatingStore, saved_name: Any) -> None:
    gr.Markdown(
        f"Which output is better, **A** or **B**? The strategies are hidden and their sides "
        f"shuffled. {len(store.items)} pairs from {len(store.strategies)} strategies; "
        f"ratings are saved as you go and you can come back any time."
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
    context = gr.Textbox(label="Article", interactive=False, lines=5, elem_id="rate-context")
    with gr.Row():
        a = gr.Textbox(label="A", interactive=False, lines=4, elem_id="rate-a")
        b = gr.Textbox(label="B", interactive=False, lines=4, elem_id="rate-b")
    choice = gr.Radio(["A", "B", "tie"], label="Better", elem_id="rate-choice")
    comment = gr.Textbox(
        label="Comment (optional)", elem_id="rate-comment", max_length=MAX_COMMENT_CHARS
    )
    save = gr.Button("Save rating", variant="primary", elem_id="rate-save")
    status = gr.Textbox(label="Status", interactive=False, elem_id="rate-status")
    with gr.Row():
        stats = gr.Textbox(label="Statistics", interactive=False, lines=8, elem_id="rate-stats")
        plot = gr.Plot(label="Win rates", elem_id="rate-plot")
    current = gr.State(None)

    def _stats(report: dict[str, Any] | None) -> str:
        text = stats_text(report)
        if store.skipped:  # read on: one damaged line does not turn every rater away
            text += (
                f"\n({len(store.skipped)} bad line(s) in {store.path.name} skipped; the first: "
                f"{store.skipped[0][:200]})"
            )
        return text

    def view(name: str) -> tuple[Any, ...]:
        name = " ".join((name or "").split())
        report = store.summary()
        fig = plot_win_rates(report) if report else None
        if not name:
            return (None, "type your name and press Start", "", "", "", _stats(report), fig)
        item = store.next_item(name)
        done = len(store.rated_by(name))
        if item is None:
            return (
                None,
                f"{name}: all {len(store.items)} pairs rated, thank you",
                "",
                "",
                "",
                _stats(report),
                fig,
            )
        return (
            item["item"],
            f"{name}: pair {done + 1} of {len(store.items)} ({item['item']})",
            item["context"],
            item["A"],
            item["B"],
            _stats(report),
            fig,
        )

    view_outputs = [current, progress, context, a, b, stats, plot]

    def on_load(saved: str) -> tuple[Any, ...]:
        if not saved:  # leave alone whatever the rater typed while the page loaded
            report = store.summary()
            return (
                gr.skip(),
                *[gr.skip()] * 5,
                _stats(report),
                plot_win_rates(report) if report else None,
                gr.skip(),
            )
        return (saved, *view(saved), "")

    def on_start(name: str) -> tuple[Any, ...]:
        name = " ".join((name or "").split())
        return (name, name, *view(name), "")

    def on_save(name: str, item: str | None, pref: str | None, note: str) -> tuple[Any, ...]:
        if not item:
            raise ValueError("no pair to rate: type your name and press Start")
        if not pref:
            raise ValueError("pick A, B or tie first")
        store.add(item, pref, name, note)
        return (*view(name), None, "", f"saved {item}: {pref}")

    blocks.load(
        _safe(on_load, 9, 8), saved_name, [rater, *view_outputs, status], api_visibility="private"
    )
    start.click(
        _safe(on_start, 10, 9),
        rater,
        [saved_name, rater, *view_outputs, status],
        api_visibility="private",
    )
    rater.submit(
        _safe(on_start, 10, 9),
        rater,
        [saved_name, rater, *view_outputs, status],
        api_visibility="private",
    )
    save.click(
        _safe(on_save, 10, 9),
        [rater, current, choice, comment],
        [*view_outputs, choice, comment, status],
        api_name="rate",
    )


def launch(
    session: AppSession,
    store: RatingStore | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    concurrency: int = 1,
    block: bool = True,
    key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """Serve the page; with ``block=False`` return the running ``Blocks`` (``.close()`` stops it).

    Args:
        key: the key the page asks for (Gradio's sign-in: any name, the key as the password);
            None: no sign-in, which ``llmapps ui`` allows on loopback only.
        allowed_hosts: Host (and Origin) names answered besides the loopback names; None: the
            loopback names on loopback, any host otherwise (as ``serve``).
        max_body_bytes: larger request bodies get 413.
    """
    import gradio as gr
    from starlette.middleware import Middleware

    # The loopback names are always answered: a rebinding page's requests carry its own name,
    # and Gradio checks its start on http://127.0.0.1:PORT (or localhost).
    allowed = (
        [*allowed_hosts, *LOOPBACK_HOSTS]
        if allowed_hosts
        else (list(LOOPBACK_HOSTS) if is_loopback(host) else None)
    )
    guard = Middleware(PageGuard, max_bytes=max_body_bytes, allowed_hosts=allowed)
    blocks = build_blocks(session, store)
    blocks.queue(default_concurrency_limit=concurrency, max_size=64)
    theme = gr.themes.Default(
        font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    blocks.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=not block,
        ssr_mode=False,
        footer_links=["settings"],
        theme=theme,
        css=CSS,
        inbrowser=False,
        share=False,
        app_kwargs={"middleware": [guard]},
        auth=None if key is None else (lambda _user, given: _same(given, key)),
        auth_message=None if key is None else "Sign in with any name and the page's key.",
    )
    return blocks


def _same(given: str, key: str) -> bool:
    return hmac.compare_digest((given or "").encode(), key.encode())
