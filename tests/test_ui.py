"""``llmapps ui``: the Gradio page served on a free loopback port on the tiny models, driven by a
real headless Chromium through Playwright (the daily page's setup, ``.ci/apt-packages.txt``).

The browser types an article and gets the tiny model's output with latency and tokens; a
well-formed hostile output (a fault-injecting strategy: script tags, ``javascript:`` links, an
``onerror`` image as the answer) shows as text, its answer only after the click, and no script
runs; three pairs of a real bench run are rated, the page is reloaded and the ratings and the
rater's place are still there, and the page's win rates equal ``llmapps human-eval import`` on
the same ``ratings.jsonl``. Eight concurrent API sessions all get answers (they queue). Screenshots
at 1280x800 and 390x844 go to ``$LLMAPPS_SCREENSHOT_DIR`` or a temporary folder the test prints.
The browser tests skip, saying why, where no Chromium binary is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest
from browser import STORY, free_port, needs_chromium, open_page, scripted_strategy, sync_playwright
from testkit import bench_two_strategies

pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")

PAYLOAD_TEXT = (
    STORY + ' <script>window.__pwned=1</script> <a href="javascript:window.__pwned=4">x</a> '
    '<img src=x onerror="window.__pwned=2"> </textarea><script>window.__pwned=3</script>'
)


needs_browser = needs_chromium()


def hostile_strategy():
    """Fault injection: a 'model' whose well-formed output is hostile markup."""
    return scripted_strategy(
        "hostile",
        lambda task, inputs: (
            "Summary: <b>bold</b> [click](javascript:window.__pwned=6)\n"
            "Riddle: I am <script>window.__pwned=1</script> over water\n"
            'Answer: The bridge <img src=y onerror="window.__pwned=8">'
        ),
    )


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(
        os.environ.get("LLMAPPS_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="llmapps-ui-shots-")
    )
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nui screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def options(tiny_base: str, tiny_instruct: str) -> dict:
    # pinned: whatever the defaults become, these tests run on the tiny models
    return {
        "few-shot": {"base_model": tiny_base, "max_new_tokens": 24},
        "zero-shot": {"instruct_model": tiny_instruct, "max_new_tokens": 24},
        # an endpoint that is down: nothing listens on this port
        "service": {
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "model": "test-model",
            "api_key": "test",
            "max_retries": 0,
            "timeout": 5,
            "cache": False,
        },
    }


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory, options: dict) -> Path:
    """A real bench run of two strategies on three test articles."""
    out = tmp_path_factory.mktemp("ui-bench")
    two = {k: options[k] for k in ("few-shot", "zero-shot")}
    bench_two_strategies(out, 3, two, perplexity=False)
    return out


@pytest.fixture(scope="module")
def app_url(bench_run: Path, options: dict, tmp_path_factory: pytest.TempPathFactory):
    from llmapps.evaluate.human import RatingStore
    from llmapps.ui.app import launch
    from llmapps.ui.session import AppSession

    session = AppSession(
        "news-riddle",
        ["few-shot", "zero-shot", "service"],
        strategy_options=options,
        extra_strategies=[hostile_strategy()],
    )
    store = RatingStore.from_run(
        bench_run, tmp_path_factory.mktemp("ui-ratings"), fields=("riddle", "answer")
    )
    port = free_port()
    blocks = launch(session, store, port=port, block=False)
    yield f"http://127.0.0.1:{port}/", store
    blocks.close()


# --------------------------------------------------------------------------- without a browser


def test_rating_store_refuses_what_is_not_in_the_run_and_resumes(bench_run, tmp_path):
    from llmapps.errors import InputError
    from llmapps.evaluate.human import RatingStore

    store = RatingStore.from_run(bench_run, tmp_path / "he", fields=("riddle", "answer"))
    assert len(store.items) == 3 and store.strategies == ["few-shot", "zero-shot"]
    with pytest.raises(InputError, match=r"item 'q9999' is not in this run's sheet"):
        store.add("q9999", "A", "ann")
    with pytest.raises(InputError, match=r"preference 'maybe' is not A, B or tie; no rater name"):
        store.add(store.items[0]["item"], "maybe", " ")
    store.add(store.items[0]["item"], "A", "ann")
    # a kill mid-write leaves a torn line: reopening cuts it and keeps what was saved
    with store.path.open("a") as f:
        f.write('{"item": "q00')
    again = RatingStore.from_run(bench_run, tmp_path / "he", fields=("riddle", "answer"))
    assert again.next_item("ann") == store.items[1]
    again.add(store.items[1]["item"], "tie", "ann")
    assert [r["item"] for r in again.ratings()] == [it["item"] for it in store.items[:2]]


def test_a_re_rating_replaces_the_earlier_one_in_import_and_in_the_store(bench_run, tmp_path):
    from llmapps.evaluate.human import RatingStore, import_ratings

    store = RatingStore.from_run(bench_run, tmp_path / "he", fields=("riddle", "answer"))
    first, second = store.items[0]["item"], store.items[1]["item"]
    store.add(first, "A", "ann")
    store.add(second, "B", "bob")
    store.add(first, "B", "ann", "changed my mind")
    report = import_ratings([store.path], store.key_path)
    assert report == store.summary() and report["ratings"] == 2
    # ann's first rating (A) no longer counts: side B won both counted ratings
    winners = [store.key[first]["B"], store.key[second]["B"]]
    assert report["comparisons"] == {"few-shot": 2, "zero-shot": 2}
    assert report["win_rate"] == {n: winners.count(n) / 2 for n in ("few-shot", "zero-shot")}


def test_the_ui_command_says_what_is_wrong(tmp_path, capsys):
    from llmapps.cli import main

    assert main(["ui", "--run", str(tmp_path / "missing")]) != 0
    assert "--run" in (err := capsys.readouterr().err) and "no such folder" in err
    assert main(["ui", "--strategies", "few-shott", "--port", "1"]) != 0
    assert "few-shot" in capsys.readouterr().err


def test_an_article_over_the_budget_is_truncated_with_a_notice(options):
    from llmapps.ui.session import AppSession, status_line

    session = AppSession("news-riddle", ["few-shot"], strategy_options=options)
    long_text = " ".join([STORY] * 120)  # ~4,000 words; the tiny models hold 1,024 tokens
    rows = session.run(
        "few-shot",
        [
            session.check_input({"title": "Bridge", "text": long_text}),
            session.check_input({"title": "Bridge", "text": STORY}),
        ],
    )
    assert [r["truncated"] for r in rows] == [True, False]
    assert status_line(rows[0]).startswith("Notice: the input was longer than the model's budget")
    assert rows[0]["input_tokens"] > 0 and rows[0]["output_tokens"] > 0


def test_eight_concurrent_sessions_all_get_answers(app_url):
    from gradio_client import Client

    url, _ = app_url
    clients = [Client(url, verbose=False) for _ in range(8)]
    results: dict[int, tuple] = {}

    def ask(i: int) -> None:
        results[i] = clients[i].predict(f"Story {i}", STORY, "zero-shot", api_name="/run")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert sorted(results) == list(range(8))
    for out in results.values():
        status = out[-1]
        assert re.search(r"zero-shot · tiny-instruct: [\d.]+ s; \d+ tokens in / \d+ out", status), (
            status
        )


def test_a_service_that_is_down_is_one_line_in_the_page(app_url):
    from gradio_client import Client

    url, _ = app_url
    out = Client(url, verbose=False).predict("Bridge", STORY, "service", api_name="/run")
    status = out[-1]
    assert status.startswith("service · test-model: error: "), status
    assert "Traceback" not in status and "\n" not in status
    assert out[0] == "" and out[1] == ""


# --------------------------------------------------------------------------------- in a browser


def _open(p, tmp_path: Path, width: int, height: int, mobile: bool = False):
    return open_page(p, tmp_path / f"profile-{width}", width, height, mobile=mobile)


@contextlib.contextmanager
def _app_page(url: str, tmp_path: Path, width: int, height: int, mobile: bool = False):
    """(context, page, dialogs, outside) with the app at ``url`` loaded in a fresh Chromium
    profile (``_open``); the caller closes the context, Playwright stops after the block."""
    with sync_playwright() as p:
        ctx, page, dialogs, outside = _open(p, tmp_path, width, height, mobile)
        page.goto(url)
        yield ctx, page, dialogs, outside


def _box(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _value(page, elem_id: str) -> str:
    return _box(page, elem_id).input_value()


def _wait_value(page, elem_id: str, startswith: str = "", timeout: float = 120) -> str:
    """The box's value once it is non-empty (and starts with ``startswith``)."""
    deadline = time.monotonic() + timeout
    value = ""
    while time.monotonic() < deadline:
        value = _value(page, elem_id)
        if value and value.startswith(startswith):
            return value
        time.sleep(0.2)
    raise AssertionError(f"#{elem_id} is {value!r} after {timeout} s, not {startswith!r}...")


