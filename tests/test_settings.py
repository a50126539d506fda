"""Settings precedence (defaults < YAML < environment < overrides) and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmapps.errors import ConfigError
from llmapps.settings import Settings, get_settings, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")  # no settings file's values (a named one must exist)
    monkeypatch.setenv("LLMAPPS_CONFIG", str(tmp_path / "empty.yaml"))
    s = get_settings()  # the suite pins the tiny models through the environment (conftest)
    assert (s.base_model, s.instruct_model) == ("tiny-base", "tiny-instruct")
    monkeypatch.delenv("LLMAPPS_BASE_MODEL")
    monkeypatch.delenv("LLMAPPS_INSTRUCT_MODEL")
    s = get_settings()  # the real pretrained models from the package index by default
    assert (s.base_model, s.instruct_model) == ("gemma-3-270m", "smollm2-135m-instruct")
    assert s.generation.max_prompt_tokens == 2048
    assert s.trust_remote_code is False
    assert s.models_dir == s.home / "models"


def test_precedence_yaml_then_env_then_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "base_model: from-yaml\ninstruct_model: yaml-instruct\ngeneration:\n  batch_size: 3\n"
    )
    monkeypatch.setenv("LLMAPPS_CONFIG", str(cfg))
    monkeypatch.delenv("LLMAPPS_BASE_MODEL")  # the suite's tiny pins would outrank the file
    monkeypatch.delenv("LLMAPPS_INSTRUCT_MODEL")
    s = get_settings()
    assert (s.base_model, s.instruct_model, s.generation.batch_size) == (
        "from-yaml",
        "yaml-instruct",
        3,
    )

    monkeypatch.setenv("LLMAPPS_BASE_MODEL", "from-env")
    monkeypatch.setenv("LLMAPPS_GENERATION__BATCH_SIZE", "5")
    s = get_settings()
    assert (s.base_model, s.instruct_model, s.generation.batch_size) == (
        "from-env",
        "yaml-instruct",
        5,
    )

    s = load_settings(base_model="from-flag", instruct_model=None)
    assert (s.base_model, s.instruct_model) == ("from-flag", "yaml-instruct")


def test_invalid_values_list_every_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")  # no settings file's values (a named one must exist)
    monkeypatch.setenv("LLMAPPS_CONFIG", str(tmp_path / "empty.yaml"))
    monkeypatch.setenv("LLMAPPS_GENERATION__BATCH_SIZE", "0")
    with pytest.raises(ConfigError, match=r"invalid settings:") as info:
        load_settings(offline="not-a-bool")
    assert "offline: Input should be a valid boolean" in str(info.value)
    assert "generation.batch_size: Input should be greater than or equal to 1" in str(info.value)


def test_unknown_yaml_key_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("base_modle: typo\n")
    monkeypatch.setenv("LLMAPPS_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=r"base_modle: Extra inputs are not permitted"):
        get_settings()


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="no_such_field"):
        load_settings(no_such_field=1)


def test_settings_class_forbids_extra() -> None:
    assert Settings.model_config.get("extra") == "forbid"
