"""Read documents to index: JSONL, CSV, text, Markdown and HTML files, or a folder of them.

Files are read through LlamaIndex's ``SimpleDirectoryReader`` (folder walking, hidden files,
encodings) with our readers plugged in for JSONL, CSV and HTML (text extracted with trafilatura);
documents longer than the embedding model's window are cut with LlamaIndex's ``SentenceSplitter``,
counting tokens with the embedding model's own tokenizer. The result is LangChain ``Document``s
whose ``id`` is stable (the row's ``id``, or the file path, plus ``#n`` for the n-th chunk) and
whose metadata carries ``doc_id``, ``title`` and ``file`` for citations.

Rows: JSONL objects and CSV rows need a ``text`` (or ``content``/``body``) field; ``id`` and
``title`` are used when present and other scalar fields are kept as metadata. Empty documents are
skipped with a warning naming them.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

from llmapps.errors import InputError, format_problems

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".csv", ".txt", ".md", ".html", ".htm")
TEXT_KEYS = ("text", "content", "body", "page_content")


def _content_id(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()[:12]


def _row_to_meta(row: dict[str, Any], source: str, where: str) -> dict[str, Any]:
    text_key = next((k for k in TEXT_KEYS if k in row), None)
    if text_key is None:
        raise InputError(f"{where}: no text field (expected one of {', '.join(TEXT_KEYS)})")
    text = str(row.get(text_key) or "")
    title = str(row.get("title") or "").strip()
    ident = str(row.get("id") or "").strip() or _content_id(title, text)
    meta = {
        k: v
        for k, v in row.items()
        if k not in (text_key, "id") and isinstance(v, (str, int, float, bool))
    }
    meta.update(doc_id=ident, title=title, file=source, _text=text, _where=where)
    return meta


def _llama_readers() -> dict[str, Any]:
    from llama_index.core import Document as LlamaDocument
    from llama_index.core.readers.base import BaseReader

    class JsonlReader(BaseReader):
        """One document per JSON line."""

        def load_data(
            self, file: Path, extra_info: dict | None = None, **_: Any
        ) -> list[LlamaDocument]:
            from llmapps.jsonl import parse_jsonl

            docs: list[LlamaDocument] = []
            parsed, problems = parse_jsonl(
                Path(file).read_bytes(), str(file)
            )  # bad UTF-8: one line
            for lineno, row in parsed:
                try:
                    meta = _row_to_meta(row, str(file), f"{file}:{lineno}")
                except InputError as err:
                    problems.append(str(err))
                    continue
                docs.append(
                    LlamaDocument(text=meta.pop("_text"), metadata={**(extra_info or {}), **meta})
                )
            if problems:
                raise InputError(
                    format_problems(f"{len(problems)} bad row(s) in {file}:", problems[:50])
                )
            return docs

    class CsvReader(BaseReader):
        """One document per CSV row (header row required)."""

        def load_data(
            self, file: Path, extra_info: dict | None = None, **_: Any
        ) -> list[LlamaDocument]:
            with Path(file).open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
            docs: list[LlamaDocument] = []
            for n, row in enumerate(rows, start=2):
                meta = _row_to_meta(dict(row), str(file), f"{file}:{n}")
                docs.append(
                    LlamaDocument(text=meta.pop("_text"), metadata={**(extra_info or {}), **meta})
                )
            return docs

    class HtmlReader(BaseReader):
        """The main text of an HTML page (trafilatura), titled by its <title>."""

        def load_data(
            self, file: Path, extra_info: dict | None = None, **_: Any
        ) -> list[LlamaDocument]:
            import trafilatura

            html = Path(file).read_text(encoding="utf-8", errors="replace")
            text = trafilatura.extract(html, include_comments=False) or ""
            meta = trafilatura.extract_metadata(html)
            title = (meta.title if meta is not None and meta.title else "") or Path(file).stem
            return [
                LlamaDocument(
                    text=text, metadata={**(extra_info or {}), "title": title, "_from_html": True}
                )
            ]

    html = HtmlReader()
    return {".jsonl": JsonlReader(), ".csv": CsvReader(), ".html": html, ".htm": html}


def read_files(path: Path | str) -> list[Document]:
    """Whole documents (not chunked) from a file or a folder of supported files."""
    from llama_index.core import SimpleDirectoryReader

    root = Path(path)
    if not root.exists():
        raise InputError(
            f"{root} does not exist; pass a file ({', '.join(SUFFIXES)}) or a folder of them"
        )
    if root.is_file() and root.suffix.lower() not in SUFFIXES:
        raise InputError(
            f"{root}: unsupported file type {root.suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    kwargs: dict[str, Any] = (
        {"input_files": [root]}
        if root.is_file()
        else {"input_dir": root, "recursive": True, "required_exts": list(SUFFIXES)}
    )
    # Without llama-index-readers-file it warns on every call; our readers cover what we accept.
    reader_log = logging.getLogger("llama_index.core.readers.file.base")
    level = reader_log.level
    reader_log.setLevel(logging.ERROR)
    try:
        reader = SimpleDirectoryReader(
            **kwargs, file_extractor=_llama_readers(), raise_on_error=True
        )
        llama_docs = reader.load_data(show_progress=False)
    except InputError:
        raise
    except ValueError as err:  # e.g. a folder without supported files
        raise InputError(f"{root}: {err}; supported files: {', '.join(SUFFIXES)}") from err
    except Exception as err:
        cause = err.__cause__
        if isinstance(cause, InputError):
            raise cause from None
        raise InputError(f"cannot read {root}: {cause or err}") from err
    finally:
        reader_log.setLevel(level)
    base = root if root.is_dir() else root.parent
    out = []
    for ld in llama_docs:
        meta = dict(ld.metadata)
        text = ld.text
        file_path = Path(meta.get("file_path", root))
        try:
            rel = str(file_path.resolve().relative_to(base.resolve()))
        except ValueError:
            rel = file_path.name
        if "doc_id" not in meta:  # a whole text/Markdown/HTML file
            title = str(meta.pop("title", "") or "")
            if not meta.pop("_from_html", False):
                lines = text.strip().splitlines()
                if lines and not title:
                    title = lines[0].strip().lstrip("#").strip()
                    text = "\n".join(lines[1:]).strip() or text
            meta.update(doc_id=rel, title=title or file_path.stem, file=rel)
        meta.pop("_where", None)
        meta.pop("_from_html", None)
        keep = {k: v for k, v in meta.items() if k not in _LLAMA_FILE_KEYS}
        out.append(Document(page_content=text, metadata=keep, id=str(meta["doc_id"])))
    return out


_LLAMA_FILE_KEYS = {
    "file_path",
    "file_name",
    "file_type",
    "file_size",
    "creation_date",
    "last_modified_date",
    "last_accessed_date",
}


def chunk_documents(
    docs: list[Document],
    token_ids: Callable[[str], list[int]],
    *,
    chunk_tokens: int = 200,
    chunk_overlap: int = 24,
) -> list[Document]:
    """Split documents longer than ``chunk_tokens`` with LlamaIndex's ``SentenceSplitter``.

    Each chunk's text starts with its document's title, so a chunk retrieved alone still says
    what it is about; ids are ``<doc_id>#<n>`` for documents cut into several chunks.
    """
    splitter = None
    out: list[Document] = []
    empty: list[str] = []
    for doc in docs:
        text = doc.page_content.strip()
        if not text:
            empty.append(str(doc.id))
            continue
        title = str(doc.metadata.get("title") or "")
        head = f"{title}\n" if title and not text.startswith(title) else ""
        if len(token_ids(text)) <= chunk_tokens:
            out.append(
                Document(page_content=head + text, metadata={**doc.metadata, "chunk": 0}, id=doc.id)
            )
            continue
        if splitter is None:
            from llama_index.core.node_parser import SentenceSplitter

            splitter = SentenceSplitter(
                chunk_size=chunk_tokens,
                chunk_overlap=min(chunk_overlap, chunk_tokens // 2),
                tokenizer=token_ids,
            )
        for n, piece in enumerate(splitter.split_text(text)):
            out.append(
                Document(
                    page_content=head + piece,
                    metadata={**doc.metadata, "chunk": n},
                    id=f"{doc.id}#{n}",
                )
            )
    if empty:
        log.warning("skipped %d empty document(s): %s", len(empty), ", ".join(empty[:20]))
    return out


def load_documents(
    path: Path | str,
    *,
    embedding_model: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
) -> list[Document]:
    """Read ``path`` (file or folder) and chunk it for ``embedding_model`` (default: settings')."""
    from llmapps.retrieval.embeddings import canonical_model_id, token_ids_fn
    from llmapps.settings import get_settings

    r = get_settings().retrieval
    docs = read_files(path)
    if not docs:
        raise InputError(f"{path} holds no documents; supported files: {', '.join(SUFFIXES)}")
    model = canonical_model_id(embedding_model or r.embedding_model)
    return chunk_documents(
        docs,
        token_ids_fn(model),
        chunk_tokens=chunk_tokens or r.chunk_tokens,
        chunk_overlap=r.chunk_overlap if chunk_overlap is None else chunk_overlap,
    )
