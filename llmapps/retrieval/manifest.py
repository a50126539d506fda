"""An index folder's ``manifest.json``: its strict model, reading it, and the folder rules.

``IndexManifest`` is what ``VectorIndex.load`` believes about a folder (types, ranges, one index
and one docstore file named ``index-N.faiss`` / ``docstore-N.jsonl``, which keeps every path
inside the folder, and the manifest's own SHA-256); ``read_index_manifest`` reads and checks it
(``llmapps.jsonl.read_manifest_json``); ``confined`` refuses a listed file that is a link or lies
outside the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmapps.errors import RetrievalError
from llmapps.jsonl import read_manifest_json

FORMAT_VERSION = 2  # 2: the manifest carries its own checksum; 1 is still read
IndexKind = Literal["flat", "hnsw", "ivf"]


def build_hint(path: Path | str) -> str:
    """What to run to build an index at ``path`` (the end of every "no index here" error)."""
    return f"build one with: llmapps index build --input FILE_OR_FOLDER --out {path}"


_Name = Field(pattern=r"^(index-[0-9]{1,12}\.faiss|docstore-[0-9]{1,12}\.jsonl)$")
_Digest = Field(pattern=r"^[0-9a-f]{64}$")


class IndexParamsModel(BaseModel):
    """The index parameters as the manifest stores them (``IndexParams``, validated)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: IndexKind = "flat"
    hnsw_m: int = Field(32, ge=2, le=4096)
    hnsw_ef_construction: int = Field(80, ge=1, le=1 << 20)
    hnsw_ef_search: int = Field(64, ge=1, le=1 << 20)
    ivf_nlist: int | None = Field(None, ge=1, le=1 << 24)
    ivf_nprobe: int | None = Field(None, ge=1, le=1 << 24)


class DocRow(BaseModel):
    """One docstore line, validated."""

    model_config = ConfigDict(extra="forbid", strict=True)

    label: int = Field(ge=0, le=2**62)
    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    hash: str = ""


class IndexManifest(BaseModel):
    """``manifest.json``, validated strictly: what ``VectorIndex.load`` believes about a folder."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format_version: Literal[1, 2]
    embedding_model: str = Field(min_length=1, max_length=1000)
    dimension: int = Field(ge=1, le=1 << 16)
    normalized: bool = True
    metric: Literal["inner_product"] = "inner_product"
    count: int = Field(ge=0, le=2**40)
    next_label: int | None = Field(None, ge=0, le=2**62)
    index: IndexParamsModel
    generation: int = Field(0, ge=0, le=2**40)
    files: dict[Annotated[str, _Name], Annotated[str, _Digest]]
    updated: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    checksum: Annotated[str, _Digest] | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> IndexManifest:
        kinds = sorted(n.rsplit(".", 1)[1] for n in self.files)
        if kinds != ["faiss", "jsonl"]:
            raise ValueError("files must name exactly one index-N.faiss and one docstore-N.jsonl")
        if self.format_version >= 2 and self.checksum is None:
            raise ValueError("a format 2 manifest carries its checksum")
        return self

    @property
    def index_file(self) -> str:
        return next(n for n in self.files if n.endswith(".faiss"))

    @property
    def docstore_file(self) -> str:
        return next(n for n in self.files if n.endswith(".jsonl"))


def confined(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it is a plain file directly inside ``folder``."""
    f = folder / name
    hint = "rebuild: " + build_hint(folder)
    if not f.exists():
        raise RetrievalError(f"{f} is missing (listed in the manifest); {hint}")
    if f.is_symlink() or not f.is_file() or f.resolve().parent != folder.resolve():
        raise RetrievalError(f"{f} is not a plain file inside {folder} (a link or folder); {hint}")
    return f


def generation_on_disk(folder: Path) -> int:
    """The generation of the index saved in ``folder`` (0: none; a damaged manifest counts too)."""
    f = folder / "manifest.json"
    if not f.exists():
        return 0
    try:
        return read_index_manifest(folder).generation
    except RetrievalError:
        gens = [
            int(p.stem.split("-")[1])
            for p in folder.glob("index-*.faiss")
            if p.stem.split("-")[1].isdigit()
        ]
        return max(gens, default=0)


def read_index_manifest(folder: Path) -> IndexManifest:
    """The checked manifest of the index in ``folder`` (``RetrievalError`` naming what to do)."""
    f = folder / "manifest.json"
    hint = "rebuild: " + build_hint(folder)
    if not folder.exists():
        raise RetrievalError(f"no index at {folder}; " + build_hint(folder))
    if not f.is_file():
        raise RetrievalError(
            f"{folder} holds no manifest.json, so it is not an llmapps index; " + build_hint(folder)
        )
    return read_manifest_json(f, IndexManifest, error=RetrievalError, hint=hint)


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The validated manifest of the index at ``path`` (``RetrievalError`` if none or invalid)."""
    return read_index_manifest(Path(path)).model_dump()


def choose_kind(requested: str, n: int, ann_above: int) -> IndexKind:
    """``auto``: exact below ``ann_above`` vectors, HNSW above; otherwise what was asked."""
    if requested == "auto":
        return "hnsw" if n > ann_above else "flat"
    if requested not in ("flat", "hnsw", "ivf"):
        raise RetrievalError(f"unknown index kind {requested!r}; use auto, flat, hnsw or ivf")
    return requested  # type: ignore[return-value]
