"""Fold an adapter into its base and save a plain model any Hugging Face tool can load."""

from __future__ import annotations

import json
from pathlib import Path

from llmapps.errors import ConfigError
from llmapps.settings import Settings, get_settings


def merge_adapter(
    adapter: str | Path,
    out: str | Path,
    *,
    base_model: str | None = None,
    settings: Settings | None = None,
) -> Path:
    """Merge ``adapter`` into its base and write a standalone model folder to ``out``.

    The folder and its base are checked against the adapter's manifest first (the checks of
    ``llmapps.adapters``, the same the ``lora`` strategy makes: file hashes, base weights, the
    adapter changes the output), and the result is written to a staging folder renamed into place.

    Args:
        adapter: adapter folder written by ``llmapps finetune``.
        out: folder for the merged model (``AutoModelForCausalLM.from_pretrained(out)`` loads it).
        base_model: where the base lives, if not where the manifest says.
        settings: resolved settings; read from the environment when omitted.
    """
    from llmapps.adapters import check_adapter_active, check_base, load_peft, read_manifest
    from llmapps.folders import atomic_folder
    from llmapps.models.local import load_pretrained, resolve_model_path

    settings = settings or get_settings()
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"{out} exists and is not empty; choose a new folder for the merged model"
        )
    manifest = read_manifest(adapter)
    if manifest.method != "lora":
        raise ConfigError(
            f"only LoRA adapters can be merged; {adapter} holds a {manifest.method} adapter"
        )
    folder = Path(adapter).expanduser().resolve()
    name = base_model or manifest.base_model
    path = resolve_model_path(name, settings)
    check_base(manifest, path, adapter=adapter, name=name)
    model, tokenizer = load_pretrained(path, "cpu", "float32", settings)
    peft_model = load_peft(model, folder, "default")
    check_adapter_active(peft_model, "default", tokenizer, folder)
    merged = peft_model.merge_and_unload()
    with atomic_folder(out) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "llmapps-merged.json").write_text(
            json.dumps(
                {"adapter": str(folder), **manifest.model_dump(mode="json", exclude={"metrics"})},
                indent=2,
            )
        )
    return out
