"""The one way the browser tests (``test_ui``, ``test_daily``) launch Chromium: a real headless
binary (``$LLMAPPS_CHROMIUM``, else ``chromium``/``chromium-browser``/``google-chrome`` on PATH;
``.ci/apt-packages.txt`` lists what CI installs) driven by Playwright, with a page that records
dialogs and refuses, and records, every request that does not go to loopback; and the scripted
strategy the page tests inject faults with (a "model" whose well-formed output is hostile markup).

A test marked ``needs_chromium()`` skips, saying why, where no binary is installed."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def find_chromium() -> str | None:
    for name in (
        os.environ.get("LLMAPPS_CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
    ):
        if name and (path := shutil.which(name)):
            return path
    return None


CHROMIUM = find_chromium()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def needs_chromium(also: str = "") -> pytest.MarkDecorator:
    """Skip the test where no Chromium binary is installed; ``also`` adds to the reason."""
    return pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium binary on PATH (apt-get install chromium; see .ci/apt-packages.txt)"
        + also,
    )


def sync_playwright(reason: str | None = None) -> Any:
    """Playwright's ``sync_playwright()``, not yet entered; the test skips (with ``reason``, else
    pytest's import error) where Playwright is not installed."""
    playwright = pytest.importorskip("playwright.sync_api", reason=reason)
    return playwright.sync_playwright()


def open_page(
    p: Any, profile: Path, width: int, height: int, *, mobile: bool = False, **context: Any
) -> tuple[Any, Any, list[str], list[str]]:
    """(context, page, dialogs, outside) on the Chromium of ``p`` (a started Playwright), in a
    fresh profile folder at ``profile``, the viewport ``width`` x ``height`` (a phone's touch
    screen when ``mobile``; ``context`` goes to ``launch_persistent_context``). ``dialogs``
    collects the messages of dialogs the page opens (each dismissed); ``outside`` the URLs it
    asked for off loopback (each refused). The caller closes the context."""
    ctx = p.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height},
        is_mobile=mobile,
        has_touch=mobile,
        **context,
    )
    page = ctx.new_page()
    dialogs: list[str] = []
    outside: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith("http://127.0.0.1")
            else (outside.append(route.request.url), route.abort())
        ),
    )
    return ctx, page, dialogs, outside


def scripted_strategy(name: str, reply: Callable[[Any, dict[str, Any]], str]) -> Any:
    """Fault injection: a strategy named ``name`` whose "model" answers ``reply(task, inputs)``
    as a chat message (hostile markup, a record of what it was sent, ...)."""
    from typing import Literal

    from langchain_core.messages import AIMessage
    from langchain_core.runnables import RunnableLambda

    from llmapps.strategies.base import Strategy, StrategyConfig

    class ScriptedConfig(StrategyConfig):
        kind: Literal[name] = name  # type: ignore[valid-type]

    class Scripted(Strategy):
        config_class = ScriptedConfig

        def build(self, task: Any) -> Any:
            return RunnableLambda(lambda inputs: AIMessage(content=reply(task, inputs)))

    Scripted.name = name
    return Scripted()


# An article the page tests type in (the app's own inputs, not a fixture file).
STORY = (
    "The town council voted on Tuesday to rebuild the old stone bridge over the river, after two "
    "years of arguments about its cost and a petition signed by more than three thousand residents."
)


def free_port() -> int:
    """A loopback port nothing listens on now (for the app under test, or as a dead endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
