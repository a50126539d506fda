"""News ingestion against a real loopback HTTP server: formats, faults, retries, limits, cleaning.

The server (tests/feed_server.py) serves the fixture feeds and pages under tests/fixtures/feeds and
misbehaves on purpose (404, 500, slow answers, redirects, broken XML, wrong encodings, HTML instead
of XML, gigantic entries). Every source gets a report; the good ones land regardless.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
from feed_server import FIXTURES, FeedServer

from llmapps.errors import ConfigError, InputError
from llmapps.ingest import (
    CleanOptions,
    FetchOptions,
    IngestOptions,
    NewsItem,
    clean_items,
    html_to_text,
    ingest,
    normalize_text,
    safe_http_url,
    scrub_pii,
)
from llmapps.ingest.clean import (
    jaccard,
    near_duplicate_groups,
    repeated_lines,
    strip_boilerplate,
    truncate_text,
)
from llmapps.ingest.feeds import FeedError, parse_feed

STORIES = json.loads((FIXTURES / "stories.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def server():
    srv = FeedServer().start()
    yield srv
    srv.stop()


def fast(**fetch: object) -> IngestOptions:
    """Options with short timeouts and back-off, so fault tests take fractions of a second."""
    base = {
        "timeout_s": 0.5,
        "retries": 1,
        "backoff_s": 0.01,
        "max_response_bytes": 2_000_000,
        "user_agent": "llmapps-test/1.0",
        "allow_private": True,  # the test server is on loopback
    }
    base.update(fetch)
    return IngestOptions(fetch=FetchOptions(**base))


def by_source(result, server):
    return {r.source.replace(server.base, ""): r for r in result.reports}


# ----------------------------------------------------------------------------- formats


def test_rss_atom_rdf_and_rss091_land_with_teasers_filled_from_pages(server):
    result = ingest(
        [server.url(p) for p in ("rss2.xml", "atom.xml", "rdf.xml", "rss091.xml")], options=fast()
    )
    reports = by_source(result, server)
    assert {k: r.status for k, r in reports.items()} == {
        "/rss2.xml": "partial",
        "/atom.xml": "ok",
        "/rdf.xml": "ok",
        "/rss091.xml": "ok",
    }
    assert "javascript:alert(document.cookie)" in reports["/rss2.xml"].warnings[0]
    titles = [it.title for it in result.items]
    for key in ("bridge", "comet", "mower", "cycling", "library", "frost", "bakery"):
        assert titles.count(STORIES[key]["title"]) == 1, key
    comet = next(it for it in result.items if it.title == STORIES["comet"]["title"])
    # The feed only had a one-line teaser: the rest came from the article page, minus its furniture.
    assert comet.full_text and "Minor Planet Center" in comet.text
    assert not re.search(
        r"Most read|Share this article|All rights reserved|trackVisitor", comet.text
    )
    bridge = next(it for it in result.items if it.title == STORIES["bridge"]["title"])
    assert "appeared first on" not in bridge.text and not bridge.full_text
    cycling = next(it for it in result.items if it.title == STORIES["cycling"]["title"])
    assert cycling.url == ""  # its javascript: link was dropped
    assert all(it.url == "" or it.url.startswith(server.base) for it in result.items)
    assert bridge.date and bridge.source == "Riverton Gazette"


def test_syndicated_article_appears_once_in_its_fullest_version(server):
    result = ingest([server.url("atom.xml"), server.url("rss2.xml")], options=fast())
    mowers = [it for it in result.items if "lawnmower" in it.text or "mowers" in it.title.lower()]
    assert len(mowers) == 1
    assert result.cleaning.near_duplicates == 1
    assert "near-duplicate" in " ".join(result.cleaning.dropped)
    # The near-duplicate took the place of the first one seen (atom is first), not the end.
    assert result.items.index(mowers[0]) == 1
    assert "Read more" not in mowers[0].text


# ----------------------------------------------------------------------------- faults

FAULTS = {
    "/broken.xml": r"not well-formed XML: mismatched tag \(line \d+",
    "/wrong_encoding.xml": r"wrong declared encoding: says iso-8859-1, but the bytes are UTF-8",
    "/empty.xml": r"empty response \(0 bytes\)",
    "/not_a_feed.html": r"not a feed: got an HTML page \(text/html",
    "/html-as-xml": r"not a feed: got an HTML page \(application/rss\+xml\)",
    "/status/404": r"^HTTP 404 Not Found$",
    "/status/500": r"^HTTP 500 Internal Server Error \(2 attempts\)$",
    "/slow?s=3": r"^timed out after 0\.5 s \(2 attempts\)$",
    "/redirect-loop": r"too many redirects \(more than 5\)",
    "/redirect-js": r"invalid or unsupported address after redirects",
    "/huge-body": r"over the 2000000-byte limit",
}


def test_every_faulty_source_is_reported_with_its_reason_and_the_good_one_still_lands(server):
    sources = [server.url(p) for p in FAULTS] + [
        server.url("rdf.xml"),
        str(FIXTURES / "missing.jsonl"),
    ]
    result = ingest(sources, options=fast())
    reports = by_source(result, server)
    for path, reason in FAULTS.items():
        r = reports[path]
        assert r.status == "failed" and r.landed == 0, path
        assert re.search(reason, r.error or ""), (path, r.error)
    assert reports[str(FIXTURES / "missing.jsonl")].error.startswith("no such file or directory")
    assert reports["/rdf.xml"].status == "ok" and reports["/rdf.xml"].landed == 1
    assert [it.title for it in result.items] == [STORIES["frost"]["title"]]
    assert len(result.failed) == len(FAULTS) + 1


def test_gigantic_entry_is_skipped_and_reported_while_its_neighbour_lands(server):
    result = ingest([server.url("huge-entry.xml")], options=fast())
    (report,) = result.reports
    assert report.status == "partial" and report.entries == 2 and report.landed == 1
    assert re.search(
        r"entry 2 \('The endless entry'\) has \d+ characters, over the 200000 limit: skipped",
        report.warnings[0],
    )
    assert [it.title for it in result.items] == [STORIES["library"]["title"]]


def test_lenient_mode_keeps_a_wrongly_declared_utf8_feed_decoded_right(server):
    result = ingest(
        [server.url("wrong_encoding.xml")], options=fast().model_copy(update={"lenient": True})
    )
    (report,) = result.reports
    assert report.status == "partial" and "read as UTF-8" in report.warnings[0]
    (item,) = result.items
    assert item.source == "Fenwick Crier — café edition"  # not mojibake


def test_redirects_are_followed_and_a_flaky_server_is_retried_with_our_user_agent(server):
    result = ingest(
        [server.url("redirect/rdf.xml"), server.url("flaky/rss091.xml")], options=fast()
    )
    assert [r.status for r in result.reports] == ["ok", "ok"]
    assert {it.title for it in result.items} == {
        STORIES["frost"]["title"],
        STORIES["bakery"]["title"],
    }
    flaky = [ua for path, ua in server.requests if path == "/flaky/rss091.xml"]
    assert flaky == ["llmapps-test/1.0", "llmapps-test/1.0"]  # a 500, then the retry that worked


def test_no_more_requests_in_flight_than_the_concurrency_limit(server):
    server.delay_s, server.max_in_flight = 0.15, 0
    try:
        ingest([server.url(f"rss091.xml?n={i}") for i in range(6)], options=fast(concurrency=2))
    finally:
        server.delay_s = 0.0
    assert server.max_in_flight == 2


def test_newsapi_compatible_api_with_key_from_env_and_page_text(server, monkeypatch):
    monkeypatch.setenv("NEWSAPI_KEY", "test-key")
    opts = fast().model_copy(update={"newsapi_base_url": server.url("newsapi")})
    result = ingest(newsapi_queries=["comet"], options=opts)
    (report,) = result.reports
    assert report.source == "newsapi:comet" and report.status == "ok"
    (item,) = result.items
    # NewsAPI's content is cut at 200 characters: the article page filled it in.
    assert item.full_text and "Minor Planet Center" in item.text and item.source == "Wire Service"

    monkeypatch.setenv("NEWSAPI_KEY", "wrong-key")
    failed = ingest(newsapi_queries=["comet"], options=opts)
    assert failed.reports[0].status == "failed"
    assert failed.reports[0].error == "HTTP 401 Unauthorized"
    assert "wrong-key" not in failed.model_dump_json()


def test_newsapi_without_a_key_is_reported_not_sent(monkeypatch):
    monkeypatch.delenv("NEWSAPI_KEY", raising=False)
    monkeypatch.delenv("LLMAPPS_INGEST__NEWSAPI_KEY", raising=False)
    result = ingest(newsapi_queries=["x"], options=fast())
    assert result.reports[0].error == "no API key: set NEWSAPI_KEY or LLMAPPS_INGEST__NEWSAPI_KEY"


@pytest.fixture
def local_folder(tmp_path: Path) -> Path:
    """The local-source fixtures (JSONL, CSV, text) with an HTML page beside them: the bakery
    page the feed server serves (one file, not a second copy of it)."""
    import shutil

    folder = shutil.copytree(FIXTURES / "local", tmp_path / "local")
    shutil.copy(FIXTURES / "pages" / "bakery.html", folder)
    return folder


def test_local_directory_of_jsonl_csv_text_and_html(local_folder: Path):
    result = ingest([str(local_folder)], options=fast())
    (report,) = result.reports
    assert report.status == "partial"
    assert any("articles.jsonl: line 3: not valid JSON" in w for w in report.warnings)
    titles = {it.title for it in result.items}
    assert titles == {
        STORIES[k]["title"] for k in ("bridge", "library", "frost", "cycling", "bakery")
    }
    library = next(it for it in result.items if it.title == STORIES["library"]["title"])
    assert library.url == ""  # javascript: link dropped
    bakery = next(it for it in result.items if it.title == STORIES["bakery"]["title"])
    assert "All rights reserved" not in bakery.text and "cooperative" in bakery.text


def test_local_feed_file_is_parsed_like_a_fetched_one():
    result = ingest([str(FIXTURES / "rdf.xml")], options=fast())
    assert [it.title for it in result.items] == [STORIES["frost"]["title"]]
    assert result.items[0].url == ""  # "__BASE__/..." is no http(s) URL: dropped


def test_defaults_come_from_settings_and_environment(monkeypatch):
    monkeypatch.setenv("LLMAPPS_INGEST__USER_AGENT", "my-bot/2.0")
    monkeypatch.setenv("LLMAPPS_INGEST__TIMEOUT_S", "3.5")
    monkeypatch.setenv("LLMAPPS_INGEST__NEWSAPI_BASE_URL", "http://127.0.0.1:9/news")
    opts = IngestOptions()
    assert (opts.fetch.user_agent, opts.fetch.timeout_s) == ("my-bot/2.0", 3.5)
    assert opts.newsapi_base_url == "http://127.0.0.1:9/news"
    monkeypatch.setenv("LLMAPPS_INGEST__CONCURRENCY", "0")
    with pytest.raises(ConfigError, match=r"ingest\.concurrency: Input should be greater"):
        IngestOptions()


def test_bad_source_lists_are_rejected_up_front():
    with pytest.raises(InputError, match="no sources given"):
        ingest([])
    with pytest.raises(InputError, match="only http\\(s\\) URLs or local paths"):
        ingest(["ftp://example.org/feed.xml"])


def test_parse_feed_rejects_and_describes():
    with pytest.raises(FeedError, match="not a feed: no RSS, RDF or Atom root"):
        parse_feed(b"<note><to>x</to></note>")
    with pytest.raises(FeedError, match="empty response"):
        parse_feed(b"  \n ")


# ----------------------------------------------------------------------------- cleaning


def test_html_to_text_drops_scripts_styles_and_comments():
    html = (
        "<p>Hello <b>world</b></p><script>alert(1)</script><style>p{}</style><!-- c -->"
        "<ul><li>one</li><li>two</li></ul>&amp; more"
    )
    text = normalize_text(html_to_text(html))
    assert text == "Hello world\n\none\n\ntwo\n\n& more"
    assert html_to_text("plain text, no tags") == "plain text, no tags"


def test_normalize_text_nfc_invisible_characters_and_spaces():
    decomposed = "Cafe\u0301\u200b  au\u00a0lait\r\n\r\n\r\n\x07next"
    out = normalize_text(decomposed)
    assert out == "Café au lait\n\nnext"
    assert unicodedata.is_normalized("NFC", out)


def test_boilerplate_lines_and_lines_repeated_across_a_source():
    text, removed = strip_boilerplate(
        "Story line.\nRead more\nSubscribe to our newsletter today\nEnd."
    )
    assert (text, removed) == ("Story line.\nEnd.", 2)
    texts = [f"Story {i} body.\nFrom the desk of the Gazette" for i in range(4)]
    assert repeated_lines(texts) == frozenset({"From the desk of the Gazette"})


def test_length_bounds_drop_short_and_cut_long_at_a_sentence():
    long = " ".join(f"Sentence number {i} is here." for i in range(200))
    cut = truncate_text(long, 300)
    assert len(cut) <= 300 and cut.endswith(".")
    items = [
        NewsItem(id="a", title="Short", text="too short"),
        NewsItem(id="b", title="Long", text=long),
    ]
    kept, stats = clean_items(items, CleanOptions(min_words=5, max_chars=300))
    assert [k.id for k in kept] == ["b"] and stats.too_short == 1 and stats.truncated == 1


def test_exact_and_near_duplicates():
    base = STORIES["bridge"]["text"]
    variant = base.replace("Tuesday night", "Tuesday evening").replace("4.2 million", "4.3 million")
    other = STORIES["frost"]["text"]
    assert jaccard(base, variant) > 0.7 > jaccard(base, other)
    assert near_duplicate_groups([base, other, variant]) == [[0, 2]]
    items = [
        NewsItem(id="1", title="A", text=base),
        NewsItem(id="2", title="B", text=base.upper()),
        NewsItem(id="3", title="C", text=variant),
        NewsItem(id="4", title="D", text=other),
    ]
    kept, stats = clean_items(items)
    # "evening" is longer than "night": the fuller version wins, in the place of the first one seen.
    assert [k.id for k in kept] == ["3", "4"]
    assert (stats.exact_duplicates, stats.near_duplicates) == (1, 1)
    kept, _ = clean_items(items, CleanOptions(dedup=False, near_dup_threshold=None))
    assert len(kept) == 4


def test_pii_scrubbing_replaces_contacts_but_not_figures():
    text = (
        "Write to jane.doe@example.org or call +44 20 7946 0958 or (555) 123-4567; "
        "card 4111 1111 1111 1111 "
        "from 192.168.1.20. Turnout was 21,000 in 1974 2006 and 2010, ref 1234 5678."
    )
    out, n = scrub_pii(text)
    assert n == 5
    for tag in ("[EMAIL]", "[PHONE]", "[CARD]", "[IP]"):
        assert tag in out
    assert "21,000 in 1974 2006 and 2010" in out and "1234 5678" in out
    kept, stats = clean_items(
        [NewsItem(id="1", title="t", text=text * 3)], CleanOptions(min_words=1, scrub_pii=True)
    )
    assert "@" not in kept[0].text and stats.pii_replacements == 15


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.org/a?b=1", True),
        ("HTTP://EXAMPLE.ORG", True),
        ("javascript:alert(1)", False),
        ("data:text/html,x", False),
        ("file:///etc/passwd", False),
        ("/relative/path", False),
        ("https://exa mple.org", False),
        ("https://example.org/\nx", False),
        ("http://", False),
        (None, False),
    ],
)
def test_only_absolute_http_urls_are_safe(url, ok):
    assert (safe_http_url(url) is not None) is ok


# ----------------------------------------------------------------------------- CLI


def test_news_fetch_cli_writes_jsonl_and_report_read_by_news_riddle(server, tmp_path, capsys):
    from chains.news_data import read_articles
    from llmapps.cli import main

    out = tmp_path / "today.jsonl"
    rc = main(
        [
            "news",
            "fetch",
            "--feed",
            server.url("rss2.xml"),
            "--feed",
            server.url("status/404"),
            "--feed",
            str(FIXTURES / "local" / "cycling.txt"),
            "--timeout",
            "1",
            "--retries",
            "0",
            "--allow-private-addresses",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = read_articles(out)  # the app's own reader accepts what ingestion wrote
    assert len(rows) == 4 and all(r["text"] for r in rows)
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert [s["status"] for s in report["sources"]] == ["partial", "failed", "ok"]
    assert report["sources"][1]["error"] == "HTTP 404 Not Found"
    assert report["cleaning"]["exact_duplicates"] == 1  # cycling is in the feed and the text file
    err = capsys.readouterr().err
    assert "HTTP 404 Not Found" in err and "4 articles" in err


def test_news_fetch_cli_without_sources_is_a_config_error(capsys):
    from llmapps.cli import main

    assert main(["news", "fetch", "--out", "x.jsonl"]) == 2
    assert "no sources: give --feed" in capsys.readouterr().err


def test_fetcher_refuses_non_http_urls():
    import asyncio

    from llmapps.ingest import Fetcher, FetchError

    async def go() -> None:
        async with Fetcher(FetchOptions()) as f:
            await f.get("file:///etc/passwd")

    with pytest.raises(FetchError, match="not an http\\(s\\) URL"):
        asyncio.run(go())


def test_fixture_pages_exist():
    assert sorted(p.stem for p in (FIXTURES / "pages").glob("*.html")) == sorted(
        ["bakery", "bridge", "comet", "frost", "library", "mower"]
    )
    assert Path(FIXTURES / "stories.json").exists()
