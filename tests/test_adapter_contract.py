"""The adapter contract is neutral: ``finetune`` and the ``lora`` strategy meet in
``llmapps.adapters`` and the folder, training is reached through the registered trainer (typed
errors come back as exceptions), and training data reaches ``finetune`` through the app registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmapps.errors import ConfigError, UnknownComponentError

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "finetune").glob("*.py")), ids=lambda p: p.name)
def test_finetune_imports_neither_the_strategy_nor_an_app(path: Path) -> None:
    bad = [
        f"{path.name}:{line}: {mod}"
        for line, mod in _imports(path)
        if mod.startswith(("llmapps.strategies", "chains", "llmapps.cli"))
    ]
    assert not bad, (
        "finetune meets the lora strategy in llmapps.adapters, apps via the registry: "
        + ", ".join(bad)
    )


def test_the_lora_strategy_does_not_train_through_the_cli() -> None:
    mods = [mod for _, mod in _imports(ROOT / "llmapps" / "strategies" / "lora.py")]
    assert "llmapps.cli" not in mods and "llmapps.adapters" in mods


def test_the_peft_trainer_is_registered_and_reports_typed_errors(tmp_path: Path) -> None:
    from llmapps.adapters import get_trainer, trainers

    assert "peft" in trainers.names()
    train = get_trainer("peft")
    with pytest.raises(
        ConfigError, match=r"no recipe 'no-such-recipe': give a YAML path or one of: .*tiny"
    ):
        train("no-such-recipe", tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(
        UnknownComponentError, match=r"unknown adapter trainer 'pef'.*Did you mean 'peft'"
    ):
        get_trainer("pef")


def test_the_demo_recipe_of_a_base_is_the_trainers_knowledge_not_the_cores() -> None:
    from llmapps.adapters import get_trainer

    trainer = get_trainer("peft")
    demo = trainer.demo_recipe("tiny-base")
    assert demo is not None and (demo.recipe, demo.adapter) == (
        "tiny",
        "news-riddle-tiny",
    )  # the old folder
    assert trainer.demo_recipe("no-such-base") is None and "tiny-base" in trainer.demo_bases()
    core = (ROOT / "llmapps" / "strategies" / "lora.py").read_text(encoding="utf-8")
    assert "news-riddle" not in core and "[Article]" not in core


def test_a_bare_split_comes_from_the_prompts_app_through_the_registry() -> None:
    from finetune.data import read_examples
    from llmapps.apps import get_app
    from prompts import load_task

    task = load_task("news_riddle/one_step")
    spec = get_app(task.name)
    assert spec.training_examples is not None
    assert (
        read_examples("train", task)
        == spec.training_examples("train")
        == read_examples("news-riddle:train", task)
    )
    with pytest.raises(
        ConfigError, match=r"data source 'tets': the app 'news-riddle' has no split 'tets'"
    ):
        read_examples("tets", task)


def test_a_lora_recipe_needs_no_prompt_tuning_section() -> None:
    from finetune.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {"name": "r", "method": "lora", "base_model": "tiny-base", "lora": {"r": 4}}
    )
    assert recipe.method == "lora" and recipe.lora.r == 4


def test_atomic_folder_is_complete_or_absent(tmp_path: Path) -> None:
    from llmapps.folders import atomic_folder

    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError, match="half-way"), atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("killed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left
    assert [p.name for p in out.iterdir()] == ["a.txt"]  # the old folder untouched
    with atomic_folder(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c.txt"]  # replaced whole
    with (
        pytest.raises(FileExistsError, match="exists and is not empty"),
        atomic_folder(out, replace=False),
    ):
        pass


def test_the_recipes_method_key_picks_the_method_not_the_cli_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    code = main(
        ["finetune", "prompt-tuning", "--recipe", "tiny", "--out", str(tmp_path / "a"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert (
        code != 0
        and "the recipe 'tiny' trains 'lora' (its method: key), not 'prompt-tuning'" in err
    )
    assert not (tmp_path / "a").exists()


def test_set_overrides_use_the_cores_one_parser() -> None:
    from finetune.cli import _overrides

    assert _overrides(["training.max_steps=20", "lora.target_modules=[q_proj, v_proj]"]) == {
        "training.max_steps": 20,
        "lora.target_modules": ["q_proj", "v_proj"],
    }
    with pytest.raises(
        ConfigError, match=r"--set 'training': expected KEY=VALUE, e.g. --set training.max_steps=20"
    ):
        _overrides(["training"])
