"""PEFT LoRA adapters as llama.cpp LoRA files, so the ``lora`` strategy runs on llama.cpp.

llama.cpp applies a LoRA at run time on top of a (quantized) base GGUF (``Llama(lora_path=)``).
Its adapter file is a GGUF of ``general.type = adapter`` holding, for each adapted base tensor
(``blk.3.attn_q.weight``), ``.lora_a`` (r x in) and ``.lora_b`` (out x r), and one
``adapter.lora.alpha``; llama.cpp scales each pair by alpha / r, as PEFT does (rsLoRA's
alpha / sqrt(r) is written as alpha * sqrt(r)). Tensor names are mapped with the ``gguf``
package's own tables for the base's architecture, and every one must land on a tensor of the base
file, so an adapter of another architecture or size is refused rather than silently ignored.

``lora_gguf_for`` converts once and keeps the file under ``$LLMAPPS_HOME/gguf/adapters``, keyed
by the SHA-256 of the adapter's weights and of the base GGUF: nothing is written into the adapter
folder (its manifest lists every file it may hold). Beside it a manifest (``NAME.gguf.json``)
records both digests and the converted file's own SHA-256; a kept file is used only while it is a
regular file whose digest matches (hashed once, then stamped by size and mtime), else it is
converted again, so a damaged, truncated or replaced file is never handed to llama.cpp (which
accepts random bytes as a LoRA).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmapps.errors import ConfigError
from llmapps.hashing import sha256_file
from llmapps.models.gguf import read_gguf_header
from llmapps.models.packaged import file_lock, verified_sha256

if TYPE_CHECKING:
    from llmapps.settings import Settings

WEIGHTS = "adapter_model.safetensors"
CACHE_FORMAT = "llmapps-lora-gguf/1"
_BACKEND_HINT = "use backend=transformers for it"


def _lora_config(adapter: Path) -> dict[str, Any]:
    path = adapter / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot read the PEFT config {path} ({err}); retrain the adapter"
        ) from err
    if config.get("peft_type") != "LORA":
        raise ConfigError(
            f"{adapter} is a {config.get('peft_type')} adapter; llama.cpp runs LoRA adapters only: "
            + _BACKEND_HINT
        )
    unsupported = {
        "use_dora": "DoRA",
        "alpha_pattern": "per-module alpha (alpha_pattern)",
        "modules_to_save": "fully trained modules (modules_to_save)",
        "lora_bias": "LoRA biases",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise ConfigError(
                f"{adapter} uses {what}, which llama.cpp LoRA files cannot hold: " + _BACKEND_HINT
            )
    return config


def export_lora_gguf(adapter: Path | str, base_gguf: Path | str, out: Path | str) -> Path:
    """Write the llama.cpp LoRA file of the PEFT adapter in ``adapter`` for ``base_gguf``.

    Raises:
        ConfigError: not a plain LoRA (DoRA, prompt tuning, ...), or a tensor that has no
            counterpart in the base file (another architecture or size).
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter, base_gguf, out = Path(adapter), Path(base_gguf), Path(out)
    config = _lora_config(adapter)
    info = read_gguf_header(base_gguf)
    arch, blocks, present = info.architecture, info.block_count or 0, info.tensor_names
    arch_ids = [k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch]
    if not arch_ids:
        raise ConfigError(
            f"{base_gguf} is of architecture {arch!r}, which this gguf package cannot map"
        )
    names = gguf.get_tensor_name_map(arch_ids[0], blocks)
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in load_file(str(adapter / WEIGHTS)).items():
        part = "lora_a" if ".lora_A." in key else "lora_b" if ".lora_B." in key else None
        if part is None:
            raise ConfigError(
                f"{adapter / WEIGHTS} holds {key!r}, not a LoRA A/B matrix: " + _BACKEND_HINT
            )
        hf = key.replace("base_model.model.", "", 1).replace(
            f".lora_{part[-1].upper()}.weight", ".weight"
        )
        target = names.get_name(hf, try_suffixes=(".weight",))
        if target is None or target not in present:
            raise ConfigError(
                f"the adapter's {hf!r} has no tensor in {base_gguf.name} ({arch}, {blocks} blocks): "
                "the adapter was trained on another base"
            )
        pairs.setdefault(target, {})[part] = value.astype(np.float32)
    if not pairs or any(len(p) != 2 for p in pairs.values()):
        raise ConfigError(f"{adapter / WEIGHTS} holds no complete LoRA pairs; retrain the adapter")
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    if config.get("use_rslora"):
        alpha *= math.sqrt(float(config["r"]))  # llama.cpp's alpha / r == rsLoRA's alpha / sqrt(r)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for target in sorted(pairs):
            writer.add_tensor(f"{target}.lora_a", pairs[target]["lora_a"])
            writer.add_tensor(f"{target}.lora_b", pairs[target]["lora_b"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)  # complete or absent: a killed export leaves no half file behind
    return out


def _cache_manifest(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _verified(out: Path, adapter_sha256: str, base_sha256: str) -> bool:
    """True when ``out`` is a regular file that its manifest vouches for, digest included."""
    if out.is_symlink() or not out.is_file():
        return False
    try:
        manifest = json.loads(_cache_manifest(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("format") == CACHE_FORMAT
        and manifest.get("adapter_sha256") == adapter_sha256
        and manifest.get("base_sha256") == base_sha256
        and manifest.get("sha256") == verified_sha256(out)
    )


def lora_gguf_for(
    adapter: Path | str,
    base_gguf: Path | str,
    settings: Settings | None = None,
    *,
    adapter_sha256: str | None = None,
    base_sha256: str | None = None,
) -> Path:
    """The llama.cpp LoRA file of ``adapter`` for ``base_gguf``, converted on first use
    (``adapter_sha256``/``base_sha256``: the weights' and the base file's digests where the
    caller has just checked them, so neither file is hashed again).

    A kept file is verified against the manifest beside it and converted again when it does not
    match (damaged, truncated, replaced, or a symlink); two processes convert it once (a lock).

    Raises:
        ConfigError: something that is not a file (a folder) holds the cache file's name.
    """
    from llmapps.settings import get_settings

    adapter, base_gguf = Path(adapter), Path(base_gguf)
    home = (settings or get_settings()).home
    weights_key = adapter_sha256 or sha256_file(adapter / WEIGHTS)
    base_key = base_sha256 or sha256_file(base_gguf)
    key = f"{weights_key[:16]}-{base_key[:16]}"
    out = home / "gguf" / "adapters" / f"{adapter.name}-{key}.gguf"
    if _verified(out, weights_key, base_key):
        return out
    with file_lock(out.with_name(f".{out.name}.lock")):
        if _verified(out, weights_key, base_key):  # another process converted it meanwhile
            return out
        if not out.is_symlink() and out.exists() and not out.is_file():
            raise ConfigError(
                f"{out} is not a file (a folder?), so the converted LoRA cannot be written there; "
                "remove it and run again"
            )
        if out.is_symlink():
            out.unlink()  # never write through a link into the file it points at
        export_lora_gguf(adapter, base_gguf, out)
        manifest = {
            "format": CACHE_FORMAT,
            "adapter": str(adapter),
            "adapter_sha256": weights_key,
            "base_gguf": str(base_gguf),
            "base_sha256": base_key,
            "sha256": verified_sha256(out),
        }
        record = _cache_manifest(out)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            os.replace(tmp, record)  # written last: a file without its record is converted again
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise ConfigError(
                f"cannot write the record {record} of the converted LoRA ({err}); remove it and "
                "run again"
            ) from err
    return out
