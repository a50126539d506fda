"""A real HTTP server on 127.0.0.1 for the ingestion and daily tests, with faults on demand.

Serves ``tests/fixtures/feeds`` (``__BASE__`` in a file is replaced by the server's own address)
and these routes that misbehave on purpose:

- ``/status/<code>``: that status, with a short body;
- ``/slow?s=SECONDS``: waits before answering (beyond a client's timeout);
- ``/flaky/<name>``: 500 on the first request for each name, then the fixture file ``name``;
- ``/redirect/<name>`` (302 to the fixture), ``/redirect-loop``,
  ``/redirect-js`` (to ``javascript:``);
- ``/huge-entry.xml``: a feed with one normal entry and one of ``HUGE_CHARS`` characters;
- ``/huge-body``: a body larger than any test's response limit;
- ``/html-as-xml``: an HTML page served as ``application/rss+xml``;
- ``/newsapi/v2/everything``: a NewsAPI-compatible search (key ``test-key`` required).

The server records every request (path, User-Agent) and, while ``delay_s`` is set, the most
fixture requests in flight at once.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "feeds"
HUGE_CHARS = 1_200_000
TYPES = {
    ".xml": "application/rss+xml; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
}


class FeedServer(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping in /slow must not block shutdown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.flaky_seen: set[str] = set()
        self.lock = threading.Lock()
        self.delay_s = 0.0  # added to every fixture response (to observe concurrency)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def start(self) -> FeedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def url(self, path: str) -> str:
        return self.base + "/" + path.lstrip("/")


class _Handler(BaseHTTPRequestHandler):
    server: FeedServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def _send(
        self,
        code: int,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        # The client may have given up (timeout): fine.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def _fixture(self, name: str) -> tuple[bytes, str] | None:
        path = (FIXTURES / name).resolve()
        if FIXTURES not in path.parents or not path.is_file():
            return None
        body = path.read_bytes().replace(b"__BASE__", self.server.base.encode())
        ctype = TYPES.get(path.suffix, "application/octet-stream")
        if name == "wrong_encoding.xml":
            ctype = "application/rss+xml"  # let the XML declaration speak (wrongly)
        return body, ctype

    def do_GET(self) -> None:
        s = self.server
        with s.lock:
            s.requests.append((self.path, self.headers.get("User-Agent", "")))
        self._route()

    def _route(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            return self._send(code, f"status {code}".encode())
        if path == "/slow":
            time.sleep(float(query.get("s", ["3"])[0]))
            return self._send(
                200,
                b"<rss version='2.0'><channel><title>slow</title></channel></rss>",
                TYPES[".xml"],
            )
        if path.startswith("/flaky/"):
            name = path[len("/flaky/") :]
            with self.server.lock:
                first = name not in self.server.flaky_seen
                self.server.flaky_seen.add(name)
            if first:
                return self._send(500, b"try again")
            path = "/" + name
        if path.startswith("/redirect/"):
            return self._send(302, b"", headers={"Location": "/" + path[len("/redirect/") :]})
        if path == "/redirect-loop":
            return self._send(302, b"", headers={"Location": "/redirect-loop"})
        if path == "/redirect-js":
            return self._send(302, b"", headers={"Location": "javascript:alert(1)"})
        if path == "/huge-entry.xml":
            return self._send(200, _huge_entry_feed(self.server.base), TYPES[".xml"])
        if path == "/huge-body":
            return self._send(200, b"<rss>" + b"x" * 3_000_000 + b"</rss>", TYPES[".xml"])
        if path == "/html-as-xml":
            body = (FIXTURES / "not_a_feed.html").read_bytes()
            return self._send(200, body, "application/rss+xml")
        if path == "/newsapi/v2/everything":
            return self._newsapi(query)
        found = self._fixture(path.lstrip("/"))
        if found is None:
            return self._send(404, b"not found")
        if self.server.delay_s:
            # Only delayed fixture requests count as "in flight", so handlers of other tests still
            # sleeping in /slow do not muddle the concurrency measurement.
            s = self.server
            with s.lock:
                s.in_flight += 1
                s.max_in_flight = max(s.max_in_flight, s.in_flight)
            time.sleep(s.delay_s)
            with s.lock:
                s.in_flight -= 1
        return self._send(200, *found)

    def _newsapi(self, query: dict[str, list[str]]) -> None:
        if self.headers.get("X-Api-Key") != "test-key":
            body = {
                "status": "error",
                "code": "apiKeyInvalid",
                "message": "Your API key is invalid or incorrect.",
            }
            return self._send(401, json.dumps(body).encode(), "application/json")
        stories = json.loads((FIXTURES / "stories.json").read_text(encoding="utf-8"))
        q = query.get("q", [""])[0].lower()
        articles = []
        for key in ("mower", "comet"):
            s = stories[key]
            if q and q not in s["text"].lower() and q not in s["title"].lower():
                continue
            articles.append(
                {
                    "source": {"id": None, "name": "Wire Service"},
                    "author": "Staff",
                    "title": s["title"],
                    "description": s["text"].split("\n")[0][:120],
                    "url": f"{self.server.base}/pages/{key}.html",
                    "urlToImage": None,
                    "publishedAt": "2026-11-18T06:00:00Z",
                    "content": s["text"][:200] + f"… [+{len(s['text']) - 200} chars]",
                }
            )
        body = {"status": "ok", "totalResults": len(articles), "articles": articles}
        return self._send(200, json.dumps(body).encode(), "application/json")


def _huge_entry_feed(base: str) -> bytes:
    stories = json.loads((FIXTURES / "stories.json").read_text(encoding="utf-8"))
    s = stories["library"]
    huge = "word " * (HUGE_CHARS // 5)
    return f"""<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Huge</title>
<item><title>{s["title"]}</title><link>{base}/pages/library.html</link><description>{s["text"]}</description></item>
<item><title>The endless entry</title><link>{base}/pages/endless.html</link>
<description>{huge}</description></item>
</channel></rss>""".encode()
