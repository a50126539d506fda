"""Fold an adapter into its base and save a plain model any Hugging Face tool can load."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from llmapps.errors import ConfigError
from llmapps.settings import Settings, get_settings


def merge_adapter(adapter: str | Path, out: str | Path, *, base_model: str | None = None,
                  settings: Settings | None = None) -> Path:
    """Merge ``adapter`` into its base and write a standalone model folder to ``out``.

    The base is checked against the adapter's manifest first (``LoraStrategy`` does the checks),
    and the result is written to a staging folder renamed into place.

    Args:
        adapter: adapter folder written by ``llmapps finetune``.
        out: folder for the merged model (``AutoModelForCausalLM.from_pretrained(out)`` loads it).
        base_model: where the base lives, if not where the manifest says.
        settings: resolved settings; read from the environment when omitted.
    """
    from llmapps.strategies.lora import LoraStrategy, read_manifest

    settings = settings or get_settings()
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new folder for the merged model")
    manifest = read_manifest(adapter)
    if manifest.method != "lora":
        raise ConfigError(f"only LoRA adapters can be merged; {adapter} holds a {manifest.method} adapter")
    strategy = LoraStrategy(adapter=str(adapter), base_model=base_model, merge=True, device="cpu",
                            dtype="float32")
    lm = strategy.local_model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        (tmp / "llmapps-merged.json").write_text(json.dumps(
            {"adapter": str(Path(adapter).resolve()), **manifest.model_dump(mode="json", exclude={"metrics"})},
            indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
