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


def _task(max_new_tokens: int) -> Any:
    from langchain_core.prompts import ChatPromptTemplate

    from llmapps.tasks import CompletionLayout, Task

    return Task(
        name="toy",
        input_variables=("text",),
        output_variables=("title",),
        completion=CompletionLayout("Title the text.", "{text}\nTitle: {title}", "{text}\nTitle:"),
        chat=ChatPromptTemplate.from_messages([("user", "Title this: {text}")]),
        max_new_tokens=max_new_tokens,
    )


def test_a_tasks_budget_is_the_options_else_the_tasks_and_the_settings() -> None:
    from llmapps.api.generation import Budget

    settings = get_settings()
    prompt = settings.generation.max_prompt_tokens
    few = make_strategy("few-shot", settings)
    assert few.budget(_task(50)) == Budget(max_new_tokens=50, max_prompt_tokens=prompt)
    given = make_strategy("few-shot", settings, max_new_tokens=7, max_prompt_tokens=64)
    assert given.budget(_task(50)) == Budget(max_new_tokens=7, max_prompt_tokens=64)
    other = settings.generation.model_copy(update={"max_prompt_tokens": 300})
    zero = make_strategy("zero-shot", settings.model_copy(update={"generation": other}))
    assert zero.budget(_task(50)) == Budget(max_new_tokens=50, max_prompt_tokens=300)


def test_a_strategy_made_without_settings_keeps_the_environments_of_that_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmapps.strategies.base import make_strategy as contract_make

    monkeypatch.setenv("LLMAPPS_BASE_MODEL", "first-base")
    strategy = contract_make("few-shot")  # no settings: the one fallback, read now
    monkeypatch.setenv("LLMAPPS_BASE_MODEL", "second-base")
    assert strategy.settings.base_model == "first-base"
    assert strategy.resolved.base_model == "first-base"


def test_the_service_strategys_local_server_is_handed_in_by_compose() -> None:
    from llmapps.compose import local_server
    from llmapps.strategies.service import ServiceStrategy

    settings = get_settings()
    no_endpoint = settings.model_copy(
        update={"service": settings.service.model_copy(update={"base_url": None})}
    )
    with ServiceStrategy.demo_options(no_endpoint) as opts:  # nothing handed in: no default
        assert opts is None
    assert local_server() is not None  # llmapps serve, by its llmapps.servers entry point


def test_generation_backend_takes_any_registered_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmapps.api.backends import BACKENDS
    from llmapps.errors import ConfigError
    from llmapps.models.loader import resolve_backend

    # a third backend registered the way a plugin's entry point registers (here: the
    # transformers backend's class under another name), for this test only
    BACKENDS.names()
    monkeypatch.setattr(
        BACKENDS, "_lazy", {**BACKENDS._lazy, "plugin": "llmapps.models.local:TransformersBackend"}
    )
    monkeypatch.setenv("LLMAPPS_GENERATION__BACKEND", "plugin")
    settings = get_settings()
    assert settings.generation.backend == "plugin"
    assert resolve_backend(None, "some-model", settings) == "plugin"
    monkeypatch.setenv("LLMAPPS_GENERATION__BACKEND", "no-such-backend")
    with pytest.raises(
        ConfigError,
        match=r"^generation.backend \(LLMAPPS_GENERATION__BACKEND\) 'no-such-backend' is not a "
        r"registered model backend; registered: llama\.cpp, plugin, transformers$",
    ):
        resolve_backend(None, "some-model", get_settings())