def _select_strategy(page, label: str) -> None:
    page.locator("#try-strategy input").click()
    page.get_by_role("option", name=label).click()


@needs_browser
def test_try_tab_real_model_and_hostile_output_in_chromium(app_url, tmp_path, shots):
    url, _ = app_url
    with _app_page(url, tmp_path, 1280, 800) as (ctx, page, dialogs, outside):
        try:
            _box(page, "try-in-text").fill(PAYLOAD_TEXT)
            _box(page, "try-in-title").fill("Bridge <script>window.__pwned=7</script>")
            page.locator("#try-go").click()
            status = _wait_value(page, "try-status")
            # the real tiny base model ran: its latency and token counts are on the page
            assert re.match(r"few-shot · tiny-base: [\d.]+ s; \d+ tokens in / \d+ out", status), (
                status
            )
            page.screenshot(path=str(shots / "ui-try-1280x800.png"), full_page=True)

            _select_strategy(page, "hostile")
            page.locator("#try-go").click()
            deadline = time.monotonic() + 60
            while "hostile" not in _value(page, "try-status") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert (
                _value(page, "try-out-riddle")
                == "I am <script>window.__pwned=1</script> over water"
            )
            assert _value(page, "try-out-summary").startswith("<b>bold</b> [click](javascript:")
            # the answer is not on the page at all until the reader asks
            assert "__pwned=8" not in page.content()
            assert _value(page, "try-hidden-answer") == ""
            page.locator("#try-reveal").click()
            assert (
                _wait_value(page, "try-hidden-answer", timeout=30)
                == 'The bridge <img src=y onerror="window.__pwned=8">'
            )
            page.screenshot(path=str(shots / "ui-answer-1280x800.png"), full_page=True)
            assert page.evaluate("typeof window.__pwned") == "undefined" and dialogs == []
            assert (
                page.locator("img[src=x]").count() == 0
                and page.locator("a[href^=javascript]").count() == 0
            )
            assert outside == []
        finally:
            ctx.close()


