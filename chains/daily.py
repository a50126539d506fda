"""The daily riddle edition: fetch -> clean -> riddle -> a static HTML page, Markdown and JSON.

::

    llmapps daily --feed https://example.org/rss.xml --out site/        # few-shot on Gemma 3 270M

or in Python::

    from chains.daily import make_edition, write_edition
    edition = make_edition(articles, strategy="few-shot")
    write_edition(edition, Path("site"))

The page needs no JavaScript: each answer sits in a ``<details>`` element that opens on a click.
Everything that came from a feed or from the model is escaped (Jinja2 autoescape), links are kept
only when they are http(s), a Content-Security-Policy allows no script at all, and a visible label
says the riddles are AI-generated. Article text reaches the model only through the news-riddle
prompt, which wraps it in ``<article>`` delimiters as data.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import logging
import re
import sys
from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from llmapps.errors import ConfigError, InputError
from llmapps.files import writing
from llmapps.ingest.models import NewsItem, SourceReport, safe_http_url
from llmapps.jsonl import atomic_write

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
APP = "news-riddle"


class EditionItem(BaseModel):
    """One riddle of the edition, with its article's title, source and link."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    riddle: str
    answer: str = ""
    summary: str = ""
    source: str = ""
    url: str = Field("", description="http(s) only; anything else is dropped before it gets here")
    date: str = ""
    valid: bool = True
    errors: list[str] = Field(default_factory=list)

    @property
    def url_host(self) -> str:
        return urlsplit(self.url).hostname or "" if self.url else ""


class Edition(BaseModel):
    """A day's riddles plus what produced them (strategy, sources, skipped articles)."""

    model_config = ConfigDict(extra="forbid")

    title: str = "The Daily Riddle"
    date: str
    generated_at: str
    strategy: str
    language: str = "en"
    ai_generated: bool = Field(True, description="always true: the riddles come from a model")
    items: list[EditionItem] = Field(default_factory=list)
    skipped: list[str] = Field(
        default_factory=list, description="'<title>: <why>' per article not published"
    )
    skipped_counts: dict[str, int] = Field(
        default_factory=dict, description="why articles were not published -> how many"
    )
    articles: int = Field(0, description="articles considered for this edition")

    def skipped_line(self) -> str:
        """``5 articles: 3 published, 2 skipped (2 not valid riddles)``, for the page's top."""
        n = len(self.items)
        line = f"{self.articles} article{'' if self.articles == 1 else 's'}: {n} published"
        if self.skipped_counts:
            why = ", ".join(f"{v} {k}" for k, v in self.skipped_counts.items())
            line += f", {sum(self.skipped_counts.values())} skipped ({why})"
        invalid = sum(1 for i in self.items if not i.valid)
        if invalid:
            line += f"; {invalid} shown although not valid (marked)"
        return line

    sources: list[SourceReport] = Field(default_factory=list)


def _as_article(a: NewsItem | dict[str, Any]) -> dict[str, Any]:
    """The article as a row for the chain; ``InputError`` if it has no text to riddle."""
    from chains.news_riddle import defuse_delimiters  # lazy: `llmapps --help` loads this module

    row = a.model_dump() if isinstance(a, NewsItem) else dict(a)
    if not str(row.get("text") or "").strip():
        raise InputError("the article has no text to riddle")
    for key in ("title", "text"):
        row[key] = defuse_delimiters(str(row.get(key) or ""))
    return row


def _label(a: NewsItem | dict[str, Any]) -> str:
    row = a.model_dump() if isinstance(a, NewsItem) else dict(a)
    return str(row.get("title") or row.get("id") or "(untitled)")


SKIP_NO_TEXT = "without text"
SKIP_FAILED = "the model failed"
SKIP_NO_RIDDLE = "no riddle"
SKIP_INVALID = "not valid riddles"
SKIP_PRIVATE = "withheld: personal data or copied text from the article"


def privacy_findings(article: dict[str, Any], out: dict[str, Any]) -> list[str]:
    """Why an output may not be published: personal data of the article carried into the
    riddle, answer or summary, or the riddle copying a long span of it
    (``llmapps.audit.privacy``)."""
    from llmapps.audit.privacy import check_output

    source = "\n".join(str(article.get(k) or "") for k in ("title", "text"))
    fields = {k: out.get(k) for k in ("riddle", "answer", "summary")}
    found = check_output(source, fields)
    return [str(f) for f in found if f.kind != "copy" or f.field == "riddle"]


