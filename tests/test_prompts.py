"""Every prompt file and fine-tune recipe in the repo loads and validates (one parametrised test),
and the prompt loader reports broken files with their path and every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmapps.errors import ConfigError
from prompts.loader import PROMPTS_DIR, list_prompt_files, load_task, validate_prompt_file

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "finetune" / "recipes").glob("*.yaml"))
YAMLS = [*list_prompt_files(), *RECIPES]


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(ROOT)) for p in YAMLS])
def test_every_yaml_loads_and_validates(path: Path) -> None:
    if path.is_relative_to(PROMPTS_DIR):
        task = load_task(path)
        assert task.input_variables and task.output_variables
        rendered = task.completion.render({v: f"<{v}>" for v in task.input_variables})
        assert all(f"<{v}>" in rendered for v in task.input_variables)
        msgs = task.chat.format_messages(**{v: f"<{v}>" for v in task.input_variables})
        assert msgs
    else:
        from finetune.recipe import load_recipe

        assert load_recipe(path) is not None


def test_prompt_files_exist() -> None:
    assert len(list_prompt_files()) >= 3


def test_unknown_prompt_lists_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"no prompt file 'news_riddle/nope'; known: .*news_riddle/one_step"
    ):
        load_task("news_riddle/nope")


def test_inconsistent_prompt_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ninput_variables: [text]\noutput_variables: [summary]\n"
        "truncate_variable: title\ncompletion:\n  prefix: 'Hi {who}'\n"
        "  example_template: '{text} {oops}'\n  suffix: '{title}'\n"
        "chat:\n  - role: user\n    content: 'Summarise'\n"
    )
    with pytest.raises(ConfigError) as info:
        validate_prompt_file(bad)
    msg = str(info.value)
    assert str(bad) in msg
    for part in (
        "completion.suffix",
        "example_template uses unknown ['oops']",
        "prefix must not use variables",
        "chat messages use",
        "truncate_variable 'title'",
    ):
        assert part in msg


def test_schema_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput_variables: [a]\noutput_variables: [b]\nchat: []\nextra_key: 1\n")
    with pytest.raises(
        ConfigError, match=r"(?s)invalid prompt file:.*completion: Field required.*extra_key"
    ):
        validate_prompt_file(bad)


def test_not_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        validate_prompt_file(bad)


def test_examples_missing_fields_are_rejected() -> None:
    with pytest.raises(
        ConfigError, match=r"example 0 for news-riddle lacks \['answer', 'riddle'\]"
    ):
        load_task("news_riddle/one_step", [{"title": "t", "text": "x", "summary": "s"}])
