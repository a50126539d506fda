"""The web page of ``llmapps ui`` (Gradio): try an app, compare strategies, rate outputs blinded.

Tabs, labelled from the app's ``UiSpec``:

- the app's own tab (news-riddle: "Riddle me this"): paste an input or pick a bundled/ingested
  one, pick a strategy (its model shown), get the outputs with the hidden ones (the answer) kept
  on the server until the reader asks; latency, tokens and a truncation notice below. A batch of
  N bundled inputs runs with a progress bar and says how many results are usable.
- Compare: the same input through 2-4 strategies side by side (runnable ones by default).
- Rate (``llmapps.ui.rate_tab``): blinded pairs of a bench run rated with one key each (A, B,
  tie, both bad, skip, undo), win rates with intervals and a Bradley–Terry ranking, export as
  preference pairs.
- Results (``llmapps.ui.results``, with a bench run): the grid of samples x strategies, a cell's
  prompt and output, a side-by-side diff, the summary with intervals and the run's plots.

The strategies are those of ``llmapps.compose`` (as the bench and the demo build them); one that
cannot run is listed, greyed, with its reason and fix, and never offered. Every model output is
shown in text boxes and text-only tables, never as HTML or Markdown. An error is a red status line
in words (``llmapps.ui.widgets``) and clears the outputs it replaces; a user's mistake is logged
at debug level, without a traceback. Generation events share one queue
(``concurrency_id="generate"``), so many sessions wait their turn instead of piling onto the CPU.

What a request meets first is ``serve``'s guard (``PageGuard``): the Host header must be one the
page answers to (on loopback: ``127.0.0.1``, ``localhost``, ``[::1]``), and so must the Origin of a
request that has one, so a DNS-rebinding or cross-site page cannot drive it (400/403); bodies over
``max_body_bytes`` get 413. Off loopback the page needs a key (Gradio's sign-in, the key as the
password); ``llmapps ui`` refuses to listen there without one.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmapps.errors import InputError
from llmapps.serving.guard import LOOPBACK_HOSTS, Guard, host_of
from llmapps.serving.protocol import APIError
from llmapps.serving.server import is_loopback
from llmapps.ui.session import AppSession, error_text, status_line
from llmapps.ui.widgets import CSS, STATUS_SCRIPT, bad, ok, safe, unavailable_html

log = logging.getLogger(__name__)

COMPARE_MAX = 4
MAX_BODY_BYTES = 2_000_000  # an input of MAX_INPUT_CHARS characters, JSON-escaped, fits


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


def _out(values: Sequence[Any]) -> Any:
    """Handler results for a list of outputs: Gradio takes a lone output's value as it is."""
    return values[0] if len(values) == 1 else tuple(values)


