"""The command line's registration hook: every command, the core's and the apps', is an entry
point ``register(subparsers, flags)`` handed the shared flags module (issue 24)."""

from __future__ import annotations

import argparse
import inspect
import logging
from importlib.metadata import entry_points
from typing import Any

import pytest

from llmapps.cli import build_parser, flags, register_commands


class EP:
    """An entry point's two parts the dispatcher reads (its name, what it loads)."""

    def __init__(self, name: str, fn: Any) -> None:
        self.name, self.fn = name, fn

    def load(self) -> Any:
        return self.fn


def _commands() -> list[Any]:
    return list(entry_points(group="llmapps.cli"))


def test_every_command_is_an_entry_point_taking_subparsers_and_flags() -> None:
    eps = _commands()
    names = {ep.name for ep in eps}
    # the core's commands register exactly like the apps' and finetune's
    assert {"run", "demo", "models", "bench", "serve", "ui", "index", "news"} <= names
    assert {"chat", "ask", "daily", "finetune"} <= names
    for ep in eps:
        params = list(inspect.signature(ep.load()).parameters)
        assert params[:2] in (["subparsers", "flags"], ["sub", "flags"]), (ep.value, params)


def test_the_parser_has_every_core_and_app_command() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("strategies", "apps", "metrics", "run", "demo", "models", "bench", "evaluate"):
        assert name in sub.choices
    for name in ("human-eval", "serve", "ui", "index", "news", "data", "audit"):
        assert name in sub.choices
    for name in ("chat", "ask", "annotate", "daily", "finetune"):
        assert name in sub.choices


def test_a_plugin_is_handed_the_flags_module_and_an_old_one_the_subparsers_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def new_style(subparsers: Any, handed: Any) -> None:
        seen["new"] = handed
        p = subparsers.add_parser("new-style")
        handed.add(p, "limit", out={"required": True, "help": "where"})

    def old_style(subparsers: Any) -> None:
        seen["old"] = True
        subparsers.add_parser("old-style")

    import llmapps.cli as cli

    monkeypatch.setattr(
        "importlib.metadata.entry_points",
        lambda group: [EP("new", new_style), EP("old", old_style)],
    )
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register_commands(sub)
    assert seen == {"new": flags, "old": True} and cli.flags is flags
    args = parser.parse_args(["new-style", "--out", "x", "--limit", "3"])
    assert (args.out, args.limit) == ("x", 3)


def test_a_broken_plugin_is_a_warning_and_the_others_still_register(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(subparsers: Any, handed: Any) -> None:
        raise RuntimeError("boom")

    def fine(subparsers: Any, handed: Any) -> None:
        subparsers.add_parser("fine")

    monkeypatch.setattr(
        "importlib.metadata.entry_points", lambda group: [EP("broken", broken), EP("fine", fine)]
    )
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    with caplog.at_level(logging.WARNING, logger="llmapps"):
        register_commands(sub)
    assert "CLI plugin broken failed to load: boom" in caplog.text
    assert "fine" in sub.choices


def test_shared_flags_take_a_commands_own_help_or_keywords() -> None:
    p = argparse.ArgumentParser()
    flags.add(p, "quiet", "seed", split={"default": "train"}, out="the file")
    args = p.parse_args(["-q", "-o", "f"])
    assert (args.quiet, args.seed, args.split, args.out) == (True, 0, "train", "f")
    help_text = p.format_help()
    assert "the file" in help_text and "no progress bar" in help_text
    with pytest.raises(KeyError):
        flags.add(p, "no-such-flag")
    groups = argparse.ArgumentParser().add_subparsers()
    actions = flags.add_group(groups, "thing", "do things")
    actions.add_parser("one")
    assert actions.dest == "thing_command" and actions.required
