"""Settings reach strategies from the top, in one place: explicit options beat the settings handed
down (``strategies.base.resolve_config``), ``llmapps.compose`` hands them down, and ``--tiny`` is
settings passed to the command, never a write to the environment."""

from __future__ import annotations

import os
from typing import Any

import pytest

from llmapps.compose import load_chain, make_strategy, settings_options, tiny_settings
from llmapps.settings import get_settings
from llmapps.strategies.base import resolve_config


def _real_names(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The environment as a user's: the real default models, not the suite's tiny ones."""
    monkeypatch.setenv("LLMAPPS_BASE_MODEL", "gemma-3-270m")
    monkeypatch.setenv("LLMAPPS_INSTRUCT_MODEL", "smollm2-135m-instruct")
    return get_settings()


def test_explicit_options_beat_the_settings_handed_down() -> None:
    settings = get_settings().model_copy(update={"base_model": "from-settings"})
    given = make_strategy("few-shot", settings, base_model="given", max_prompt_tokens=64)
    resolved = resolve_config(given.config, given.settings)
    assert (resolved.base_model, resolved.max_prompt_tokens) == ("given", 64)
    unset = make_strategy("few-shot", settings)
    resolved = resolve_config(unset.config, unset.settings)
    assert resolved.base_model == "from-settings"
    assert resolved.max_prompt_tokens == settings.generation.max_prompt_tokens
    assert unset.config.base_model is None  # the config as given is kept (describe() unchanged)


def test_a_strategy_loads_the_model_its_settings_name(tiny_models: Any) -> None:
    # the environment says tiny-base; the settings handed down say tiny-instruct, and win
    settings = get_settings().model_copy(update={"base_model": "tiny-instruct"})
    strategy = make_strategy("few-shot", settings, device="cpu")
    # a model the pool already holds keeps the name it was first loaded by (name or path)
    assert strategy.local_model.name.rstrip("/").endswith("tiny-instruct")


def test_service_fills_its_endpoint_from_the_settings_handed_down() -> None:
    settings = get_settings()
    service = settings.service.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})
    strategy = make_strategy("service", settings.model_copy(update={"service": service}))
    resolved = resolve_config(strategy.config, strategy.settings)
    assert resolved.base_url == "http://127.0.0.1:9/v1" and strategy.config.base_url is None


def test_tiny_settings_reach_strategies_as_options(monkeypatch: pytest.MonkeyPatch) -> None:
    _real_names(monkeypatch)
    tiny = tiny_settings()
    assert (tiny.base_model, tiny.instruct_model) == ("tiny-base", "tiny-instruct")
    assert settings_options("few-shot", tiny) == {"base_model": "tiny-base"}
    assert settings_options("zero-shot", tiny) == {"instruct_model": "tiny-instruct"}
    # lora's base comes from its adapter's manifest, the service's model from its endpoint
    assert settings_options("lora", tiny) == settings_options("service", tiny) == {}
    assert settings_options("few-shot", get_settings()) == {}  # the environment's: nothing


def test_tiny_flag_leaves_the_environment_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    _real_names(monkeypatch)
    assert main(["--tiny", "strategies"]) == 0
    assert "few-shot" in capsys.readouterr().out
    assert os.environ["LLMAPPS_BASE_MODEL"] == "gemma-3-270m"
    assert os.environ["LLMAPPS_INSTRUCT_MODEL"] == "smollm2-135m-instruct"


def test_load_chain_builds_under_the_settings_given() -> None:
    from llmapps.errors import ModelNotFoundError

    settings = get_settings().model_copy(update={"base_model": "no-such-model-here"})
    # few-shot loads its model while the chain is built: the settings' model is the one it seeks
    with pytest.raises(ModelNotFoundError, match="no-such-model-here"):
        load_chain("news-riddle", "few-shot", settings=settings)