def build_blocks(session: AppSession, rating: Any = None, run: Path | None = None) -> Any:
    """The Gradio ``Blocks`` of the page for ``session``; ``rating`` (a ``RatingFlow``, or a
    ``RatingStore``) makes the Rate tab, ``run`` (a bench run folder) the Results tab."""
    import gradio as gr

    from llmapps.ui.rating import RatingFlow

    if rating is not None and not isinstance(rating, RatingFlow):
        rating = RatingFlow(rating)

    ui = session.ui
    strategies = session.strategy_choices()  # the runnable ones; the others are listed, greyed
    first_strategy = strategies[0][1] if strategies else None
    unavailable = unavailable_html(session.unavailable())
    articles = session.article_choices()
    input_keys = list(ui.inputs)
    shown, hidden = list(ui.outputs), list(ui.hidden)

    @contextlib.contextmanager
    def article_row(prefix: str) -> Iterator[tuple[Any, list[Any]]]:
        """A row of two columns: on the left the article picker and the input boxes it fills
        (ids ``<prefix>-pick``/``-in-<key>``), yielded; on the right what the block adds (the
        strategy choice, the button, the outputs)."""
        with gr.Row():
            with gr.Column(scale=3):
                pick = gr.Dropdown(
                    choices=articles, value=None, label="Pick an article", elem_id=f"{prefix}-pick"
                )
                boxes = [
                    gr.Textbox(
                        label=ui.inputs[k],
                        lines=10 if k in ui.long_inputs else 1,
                        max_lines=20 if k in ui.long_inputs else 2,
                        elem_id=f"{prefix}-in-{k}",
                    )
                    for k in input_keys
                ]
            with gr.Column(scale=2):
                yield pick, boxes

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
                with article_row("try") as (pick, ins):
                    strategy = gr.Dropdown(
                        choices=strategies,
                        value=first_strategy,
                        label="Strategy (model)",
                        elem_id="try-strategy",
                    )
                    gr.HTML(unavailable, elem_id="try-unavailable", visible=bool(unavailable))
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
                    line = status_line(row, session.entries[name].label)
                    if row.get("error"):  # nothing of an earlier run stays beside the error
                        return (*["" for _ in (*shown, *hidden)], {}, bad(line))
                    return (
                        *[str(row.get(k) or "") for k in shown],
                        *["" for _ in hidden],
                        {k: str(row.get(k) or "") for k in hidden},
                        ok(line),
                    )

                go.click(
                    safe(run_one, ["" for _ in range(n_try - 2)] + [{}, ""], n_try - 1),
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
                        column_widths=_widths(3 + len(shown)),
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
                    return gr.update(
                        value=body,
                        headers=[*headers, "status"],
                        column_widths=_widths(len(headers) + 1),
                    )

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
                    failed = sum(1 for r in rows if r.get("error"))
                    valid = sum(
                        1 for r in rows if not r.get("error") and r.get("valid") is not False
                    )
                    secs = sum(r["latency_s"] for r in rows[::size])
                    line = (
                        f"{len(rows) - failed}/{len(rows)} done with {session.entries[name].label} "
                        f"in {secs:.1f} s: {valid} usable, {len(rows) - failed - valid} not valid"
                        + (f", {failed} failed" if failed else "")
                    )
                    return (
                        batch_table(rows, False),
                        rows,
                        ok(line),
                    )

                batch_go.click(
                    safe(run_batch, [None, [], ""], 2),
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
                with article_row("cmp") as (cpick, cins):
                    chosen = gr.CheckboxGroup(
                        choices=strategies,
                        value=[v for _, v in strategies[:2]],  # runnable ones only
                        label=f"Strategies (2 to {COMPARE_MAX})",
                        elem_id="cmp-strategies",
                    )
                    cgo = gr.Button("Compare", variant="primary", elem_id="cmp-go")
                    cstatus = gr.Textbox(label="Status", interactive=False, elem_id="cmp-status")
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
                        raise InputError(
                            f"pick 2 to {COMPARE_MAX} strategies to compare, not {len(names)}"
                        )
                    inputs = session.check_input(dict(zip(input_keys, texts, strict=True)))
                    out: list[Any] = []
                    failed: list[str] = []
                    for i in range(COMPARE_MAX):
                        if i >= len(names):
                            out += [gr.update(visible=False)] + [gr.skip()] * per_col
                            continue
                        try:
                            row = session.run(names[i], [inputs])[0]
                        except Exception as err:  # one strategy failing does not hide the others
                            log.debug("ui: %s failed: %s", names[i], err)
                            row = {"error": error_text(err)}
                        if row.get("error"):
                            failed.append(names[i])
                        out.append(gr.update(visible=True))
                        out.append(session.entries[names[i]].label)
                        out += [
                            "" if row.get("error") else str(row.get(k) or "")
                            for k in (*shown, *hidden)
                        ]
                        out.append((bad if row.get("error") else ok)(status_line(row)))
                    ran = len(names) - len(failed)
                    if failed:
                        return (
                            *out,
                            bad(f"{ran} of {len(names)} ran; failed: {', '.join(failed)}"),
                        )
                    return (*out, ok(f"compared {len(names)} strategies"))

                flat = [c for col, boxes in zip(cols, cboxes, strict=True) for c in (col, *boxes)]
                cgo.click(
                    safe(compare, [gr.skip()] * (n_cmp - 1) + [""], n_cmp - 1),
                    [*cins, chosen],
                    [*flat, cstatus],
                    concurrency_id="generate",
                    api_name="compare",
                )

            # ---------------------------------------------------------------------- rate
            with gr.Tab("Rate", id="rate"):
                if rating is None:
                    gr.Markdown(
                        "No bench run to rate. Start the app with `llmapps ui --run RUN_DIR` "
                        "(the `--out` folder of `llmapps bench`)."
                    )
                else:
                    from llmapps.ui.rate_tab import rate_tab

                    rate_tab(
                        gr,
                        blocks,
                        rating,
                        saved_name,
                        run=run,
                        fields=[*shown, *hidden],
                        inputs=input_keys,
                    )
            if run is not None:
                with gr.Tab("Results", id="results"):
                    from llmapps.ui.results import RunView, results_tab

                    results_tab(gr, RunView(run, input_keys[0]), [*shown, *hidden])
    return blocks


def launch(
    session: AppSession,
    store: Any = None,
    *,
    run: Path | None = None,
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
        store: a ``RatingStore`` or ``RatingFlow`` for the Rate tab; run: a bench run folder
            for the Results tab.
    """
    import gradio as gr
    from starlette.middleware import Middleware

    from llmapps.ui.rating import keys_script

    # The loopback names are always answered: a rebinding page's requests carry its own name,
    # and Gradio checks its start on http://127.0.0.1:PORT (or localhost).
    allowed = (
        [*allowed_hosts, *LOOPBACK_HOSTS]
        if allowed_hosts
        else (list(LOOPBACK_HOSTS) if is_loopback(host) else None)
    )
    guard = Middleware(PageGuard, max_bytes=max_body_bytes, allowed_hosts=allowed)
    blocks = build_blocks(session, store, run)
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
        head=keys_script() + STATUS_SCRIPT,
        inbrowser=False,
        share=False,
        app_kwargs={"middleware": [guard]},
        auth=None if key is None else (lambda _user, given: _same(given, key)),
        auth_message=None if key is None else "Sign in with any name and the page's key.",
    )
    return blocks


def _widths(n: int) -> list[str | int]:
    """Column widths of the batch table (id, input, outputs..., status): the id narrow, the
    rest shared, so no column collapses into a letter a line."""
    rest = (100 - 7) / max(1, n - 1)
    return ["7%", *[f"{rest:.1f}%" for _ in range(n - 1)]]


def _same(given: str, key: str) -> bool:
    return hmac.compare_digest((given or "").encode(), key.encode())
