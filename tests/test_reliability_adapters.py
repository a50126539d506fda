"""Fault injection on adapter folders (issue 17, item 7): tampering is refused in one line.

The adapter is the demo one (the tiny recipe, trained for real through the ``finetune`` plugin
and reused from the test home). Each case tampers with a copy, as an attacker or a bad copy
would: weights edited (one byte, x100, ``lora_B`` negated, tensors dropped), the PEFT config
edited (``lora_alpha`` x1000), the manifest edited (format, method, base), files added, removed,
swapped for a pickle or a link. ``LoraStrategy(adapter=...)`` must raise one ``ConfigError``
line for every one, before any weight is loaded; a faithful copy still loads.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from llmapps.errors import ConfigError

WEIGHTS = "adapter_model.safetensors"
MANIFEST = "llmapps-adapter.json"


@pytest.fixture(scope="module")
def adapter(tiny_models: Path) -> Path:
    from llmapps.settings import get_settings
    from llmapps.strategies.lora import ensure_demo_adapter

    return ensure_demo_adapter(get_settings())


def _tensors(change: Callable[[dict], dict]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        save_file(change(load_file(folder / WEIGHTS)), folder / WEIGHTS)

    return edit


def _flip_byte(folder: Path) -> None:
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / WEIGHTS).write_bytes(bytes(data))


def _json_edit(
    name: str, change: Callable[[dict], None], *, resign: bool = False
) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        if resign:  # a careful attacker recomputes the manifest's own checksum too
            from llmapps.jsonl import json_checksum

            data["checksum"] = json_checksum(data)
        (folder / name).write_text(json.dumps(data))

    return edit


def _keep_two(w: dict) -> dict:
    return dict(list(w.items())[:2])


def _pickle_instead(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(folder / WEIGHTS), folder / "adapter_model.bin")
    (folder / WEIGHTS).unlink()


def _link_weights(folder: Path) -> None:
    outside = folder.parent / "elsewhere.safetensors"
    shutil.move(folder / WEIGHTS, outside)
    os.symlink(outside, folder / WEIGHTS)


TAMPERING: dict[str, Callable[[Path], None]] = {
    "one byte flipped": _flip_byte,
    "weights x100": _tensors(lambda w: {k: v * 100 for k, v in w.items()}),
    "lora_B negated": _tensors(lambda w: {k: -v if "lora_B" in k else v for k, v in w.items()}),
    "tensors dropped": _tensors(_keep_two),
    "lora_alpha x1000": _json_edit(
        "adapter_config.json", lambda c: c.update(lora_alpha=c["lora_alpha"] * 1000)
    ),
    "target modules changed": _json_edit(
        "adapter_config.json", lambda c: c.update(target_modules=["q_proj"])
    ),
    "manifest format 99": _json_edit(MANIFEST, lambda m: m.update(format=99)),
    "manifest format 1": _json_edit(MANIFEST, lambda m: m.update(format=1)),
    "manifest format missing": _json_edit(MANIFEST, lambda m: m.pop("format")),
    "method changed": _json_edit(MANIFEST, lambda m: m.update(method="prompt-tuning")),
    "method changed, re-signed": _json_edit(
        MANIFEST, lambda m: m.update(method="prompt-tuning"), resign=True
    ),
    "base changed": _json_edit(MANIFEST, lambda m: m.update(base_model_sha256="0" * 16)),
    "file hash edited to match": _json_edit(
        MANIFEST, lambda m: m["files"].update({WEIGHTS: "0" * 64}), resign=True
    ),
    "hashes removed, re-signed": _json_edit(MANIFEST, lambda m: m.update(files={}), resign=True),
    "listed path escapes": _json_edit(
        MANIFEST, lambda m: m["files"].update({"../x": "0" * 64}), resign=True
    ),
    "checksum removed": _json_edit(MANIFEST, lambda m: m.pop("checksum")),
    "wrong types": _json_edit(MANIFEST, lambda m: m.update(files=[1, 2], checksum=5)),
    "manifest not JSON": lambda f: (f / MANIFEST).write_text("{oops"),
    "manifest not UTF-8": lambda f: (f / MANIFEST).write_bytes(b'{"format": "\xff"}'),
    "manifest an array": lambda f: (f / MANIFEST).write_text("[2]"),
    "weights missing": lambda f: (f / WEIGHTS).unlink(),
    "pickle instead of safetensors": _pickle_instead,
    "pickle added": lambda f: shutil.copy(f / WEIGHTS, f / "adapter_model.bin"),
    "extra safetensors": lambda f: shutil.copy(f / WEIGHTS, f / "extra.safetensors"),
    "weights are a link": _link_weights,
    "config missing": lambda f: (f / "adapter_config.json").unlink(),
}


def test_every_tampered_adapter_is_refused_in_one_line(adapter: Path, tmp_path: Path) -> None:
    from llmapps.strategies.lora import LoraStrategy

    refused, errors = 0, []
    for n, (name, tamper) in enumerate(TAMPERING.items()):
        folder = shutil.copytree(adapter, tmp_path / f"t{n}" / "adapter")
        tamper(folder)
        try:
            LoraStrategy(adapter=str(folder))
        except ConfigError as err:
            refused += 1
            if "\n" in str(err):
                errors.append(f"{name}: a multi-line message: {err}")
        except Exception as err:  # a traceback
            errors.append(f"{name}: {type(err).__name__}: {err}")
        else:
            errors.append(f"{name}: accepted")
    print(
        f"adapter tampering: {len(TAMPERING)} tried, {refused} refused in one line, {len(errors)} errors"
    )
    assert not errors, errors


def test_a_faithful_copy_loads_and_the_manifest_lists_every_file(
    adapter: Path, tmp_path: Path
) -> None:
    from llmapps.adapters import MANIFEST_FORMAT, read_manifest
    from llmapps.strategies.lora import LoraStrategy

    copy = shutil.copytree(adapter, tmp_path / "copy")
    manifest = read_manifest(copy)
    assert manifest.format == MANIFEST_FORMAT
    assert set(manifest.files) == {p.name for p in copy.iterdir()} - {MANIFEST}
    assert {WEIGHTS, "adapter_config.json"} <= set(manifest.files)
    assert all(len(d) == 64 for d in manifest.files.values()) and len(manifest.checksum) == 64
    assert LoraStrategy(adapter=str(copy)).manifest == manifest
    (copy / "notes.txt").write_text("a file PEFT never reads")  # harmless additions are fine
    LoraStrategy(adapter=str(copy))
