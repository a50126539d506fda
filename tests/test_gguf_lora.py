"""PEFT LoRA adapters converted to llama.cpp LoRA files (``llmapps.models.gguf_lora``).

On the packaged SmolLM2 GGUF with LoRA weights written by hand in PEFT's layout: a zero LoRA
leaves llama.cpp's logits as they were and a non-zero one moves them (so the file is read and
applied); adapters llama.cpp cannot hold, or that do not fit the base, are refused in one line.
The check against PEFT itself (the converted adapter moves the GGUF's logits as PEFT moves the
HF base's) runs on Gemma in ``tests/test_real_lora.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmapps.errors import ConfigError

pytest.importorskip("llama_cpp", reason="the llama.cpp backend needs llama-cpp-python")

MODEL = "smollm2-135m-instruct"
PROMPT = "The river burst its banks after three days of rain, and the"


@pytest.fixture(scope="module")
def gguf(smollm2_gguf: Path) -> Path:
    return smollm2_gguf


_SHAPES: dict[str, tuple[int, int]] = {}


def _shape(gguf: Path, name: str) -> tuple[int, int]:
    """(in, out) of a base tensor (ggml order), the file read once per module."""
    if not _SHAPES:
        import gguf as gg

        _SHAPES.update(
            {
                t.name: (int(t.shape[0]), int(t.shape[1]))
                for t in gg.GGUFReader(str(gguf)).tensors
                if len(t.shape) == 2
            }
        )
    return _SHAPES[name]


def write_adapter(
    folder: Path, gguf: Path, *, scale_b: float, layers: tuple[int, ...] = (0, 1), **config: Any
) -> Path:
    """A PEFT LoRA folder (r=4 on q_proj and v_proj) with seeded weights; B scaled by ``scale_b``."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    r, tensors = 4, {}
    for i in layers:
        for proj, gname in (("q_proj", "attn_q"), ("v_proj", "attn_v")):
            n_in, n_out = _shape(gguf, f"blk.{min(i, 0)}.{gname}.weight")
            key = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.05, (r, n_in)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (scale_b * rng.normal(0, 1, (n_out, r))).astype(
                np.float32
            )
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        **config,
    }
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def last_logits(gguf: Path, lora: Path | None) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(
        str(gguf), n_ctx=256, logits_all=True, verbose=False, lora_path=str(lora) if lora else None
    )
    try:
        llm.eval(llm.tokenize(PROMPT.encode(), add_bos=True, special=True))
        return np.array(llm.eval_logits[-1])
    finally:
        llm.close()


def test_a_converted_lora_is_applied_by_llama_cpp(gguf: Path, tmp_path: Path) -> None:
    from llmapps.models.gguf_lora import export_lora_gguf

    base = last_logits(gguf, None)
    zero = export_lora_gguf(
        write_adapter(tmp_path / "zero", gguf, scale_b=0.0), gguf, tmp_path / "zero.gguf"
    )
    moved = export_lora_gguf(
        write_adapter(tmp_path / "some", gguf, scale_b=0.5), gguf, tmp_path / "some.gguf"
    )
    unchanged = np.abs(last_logits(gguf, zero) - base).max()  # B = 0: the adapter adds nothing
    moved_by = np.abs(last_logits(gguf, moved) - base).max()  # read and applied
    # 0.0 and 15.05 here; relative, so kernels another CPU picks cannot fail it
    assert moved_by > 0.05 and unchanged <= 0.01 * moved_by, (unchanged, moved_by)


def test_the_conversion_is_kept_and_reused(gguf: Path, tmp_path: Path) -> None:
    from llmapps.models.gguf_lora import lora_gguf_for
    from llmapps.settings import Settings

    settings = Settings(home=tmp_path / "home")
    adapter = write_adapter(tmp_path / "a", gguf, scale_b=0.5)
    first = lora_gguf_for(adapter, gguf, settings)
    stamp = first.stat().st_mtime_ns
    assert first.parent == settings.home / "gguf" / "adapters" and not list(adapter.glob("*.gguf"))
    assert lora_gguf_for(adapter, gguf, settings) == first and first.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"layers": (0, 99)},
            r"'model.layers.99.self_attn.q_proj.weight' has no tensor in .*another base",
        ),
        (
            {"use_dora": True},
            r"uses DoRA, which llama.cpp LoRA files cannot hold: use backend=transformers",
        ),
        ({"modules_to_save": ["lm_head"]}, r"fully trained modules"),
        (
            {"peft_type": "PROMPT_TUNING"},
            r"PROMPT_TUNING adapter; llama.cpp runs LoRA adapters only",
        ),
    ],
)
def test_adapters_llama_cpp_cannot_hold_are_refused(
    gguf: Path, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    from llmapps.models.gguf_lora import export_lora_gguf

    adapter = write_adapter(tmp_path / "a", gguf, scale_b=0.5, **kwargs)
    with pytest.raises(ConfigError, match=message):
        export_lora_gguf(adapter, gguf, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
