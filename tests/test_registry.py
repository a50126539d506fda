"""The generic Registry: decorator and lazy entries, duplicates, did-you-mean, entry points."""

from __future__ import annotations

import pytest

from llmapps.apps import APPS
from llmapps.errors import ConfigError, UnknownComponentError
from llmapps.registry import Registry
from llmapps.strategies.base import STRATEGIES


def test_decorator_registers_and_get_returns_the_object() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("blue-widget")
    class Blue:
        pass

    assert reg.get("blue-widget") is Blue
    assert "blue-widget" in reg
    assert reg.names() == ["blue-widget"]


def test_registering_the_same_object_twice_is_harmless_but_a_different_one_fails() -> None:
    reg: Registry[object] = Registry("widget")
    obj = object()
    reg.register("one", obj)
    reg.register("one", obj)
    with pytest.raises(ConfigError, match="widget 'one' is already registered"):
        reg.register("one", object())


def test_names_must_be_kebab_case() -> None:
    reg: Registry[object] = Registry("widget")
    for bad in ("Few_Shot", "few shot", "-x", "fewShot"):
        with pytest.raises(ConfigError, match="must be kebab-case"):
            reg.register(bad, object())


def test_lazy_entry_is_imported_on_first_lookup() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add_lazy("joiner", "os.path:join")
    import os.path

    assert reg.get("joiner") is os.path.join
    with pytest.raises(ConfigError, match="widget 'joiner' is already registered"):
        reg.add_lazy("joiner", "os.path:split")


def test_unimportable_lazy_entry_names_its_target() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add_lazy("ghost", "no_such_module_xyz:thing")
    with pytest.raises(ConfigError, match=r"widget 'ghost' points to 'no_such_module_xyz:thing'"):
        reg.get("ghost")


def test_unknown_name_suggests_close_matches_and_lists_all() -> None:
    reg: Registry[object] = Registry("widget")
    reg.register("few-shot", object())
    reg.register("zero-shot", object())
    with pytest.raises(
        UnknownComponentError, match=r"Did you mean 'few-shot'.*Known: few-shot, zero-shot"
    ):
        reg.get("fewshot")
    with pytest.raises(
        UnknownComponentError, match=r"unknown widget 'qqq'\. Known: few-shot, zero-shot"
    ):
        reg.get("qqq")


def test_builtins_come_from_entry_points() -> None:
    assert {"few-shot", "zero-shot"} <= set(STRATEGIES.names())
    assert "news-riddle" in APPS.names()
    from llmapps.strategies.few_shot import FewShotStrategy

    assert STRATEGIES.get("few-shot") is FewShotStrategy


def test_two_packages_claiming_one_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import llmapps.registry as registry_module

    eps = [
        EntryPoint("dup", "pkg_a:Thing", "llmapps.test-group"),
        EntryPoint("dup", "pkg_b:Thing", "llmapps.test-group"),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)
    reg: Registry[object] = Registry("widget", group="llmapps.test-group")
    with pytest.raises(
        ConfigError, match="two packages register the widget 'dup': pkg_a:Thing and pkg_b:Thing"
    ):
        reg.names()