@needs_browser
def test_compare_and_batch_in_chromium(app_url, tmp_path, shots):
    url, _ = app_url
    with _app_page(url, tmp_path, 390, 844, mobile=True) as (ctx, page, dialogs, outside):
        try:
            page.get_by_role("tab", name="Compare").click()
            _box(page, "cmp-in-text").fill(STORY)
            page.locator("#cmp-go").click()
            assert _wait_value(page, "cmp-status") == "compared 2 strategies"
            assert _value(page, "cmp-0-name").startswith("few-shot") and _value(
                page, "cmp-1-name"
            ).startswith("zero-shot")
            assert re.search(r"\d+ tokens in", _value(page, "cmp-1-status"))
            assert not page.locator("#cmp-2-name").is_visible()
            page.screenshot(path=str(shots / "ui-compare-390x844.png"), full_page=True)
            page.get_by_role("tab", name="Riddle me this").click()
            page.get_by_text("A batch of articles").click()
            page.locator("#batch-go").click()
            assert re.match(r"4/4 done with few-shot", _wait_value(page, "batch-status"))
            assert page.locator("#batch-table").get_by_text("status").count() >= 1
            assert dialogs == [] and outside == []
            assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
        finally:
            ctx.close()


def _stats_win_rates(text: str) -> dict[str, float]:
    """strategy -> win rate from the page's statistics table (rank, strategy, win rate, ...)."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^\d+\s+(\S+)\s+([\d.]+)\s", text, re.M)}


@needs_browser
def test_rate_three_pairs_reload_and_match_human_eval_import(app_url, tmp_path, shots, capsys):
    from llmapps.cli import main

    url, store = app_url
    with _app_page(url, tmp_path, 1280, 800) as (ctx, page, dialogs, outside):
        try:
            page.get_by_role("tab", name="Rate").click()
            _box(page, "rate-rater").fill("ann")
            page.locator("#rate-start").click()
            assert _wait_value(page, "rate-progress", "ann:").startswith("ann: pair 1 of 3")
            for n, choice in enumerate(["A", "tie", "B"], start=1):
                progress = _value(page, "rate-progress")
                assert progress.startswith(f"ann: pair {n} of 3"), progress
                item = re.search(r"\((q\d+)\)", progress)[1]
                assert _value(page, "rate-a") and _value(page, "rate-context")
                _box(page, "rate-comment").fill(f"note {n}")
                page.locator(f"#rate-key-{choice}").click()
                assert (
                    _wait_value(page, "rate-status", f"saved {item}", 30)
                    == f"saved {item}: {choice}"
                )
            assert "nothing left" in _value(page, "rate-progress")
            page.screenshot(path=str(shots / "ui-rate-1280x800.png"), full_page=True)

            page.reload()
            page.get_by_role("tab", name="Rate").click()
            assert _wait_value(page, "rate-rater") == "ann"  # remembered by the browser
            assert "3 of 3 pairs rated" in _wait_value(page, "rate-progress", "ann:")
            assert "3 ratings by 1 rater(s)" in page.locator("#rate-note").inner_text()
            stats = page.locator("#rate-stats").inner_text()
            assert dialogs == [] and outside == []
        finally:
            ctx.close()
    lines = store.path.read_text().splitlines()
    assert [json.loads(line)["comment"] for line in lines] == ["note 1", "note 2", "note 3"]
    report_path = tmp_path / "report.json"
    assert (
        main(
            [
                "human-eval",
                "import",
                str(store.path),
                "--key",
                str(store.key_path),
                "--out",
                str(report_path),
            ]
        )
        == 0
    )
    capsys.readouterr()
    report = json.loads(report_path.read_text())
    assert report["ratings"] == 3
    assert _stats_win_rates(stats) == pytest.approx(report["win_rate"], abs=5e-4)
