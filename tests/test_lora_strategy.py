"""The ``lora`` strategy: loads base + adapter by the manifest, refuses what it must, shares a base.

The adapter is the demo one (the tiny recipe trained for real on tiny-base, test spec, through the
``finetune`` CLI plugin), reused from the test home while tiny-base is unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmapps.errors import ConfigError


@pytest.fixture(scope="module")
def prompt(test_articles) -> str:
    """The lora prompt of a test article (the layout the adapter was trained on)."""
    from llmapps.strategies.lora import LoraStrategy
    from prompts import load_task

    return LoraStrategy.prompt_for(load_task("news_riddle/one_step"), test_articles[0])


@pytest.fixture(scope="module")
def adapter(tiny_models) -> Path:
    from llmapps.settings import get_settings
    from llmapps.strategies.lora import ensure_demo_adapter

    return ensure_demo_adapter(get_settings())


def _resign(folder: Path) -> Path:
    """Rewrite the manifest's hashes over the folder as it is now, as training would have."""
    from llmapps.adapters import read_manifest, write_manifest

    write_manifest(folder, read_manifest(folder, verify_files=False))
    return folder


def _scaled_copy(src: Path, dst: Path, factor: float) -> Path:
    """A copy of ``src`` with every lora_B weight multiplied by ``factor`` (0: a no-op adapter),
    re-signed: an adapter our training could have written, which the strategy must still check."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "adapter_model.safetensors")
    save_file(
        {k: v * factor if "lora_B" in k else v for k, v in weights.items()},
        dst / "adapter_model.safetensors",
    )
    return _resign(dst)


def test_a_trained_full_recipe_adapter_is_preferred_to_the_demo(
    adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the base's full recipe was trained into $LLMAPPS_HOME/adapters/<name>, the default
    (demo, bench) uses it; a damaged one falls back to the demo adapter, which is kept."""
    from llmapps.adapters import DemoRecipe, get_trainer
    from llmapps.settings import get_settings
    from llmapps.strategies.lora import ensure_demo_adapter

    settings = get_settings()
    full = settings.home / "adapters" / "news-riddle-tiny-full-test"
    shutil.rmtree(full, ignore_errors=True)
    shutil.copytree(adapter, full)
    trainer = get_trainer("peft")
    demo = DemoRecipe(recipe="tiny", adapter=adapter.name, full_adapter=full.name)
    monkeypatch.setattr(type(trainer), "demo_recipe", lambda self, base: demo)
    try:
        assert ensure_demo_adapter(settings) == full
        (full / "adapter_model.safetensors").write_bytes(b"damaged")
        assert ensure_demo_adapter(settings) == adapter  # the demo's, no retraining
    finally:
        shutil.rmtree(full, ignore_errors=True)


def test_registered_and_demo_options_give_the_adapter(adapter):
    from llmapps.settings import get_settings
    from llmapps.strategies.base import STRATEGIES

    cls = STRATEGIES.get("lora")
    with cls.demo_options(get_settings()) as opts:
        assert opts == {"adapter": str(adapter)}


def test_adapter_changes_the_output_of_its_base(adapter, tiny_base, prompt):
    from llmapps.models.local import GenerationParams, load_local_model
    from llmapps.strategies.lora import LoraStrategy

    strategy = LoraStrategy(adapter=str(adapter))
    params = GenerationParams(max_new_tokens=24)
    tuned = strategy.local_model.generate([prompt], params)[0].text
    base = load_local_model(tiny_base).generate([prompt], params)[0].text
    assert tuned != base
    assert strategy.logit_change and strategy.logit_change > 1e-3


def test_load_chain_runs_the_app_on_lora(adapter, test_articles):
    from llmapps.apps import load_chain

    chain = load_chain("news-riddle", strategy="lora", adapter=str(adapter), max_new_tokens=24)
    out = chain.batch([{"title": a["title"], "text": a["text"]} for a in test_articles[:2]])
    assert len(out) == 2 and all({"summary", "riddle", "answer", "valid"} <= set(o) for o in out)
    assert all(o["raw"].strip() for o in out)


