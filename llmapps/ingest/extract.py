"""Main-text extraction from article pages with trafilatura (a maintained extractor, no regexes)."""

from __future__ import annotations

import logging

from llmapps.ingest.clean import html_to_text, normalize_text

log = logging.getLogger(__name__)


def extract_page(html: str | bytes, url: str | None = None) -> tuple[str, str]:
    """The (title, main text) of an article page; ``("", "")`` when nothing article-like is found.

    trafilatura drops navigation, comments, share bars and footers; the title falls back to the
    page's ``<title>``.
    """
    import trafilatura

    if isinstance(html, bytes):
        html = html.decode("utf-8", errors="replace")
    try:
        doc = trafilatura.bare_extraction(
            html,
            url=url,
            include_comments=False,
            include_tables=False,
            favor_precision=True,
            with_metadata=True,
        )
    except Exception as err:  # trafilatura raises assorted lxml errors on hostile pages
        log.info("trafilatura failed on %s: %s", url or "page", err)
        return "", ""
    if doc is None:
        return "", ""
    text = getattr(doc, "text", None) or ""
    title = getattr(doc, "title", None) or ""
    title, text = normalize_text(html_to_text(title)), normalize_text(text)
    head, _, rest = text.partition("\n")
    if title and head.strip() == title:  # the page's <h1> repeats the headline
        text = rest.strip()
    return title, text
