"""Hostile requests to the web app (``llmapps ui``): real HTTP to a real Gradio app on loopback.

Issue 22, item 7: the page answered ``POST /gradio_api/call/run`` with ``Host: attacker.example``
and ``Origin: attacker.example`` (200), so a DNS-rebinding page could drive it; ``--host 0.0.0.0``
served with no key and no warning; an 8 MB comment was stored; and one bad line in the middle of
``ratings.jsonl`` made the Rate tab refuse every rater. Now: ``serve``'s Host check plus an
Origin check (400/403), a 413 over the body limit, a key off loopback (refused without one), a
comment limit, and the ratings read with the tolerant JSONL scan (the bad line skipped and
reported). The model is a scripted strategy (the page, not generation, is under test).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import scripted_strategy

pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")

REPLY = "Summary: A bridge opened.\nRiddle: What spans the river?\nAnswer: the bridge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sheet(folder: Path) -> Path:
    from llmapps.evaluate.human import export_sheet

    samples = [{"id": f"s{i}", "title": f"Story {i}", "text": f"Text {i}."} for i in range(3)]
    outputs = {
        name: {
            s["id"]: {"id": s["id"], "riddle": f"{name} {s['id']}", "answer": "x"} for s in samples
        }
        for name in ("few-shot", "zero-shot")
    }
    export_sheet(outputs, samples, folder, fields=("riddle", "answer"))
    return folder


def _launch(tmp: Path, **kw: Any) -> tuple[Any, str, Any]:
    from llmapps.evaluate.human import RatingStore
    from llmapps.ui.app import launch
    from llmapps.ui.session import AppSession

    session = AppSession(
        "news-riddle",
        ["service"],  # offered, never called: nothing listens on port 9
        strategy_options={"service": {"base_url": "http://127.0.0.1:9/v1", "api_key": "test"}},
        extra_strategies=[scripted_strategy("scripted", lambda task, inputs: REPLY)],
    )
    store = RatingStore(_sheet(tmp))
    port = _free_port()
    blocks = launch(session, store, port=port, block=False, **kw)
    return blocks, f"http://127.0.0.1:{port}", store


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    blocks, url, store = _launch(tmp_path_factory.mktemp("hostile-ui"))
    yield url, store
    blocks.close()


def _call(url: str, api: str, data: list[Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/gradio_api/call/{api}", json={"data": data}, headers=headers, timeout=30
    )


def _result(url: str, api: str, data: list[Any]) -> list[Any]:
    """Call ``api`` and wait for its result (Gradio's two-step HTTP API)."""
    r = _call(url, api, data)
    assert r.status_code == 200, r.text
    event = r.json()["event_id"]
    with httpx.stream("GET", f"{url}/gradio_api/call/{api}/{event}", timeout=60) as s:
        kind = None
        for line in s.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind in ("complete", "error"):
                assert kind == "complete", line
                return json.loads(line.removeprefix("data: "))
    raise AssertionError("no result")


RUN = ["Bridge", "A bridge opened over the river.", "scripted"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "attacker.example", "Origin": "http://attacker.example"},
        {"Host": "attacker.example"},
        {"Host": "attacker.example:7860"},
        {"Host": "127.0.0.1.attacker.example"},
    ],
)
def test_a_forged_host_is_refused(page: tuple[str, Any], headers: dict[str, str]) -> None:
    url, _ = page
    r = _call(url, "run", RUN, **headers)
    assert r.status_code == 400 and "does not answer to the host" in r.text
    assert httpx.get(url + "/", headers=headers, timeout=10).status_code == 400


def test_a_foreign_origin_is_refused_and_the_pages_own_is_answered(page: tuple[str, Any]) -> None:
    url, _ = page
    port = url.rsplit(":", 1)[1]
    r = _call(url, "run", RUN, Origin="http://attacker.example")
    assert r.status_code == 403 and "origin 'attacker.example'" in r.text
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        assert _call(url, "run", RUN, Origin=origin).status_code == 200
    out = _result(url, "run", RUN)  # and the page still works
    assert "What spans the river?" in json.dumps(out)


def test_a_body_over_the_limit_is_413(page: tuple[str, Any]) -> None:
    url, store = page
    big = "x" * 8_000_000
    r = _call(url, "rate", ["mallory", store.items[0]["item"], "A", big])
    assert r.status_code == 413
    assert not store.path.exists() or "mallory" not in store.path.read_text()


def test_a_long_comment_or_name_is_refused_not_stored(tmp_path: Path) -> None:
    from llmapps.errors import InputError
    from llmapps.evaluate.human import MAX_COMMENT_CHARS, RatingStore

    store = RatingStore(_sheet(tmp_path))
    item = store.items[0]["item"]
    with pytest.raises(InputError, match=r"the comment is 2,001 characters, over the 2,000"):
        store.add(item, "A", "mallory", "y" * (MAX_COMMENT_CHARS + 1))
    with pytest.raises(InputError, match=r"the rater name is over 100 characters"):
        store.add(item, "A", "m" * 101)
    assert not store.path.exists() or "mallory" not in store.path.read_text()
    store.add(item, "A", "mallory", "y" * MAX_COMMENT_CHARS)  # at the limit: kept
    assert store.ratings()[0]["rater"] == "mallory"


def test_a_bad_line_in_the_ratings_is_skipped_and_reported(tmp_path: Path) -> None:
    from llmapps.evaluate.human import RatingStore

    store = RatingStore(_sheet(tmp_path))
    first, second = store.items[0]["item"], store.items[1]["item"]
    store.add(first, "A", "alice")
    with store.path.open("a", encoding="utf-8") as f:
        f.write('{"item": "broken", "preference"\n')  # not JSON, in the middle of the file
        f.write("\xff not utf-8 either\n")
    store.add(second, "B", "alice")
    assert {r["item"] for r in store.ratings()} == {first, second}
    assert len(store.skipped) == 2 and f"{store.path}:2" in store.skipped[0]
    assert store.next_item("bob") == store.items[0]  # every rater is still served
    assert store.next_item("alice") == store.items[2]
    assert store.summary() is not None


def test_off_loopback_without_a_key_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmapps.cli import main

    monkeypatch.delenv("LLMAPPS_SERVICE__SERVER__API_KEY", raising=False)
    assert main(["ui", "--host", "0.0.0.0", "--port", "1", "--strategies", "zero-shot"]) != 0
    err = capsys.readouterr().err
    assert "refusing to serve the page on 0.0.0.0 without a key" in err and "Traceback" not in err


def test_with_a_key_the_page_asks_for_it(tmp_path: Path) -> None:
    blocks, url, _ = _launch(tmp_path, key="page-key-123")
    try:
        assert _call(url, "run", RUN).status_code in (401, 403)
        bad = httpx.post(url + "/login", data={"username": "me", "password": "nope"}, timeout=10)
        assert bad.status_code in (400, 401)
        with httpx.Client(base_url=url, timeout=30) as client:
            ok = client.post("/login", data={"username": "me", "password": "page-key-123"})
            assert ok.status_code == 200
            assert client.post("/gradio_api/call/run", json={"data": RUN}).status_code == 200
    finally:
        blocks.close()


def test_allowed_hosts_are_answered_besides_loopback(tmp_path: Path) -> None:
    blocks, url, _ = _launch(tmp_path, allowed_hosts=["shop.example"])
    try:
        assert _call(url, "run", RUN, Host="shop.example", Origin="http://shop.example").is_success
        assert _call(url, "run", RUN).is_success  # loopback names still
        assert _call(url, "run", RUN, Host="attacker.example").status_code == 400
    finally:
        blocks.close()
