"""Reading a GGUF file's header before llama.cpp sees it: a file that is not GGUF, is truncated,
or names an architecture llama.cpp cannot run gets a one-line error naming the file
(``read_gguf_header``), never a crash of the process."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmapps.errors import InputError, ModelNotFoundError

_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
# ggml tensor types: (elements per block, bytes per block), for the size check of the last tensor
_GGML_BLOCKS = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
}
# metadata arrays worth keeping (small); the vocabulary arrays are skipped over
_KEEP_ARRAYS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GGUFInfo:
    """What the header of a GGUF file says, checked against the file's size."""

    path: Path
    version: int
    architecture: str
    name: str
    context_length: int | None
    n_tensors: int
    file_size: int
    chat_template: str | None
    block_count: int | None = None
    tensor_names: frozenset[str] = frozenset()


class _Reader:
    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise EOFError
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise EOFError
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[vtype])
        if vtype == _GGUF_STRING:
            return self.string()
        if vtype == _GGUF_ARRAY:
            itype, n = self.take("<I"), self.take("<Q")
            if itype in _GGUF_SCALARS and not keep:  # skip fixed-size items in one step
                self.pos += n * struct.calcsize(_GGUF_SCALARS[itype])
                if self.pos > len(self.buf):
                    raise EOFError
                return None
            items = [self.value(itype, keep) for _ in range(n)]
            return items if keep else None
        raise ValueError(f"unknown metadata value type {vtype}")


def read_gguf_header(path: str | Path) -> GGUFInfo:
    """Parse and check a GGUF file's header without loading its weights.

    Raises ``InputError`` with one line naming the file when it is missing, not GGUF, of an
    unknown GGUF version, or shorter than its tensors need (truncated download or copy).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(f"{p} is not a file; pass the path of a .gguf model file")
    size = p.stat().st_size
    what = f"{p} is not a usable GGUF model"
    with p.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise InputError(
            f"{what}: it does not start with the GGUF magic bytes (got {magic!r}); "
            "pass a .gguf file (convert other formats with llama.cpp's convert_hf_to_gguf.py)"
        )
    if size < 24:
        raise InputError(f"{what}: it has {size} bytes, less than a GGUF header; it is truncated")
    with p.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise InputError(
                f"{what}: it does not start with the GGUF magic bytes (got {bytes(buf[:4])!r}); "
                "pass a .gguf file (convert other formats with llama.cpp's convert_hf_to_gguf.py)"
            )
        r = _Reader(buf, p)
        r.pos = 4
        try:
            version = r.take("<I")
            if version not in (2, 3):
                raise InputError(f"{what}: GGUF version {version} is not 2 or 3; re-convert it")
            n_tensors, n_kv = r.take("<Q"), r.take("<Q")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = r.string()
                vtype = r.take("<I")
                meta[key] = r.value(vtype, keep=vtype != _GGUF_ARRAY or key in _KEEP_ARRAYS)
            last_end = 0
            names = []
            for _ in range(n_tensors):
                names.append(r.string())
                n_dims = r.take("<I")
                dims = [r.take("<Q") for _ in range(n_dims)]
                ttype, offset = r.take("<I"), r.take("<Q")
                elems = 1
                for d in dims:
                    elems *= d
                block = _GGML_BLOCKS.get(ttype)
                nbytes = elems // block[0] * block[1] if block else 0
                last_end = max(last_end, offset + nbytes)
            align = int(meta.get("general.alignment", 32) or 32)
            data_start = (r.pos + align - 1) // align * align
        except EOFError:
            raise InputError(
                f"{what}: the file ends inside its header ({size} bytes); it is truncated, "
                "download or copy it again"
            ) from None
        except (ValueError, struct.error, MemoryError, OverflowError) as err:
            raise InputError(f"{what}: its header is damaged ({err}); download it again") from None
    needed = data_start + last_end if n_tensors else r.pos
    if size < needed:
        raise InputError(
            f"{what}: it is truncated ({size:,} bytes, its tensors need {needed:,}); "
            "download or copy it again"
        )
    arch = str(meta.get("general.architecture") or "")
    if not arch:
        raise InputError(f"{what}: its header names no general.architecture; re-convert it")
    ctx = meta.get(f"{arch}.context_length")
    blocks = meta.get(f"{arch}.block_count")
    template = meta.get("tokenizer.chat_template")
    return GGUFInfo(
        path=p,
        version=version,
        architecture=arch,
        name=str(meta.get("general.name") or p.stem),
        context_length=int(ctx) if isinstance(ctx, int) else None,
        n_tensors=n_tensors,
        file_size=size,
        chat_template=template if isinstance(template, str) else None,
        block_count=int(blocks) if isinstance(blocks, int) else None,
        tensor_names=frozenset(names),
    )
