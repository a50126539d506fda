"""Fault injection on news ingestion and the daily edition (issue 17, items 4, 8, 9, 10).

Server-side request forgery: a feed whose teaser links point at a real loopback server (holding
the "internal" page) under every spelling of a non-public address, and at metadata and private
addresses; none may be fetched unless ``allow_private`` is set, and then the same page does land
(so the test can see a leak). A redirect from a public name to loopback is refused as well.
Output files are replaced atomically and only on success; links with line separators are
dropped; an article without text is skipped by the daily edition, which still comes out.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest
from feed_server import FIXTURES, FeedServer

from llmapps.ingest import FetchOptions, IngestOptions, ingest

PAGE_PHRASE = "footbridge over the River Alder"  # in tests/fixtures/feeds/pages/bridge.html, not in any teaser


@pytest.fixture(scope="module")
def server():
    srv = FeedServer().start()
    yield srv
    srv.stop()


def _feed(tmp_path: Path, links: list[str]) -> Path:
    items = "".join(
        f"<item><title>Story {n}</title><link>{link.replace('&', '&amp;')}</link>"
        f"<description>A short teaser {n}.</description></item>"
        for n, link in enumerate(links)
    )
    path = tmp_path / "feed.xml"
    path.write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'
    )
    return path


def _opts(allow: bool) -> IngestOptions:
    from llmapps.ingest import CleanOptions

    fetch = FetchOptions(timeout_s=1, retries=0, backoff_s=0.01, allow_private=allow)
    return IngestOptions(
        fetch=fetch, clean=CleanOptions(min_words=0, dedup=False, near_dup_threshold=None)
    )


def test_feed_links_to_non_public_addresses_are_never_fetched(server, tmp_path: Path) -> None:
    port = server.base.rsplit(":", 1)[1]
    page = "/pages/bridge.html"
    links = [
        f"http://127.0.0.1:{port}{page}",
        f"http://localhost:{port}{page}",
        f"http://LOCALHOST.:{port}{page}",
        f"http://{socket.gethostname()}:{port}{page}",  # a name: refused after DNS resolution
        f"http://127.1:{port}{page}",
        f"http://0x7f000001:{port}{page}",
        f"http://2130706433:{port}{page}",
        f"http://[::ffff:127.0.0.1]:{port}{page}",
        f"http://[::1]:{port}{page}",
        f"http://0.0.0.0:{port}{page}",
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/admin",
        "http://192.168.1.1/",
        "http://100.100.100.200/latest/meta-data/",
        f"https://127.0.0.1:{port}{page}",
    ]
    feed = _feed(tmp_path, links)
    before = len(server.requests)
    result = ingest([str(feed)], options=_opts(allow=False))
    assert len(result.items) == len(links)
    leaked = [it.url for it in result.items if it.full_text or PAGE_PHRASE in it.text]
    refused = [w for r in result.reports for w in r.warnings if "refused" in w]
    print(f"SSRF: {len(links)} links tried, {len(refused)} refused, {len(leaked)} leaked")
    assert not leaked and len(server.requests) == before  # not one request reached the server
    assert len(refused) == len(links), [w for r in result.reports for w in r.warnings]
    assert all("--allow-private-addresses" in w for w in refused)
    # the explicit allow option: the same loopback page is fetched (the test can see a leak)
    allowed = ingest([str(_feed(tmp_path, links[:1]))], options=_opts(allow=True))
    assert allowed.items[0].full_text and PAGE_PHRASE in allowed.items[0].text


def test_feeds_and_redirects_to_non_public_addresses_are_refused(server) -> None:
    from llmapps.ingest import Fetcher, FetchError

    result = ingest([server.url("rss2.xml")], options=_opts(allow=False))
    assert result.reports[0].status == "failed" and "loopback" in (result.reports[0].error or "")

    def public_site(
        request: httpx.Request,
    ) -> httpx.Response:  # a public host that redirects inward
        if request.url.host == "news.example":
            return httpx.Response(302, headers={"Location": f"{server.base}/pages/bridge.html"})
        return httpx.Response(200, text="internal secret")  # pragma: no cover - must not be reached

    async def go() -> None:
        async with Fetcher(
            FetchOptions(retries=0), transport=httpx.MockTransport(public_site)
        ) as f:
            await f.get("http://news.example/feed.xml")

    with pytest.raises(FetchError, match=r"refused: the address 127\.0\.0\.1 is loopback"):
        asyncio.run(go())


def test_a_failed_fetch_keeps_the_previous_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    out = tmp_path / "today.jsonl"
    previous = "".join(
        json.dumps({"id": str(i), "title": "t", "text": "x"}) + "\n" for i in range(5)
    )
    out.write_text(previous)
    assert (
        main(["news", "fetch", "--feed", str(tmp_path / "missing.rss"), "--out", str(out), "-q"])
        == 1
    )
    assert out.read_text() == previous and not out.with_suffix(".report.json").exists()
    assert "left as it was" in capsys.readouterr().err


def test_an_interrupted_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmapps.jsonl as jsonl
    from llmapps.ingest import NewsItem
    from llmapps.ingest.pipeline import write_jsonl

    out = tmp_path / "today.jsonl"
    out.write_text('{"id": "old"}\n')

    def crash(*args: object) -> None:  # the rename never happens: a crash, a full disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonl.os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        write_jsonl([NewsItem(id="new", title="t", text="x")], out)
    assert out.read_text() == '{"id": "old"}\n' and [p.name for p in tmp_path.iterdir()] == [
        "today.jsonl"
    ]


def test_links_with_line_separators_are_dropped_and_the_output_reads_back(tmp_path: Path) -> None:
    from chains.news_data import read_articles
    from llmapps.ingest.pipeline import write_jsonl

    seps = ["\u2028", "\u2029", "\x85", "\u200b", "\u202e", "\x0b"]
    links = [f"https://news.example/a{sep}b" for sep in seps]
    feed = tmp_path / "seps.jsonl"
    feed.write_text(
        "".join(
            json.dumps(
                {
                    "title": f"Story {n} \u2028 title",
                    "text": f"Body {n}\u2028more words here.",
                    "url": u,
                },
                ensure_ascii=False,
            )
            + "\n"
            for n, u in enumerate(links)
        ),
        encoding="utf-8",
    )
    result = ingest([str(feed)], options=_opts(allow=False))
    assert len(result.items) == len(seps) and all(it.url == "" for it in result.items)
    out = tmp_path / "out.jsonl"
    write_jsonl(result.items, out)
    assert [r["title"] for r in read_articles(out)] == [it.title for it in result.items]


def test_daily_skips_an_article_without_text_and_still_publishes(
    tiny_instruct: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    stories = json.loads((FIXTURES / "stories.json").read_text(encoding="utf-8"))
    good = next(iter(stories.values())) if isinstance(stories, dict) else stories[0]
    text = good["text"] if isinstance(good, dict) else str(good)
    feed = tmp_path / "today.jsonl"
    rows = [
        {"id": "empty", "title": "Nothing here", "text": ""},
        {"id": "blank", "title": "Only spaces", "text": "   \n  "},
        {"id": "good", "title": "The bridge", "text": text},
    ]
    feed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "site"
    rc = main(
        [
            "daily",
            "--feed",
            str(feed),
            "--min-words",
            "0",
            "--no-dedup",
            "--strategy",
            "zero-shot",
            "--instruct-model",
            tiny_instruct,
            "--max-new-tokens",
            "24",
            "--out",
            str(out),
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "edition.json").read_text(encoding="utf-8"))
    assert (out / "index.html").exists()
    no_text = [s for s in data["skipped"] if "no text to riddle" in s]
    assert len(no_text) == 2, data["skipped"]  # both reported, like any failed article
    assert len(data["items"]) + len(data["skipped"]) == 3  # the good one riddled or reported