def make_edition(
    articles: Sequence[NewsItem | dict[str, Any]],
    strategy: Any = "few-shot",
    *,
    include_invalid: bool = False,
    max_riddles: int = 10,
    title: str = "The Daily Riddle",
    date: str | None = None,
    app_options: dict[str, Any] | None = None,
    sources: Sequence[SourceReport] = (),
    batch_size: int = 4,
    **strategy_options: Any,
) -> Edition:
    """Riddle up to ``max_riddles`` articles with ``strategy`` and gather them into an ``Edition``.

    Args:
        articles: ``NewsItem`` objects or dicts with ``title`` and ``text`` (and ``url``,
            ``source``, ``date``).
        strategy: a registered strategy name or a ``Strategy`` instance.
        include_invalid: publish riddles the app marked not valid too (marked on the page);
            by default they are skipped and counted. Riddles that carry the article's personal
            data are withheld either way.
        max_riddles: the first this many articles are riddled.
        title: the edition's headline.
        date: ISO date of the edition (default: today, UTC).
        app_options: news-riddle options, e.g. ``{"variant": "two-step"}``.
        sources: per-source ingestion reports, kept in the JSON edition.
        batch_size: articles per model batch.
        **strategy_options: the strategy's config fields (e.g. ``instruct_model=...``).
    """
    from llmapps.apps import load_chain

    if max_riddles < 1:
        raise ConfigError(f"max_riddles must be at least 1, got {max_riddles}")
    rows, unusable = [], []

    def skip(label: str, why: str, kind: str) -> None:
        edition.skipped.append(f"{label}: {why}")
        edition.skipped_counts[kind] = edition.skipped_counts.get(kind, 0) + 1

    picked = list(articles)[:max_riddles]
    for a in picked:  # one bad article is skipped, never the edition
        try:
            rows.append(_as_article(a))
        except InputError as err:
            unusable.append((_label(a), str(err)))
    name = (
        strategy
        if isinstance(strategy, str)
        else getattr(strategy, "name", type(strategy).__name__)
    )
    now = dt.datetime.now(dt.timezone.utc)
    edition = Edition(
        title=title,
        date=date or now.date().isoformat(),
        strategy=name,
        generated_at=now.strftime("%Y-%m-%d %H:%M UTC"),
        sources=list(sources),
        articles=len(picked),
    )
    for label, why in unusable:
        skip(label, why, SKIP_NO_TEXT)
    if not rows:
        return edition
    chain = load_chain(APP, strategy, app_options=app_options, **strategy_options)
    inputs = [{"id": r.get("id", ""), "title": r.get("title", ""), "text": r["text"]} for r in rows]
    outputs = chain.batch(inputs, config={"max_concurrency": batch_size}, return_exceptions=True)
    for row, out in zip(rows, outputs, strict=True):
        label = row.get("title") or row.get("id") or "(untitled)"
        if isinstance(out, Exception):
            log.debug("%s: the model failed: %s", label, out)
            skip(label, f"the model failed: {' '.join(str(out).split())[:300]}", SKIP_FAILED)
            continue
        riddle = str(out.get("riddle") or "").strip()
        if not riddle:
            skip(
                label,
                f"the model gave no riddle ({'; '.join(out.get('errors', []))})",
                SKIP_NO_RIDDLE,
            )
            continue
        if not out.get("valid") and not include_invalid:
            skip(label, f"not a valid riddle ({'; '.join(out.get('errors') or [])})", SKIP_INVALID)
            continue
        private = privacy_findings(row, out)
        if private:
            skip(label, "; ".join(private), SKIP_PRIVATE)
            continue
        edition.items.append(
            EditionItem(
                id=str(row.get("id") or ""),
                title=str(row.get("title") or ""),
                riddle=riddle,
                answer=str(out.get("answer") or "").strip(),
                summary=str(out.get("summary") or "").strip(),
                source=str(row.get("source") or ""),
                url=safe_http_url(row.get("url")) or "",
                date=str(row.get("date") or "")[:40],
                valid=bool(out.get("valid")),
                errors=list(out.get("errors") or []),
            )
        )
    return edition


# ----------------------------------------------------------------------------- rendering

_MD_INLINE = re.compile(r"([\\`*_{}\[\]()#|~!])")
_MD_LINE_START = re.compile(r"^(\s*)([-+]|\d+[.)])(?=\s|$)")