def test_inference_prompt_is_the_training_prompt(test_articles):
    from finetune.data import split_example
    from llmapps.strategies.lora import LoraStrategy
    from prompts import load_task

    ex = {"title": "T", "text": "Body.", "summary": "s", "riddle": "r", "answer": "a"}
    task = load_task("news_riddle/one_step", [ex])  # examples in the task are not used by lora
    prompt, completion = split_example(task, ex)
    assert LoraStrategy.prompt_for(task, {"title": "T", "text": "Body.", "id": "x"}) == prompt
    assert prompt.endswith("[Article]: T. Body.\n[Summary]:") and "[Riddle]: r" not in prompt
    assert completion == " s\n[Riddle]: r\n[Answer]: a"


def test_mismatched_base_is_refused(adapter, tiny_instruct):
    from llmapps.strategies.lora import LoraStrategy

    with pytest.raises(ConfigError, match=r"was trained on 'tiny-base'.*retrain"):
        _ = LoraStrategy(adapter=str(adapter), base_model=tiny_instruct).local_model


def test_noop_adapter_is_refused(adapter, tmp_path):
    from llmapps.strategies.lora import LoraStrategy

    noop = _scaled_copy(adapter, tmp_path / "noop", 0.0)
    with pytest.raises(ConfigError, match="does not change the base model"):
        _ = LoraStrategy(adapter=str(noop)).local_model


def test_mistargeted_adapter_is_refused(adapter, tmp_path):
    from llmapps.strategies.lora import LoraStrategy

    bad = shutil.copytree(adapter, tmp_path / "bad")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["target_modules"] = ["no_such_proj"]
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    _resign(bad)
    with pytest.raises(ConfigError, match="cannot load the adapter"):
        _ = LoraStrategy(adapter=str(bad)).local_model


def test_folder_without_manifest_is_refused(adapter, tmp_path):
    from llmapps.strategies.lora import LoraStrategy

    bare = shutil.copytree(adapter, tmp_path / "bare")
    (bare / "llmapps-adapter.json").unlink()
    with pytest.raises(ConfigError, match=r"no llmapps-adapter.json"):
        LoraStrategy(adapter=str(bare))
    with pytest.raises(ConfigError, match="does not exist"):
        LoraStrategy(adapter=str(tmp_path / "missing"))


def test_other_task_is_refused_unless_allowed(adapter):
    from llmapps.strategies.lora import LoraStrategy
    from prompts import load_task

    task = load_task("news_riddle/summarize")
    with pytest.raises(ConfigError, match="trained for the task 'news-riddle'"):
        LoraStrategy(adapter=str(adapter)).build(task)
    assert LoraStrategy(adapter=str(adapter), allow_other_task=True).build(task) is not None


def test_two_adapters_switch_on_one_loaded_base(adapter, tmp_path, prompt):
    from llmapps.models.local import GenerationParams
    from llmapps.strategies.lora import LoraStrategy

    strong = _scaled_copy(adapter, tmp_path / "strong", 3.0)
    a = LoraStrategy(adapter=str(adapter)).local_model
    b = LoraStrategy(adapter=str(strong)).local_model
    assert a.model is b.model  # one base in memory, two named adapters on it
    params = GenerationParams(max_new_tokens=16)
    first = a.generate([prompt], params)[0].text
    other = b.generate([prompt], params)[0].text
    again = a.generate([prompt], params)[0].text
    assert first == again and first != other


def test_merge_option_gives_the_same_greedy_output(adapter, prompt):
    from llmapps.models.local import GenerationParams
    from llmapps.strategies.lora import LoraStrategy

    params = GenerationParams(max_new_tokens=16)
    shared = LoraStrategy(adapter=str(adapter)).local_model.generate([prompt], params)[0].text
    merged = (
        LoraStrategy(adapter=str(adapter), merge=True)
        .local_model.generate([prompt], params)[0]
        .text
    )
    assert merged == shared


def test_llmapps_core_does_not_import_finetune():
    root = Path(__file__).resolve().parent.parent / "llmapps" / "strategies" / "lora.py"
    src = root.read_text()
    assert "import finetune" not in src and "from finetune" not in src and "from prompts" not in src