def md_escape(value: object) -> str:
    """Text made inert for Markdown: HTML characters as entities, Markdown syntax escaped."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_INLINE.sub(r"\\\1", text)
    # A leading "-", "+" or "1." would turn the line into a list item.
    return _MD_LINE_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], text)


def md_url(value: object) -> str:
    """An http(s) URL for a Markdown ``<...>`` link, with characters that could end it encoded."""
    url = safe_http_url(value) or ""
    return quote(url, safe=":/?#[]@!$&'*+,;=%-._~")


@lru_cache(maxsize=1)
def _env() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=True
        ),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_escape
    env.filters["mdurl"] = md_url
    return env


def _css() -> tuple[str, str]:
    css = (TEMPLATES / "daily.css").read_text(encoding="utf-8")
    if "</" in css:  # our own file, marked safe in the template: keep it unable to end <style>
        raise ConfigError(f"{TEMPLATES / 'daily.css'} must not contain '</'")
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode()
    return css, f"sha256-{digest}"


def render_html(edition: Edition) -> str:
    """The edition as one self-contained HTML page (inline CSS, no scripts)."""
    css, css_hash = _css()
    return str(
        _env().get_template("daily.html.j2").render(edition=edition, css=css, css_hash=css_hash)
    )


def render_markdown(edition: Edition) -> str:
    """The edition as Markdown (answers in ``<details>``, untrusted text escaped)."""
    return str(_env().get_template("daily.md.j2").render(edition=edition))


EDITION_FILES = {"html": "index.html", "markdown": "edition.md", "json": "edition.json"}


def write_edition(edition: Edition, out_dir: Path) -> dict[str, Path]:
    """Write ``index.html``, ``edition.md`` and ``edition.json`` in ``out_dir``; return paths."""
    paths = {kind: out_dir / name for kind, name in EDITION_FILES.items()}
    # each file replaced whole (a temp file and a rename): a reader never sees half a page
    atomic_write(paths["html"], render_html(edition))
    atomic_write(paths["markdown"], render_markdown(edition))
    atomic_write(
        paths["json"],
        json.dumps(edition.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n",
    )
    return paths


# ----------------------------------------------------------------------------- CLI


def cmd_daily(args: argparse.Namespace, flags: Any) -> int:
    # the folder's lock for the whole run, and no edition file may be one of the local feeds
    with writing(args.out, args.feed, kind="folder", writes=EDITION_FILES.values()):
        return _daily(args, flags)


def _daily(args: argparse.Namespace, flags: Any) -> int:
    result = flags.run_ingest(args, quiet=args.quiet)
    if not result.items:
        raise InputError("no article landed from any source; see the per-source table above")
    from llmapps.compose import strategy_options as composed_options

    # the strategy as the bench, the demo and the web app build it: lora's demo adapter,
    # service's local server, unless the flags say otherwise
    given = flags.strategy_options(args.strategy, args)
    settings = getattr(args, "settings", None)  # --tiny
    with composed_options(args.strategy, settings, overrides=given) as (options, reason):
        if options is None or reason is not None:  # no defaults: the flags must build it
            from llmapps.api.strategies import make_strategy
            from llmapps.errors import LlmappsError

            try:
                make_strategy(args.strategy, settings=settings, **(options or {}))
            except LlmappsError as err:
                raise ConfigError(f"--strategy {args.strategy}: {reason or err}") from err
        edition = make_edition(
            result.items,
            args.strategy,
            max_riddles=args.max_riddles,
            include_invalid=args.include_invalid,
            title=args.title,
            date=args.date,
            app_options=flags.app_options(args),
            sources=result.reports,
            batch_size=args.batch_size or 4,
            **(options or {}),
        )
    paths = write_edition(edition, Path(args.out))
    print(
        f"{edition.skipped_line()} -> {paths['html']}, "
        f"{paths['markdown'].name}, {paths['json'].name}",
        file=sys.stderr,
    )
    return 0


def register_cli(subparsers: Any, flags: Any) -> None:
    """Add ``daily`` to the ``llmapps`` command line (entry point ``chains.daily:register_cli``;
    ``flags`` is the command line's shared flags module, handed over by it)."""
    p = subparsers.add_parser(
        "daily", help="fetch news and publish the day's riddles as HTML, Markdown and JSON"
    )
    flags.add_source_flags(p)
    flags.add_strategy_flags(p)
    # few-shot: on the default models it is the strategy that writes riddles (Gemma 3 270M with
    # worked examples parsed 3 of 4 validation articles; SmolLM2-135M zero-shot 1 of 19)
    p.set_defaults(strategy="few-shot")
    p.add_argument(
        "--out", "-o", required=True, help="folder for index.html, edition.md and edition.json"
    )
    p.add_argument(
        "--max-riddles", type=int, default=10, help="riddle at most this many articles (default 10)"
    )
    p.add_argument("--title", default="The Daily Riddle", help="the page's headline")
    p.add_argument(
        "--include-invalid",
        action="store_true",
        help="publish riddles that failed the app's checks too, marked as such (default: skip "
        "and count them)",
    )
    p.add_argument("--date", default=None, help="edition date, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-source table")
    p.set_defaults(func=partial(cmd_daily, flags=flags))
