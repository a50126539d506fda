"""``llmapps chat`` and ``llmapps serve`` build their strategy through ``llmapps.compose``, as the
bench, demo, daily and web app do: lora without ``--adapter`` finds (or trains) its demo adapter,
and a strategy that cannot run is one line with its reason and fix. An adapter trained on first
use shows its steps (``StepPrinter`` on stderr, fed by the one training loop's progress hook).

Real parts: the tiny models, the tiny demo adapter (trained into the test home on first use), a
real server on loopback answering over HTTP.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from testkit import serve_namespace

KEY = "compose-surfaces-key"


def _one_line_error(err: str, start: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {start}"), err
    assert "Traceback" not in err and "ConfigError" not in err, err
    return lines[0]


def test_chat_with_lora_finds_its_demo_adapter(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """No --adapter: before, 'invalid options for the lora strategy: adapter: Field required'."""
    from llmapps.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("How much is the white linen shirt?\n/quit\n"))
    argv = ["chat", "--strategy", "lora", "--set", "allow_other_task=true"]
    argv += ["--max-new-tokens", "8", "--session", "compose", "--history-db"]
    rc = main([*argv, str(tmp_path / "h.sqlite")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert sum(ln.startswith("shop: ") for ln in out.out.splitlines()) == 1, out.out
    assert "Field required" not in out.err


def test_chat_with_a_strategy_that_cannot_run_says_why_in_one_line(
    tiny_models: Path, capsys
) -> None:
    from llmapps.cli import main

    base = str(tiny_models / "tiny-instruct")  # a base with no demo recipe
    assert main(["chat", "--strategy", "lora", "--base-model", base]) == 2
    line = _one_line_error(capsys.readouterr().err, "--strategy lora cannot run: ")
    assert f"no demo adapter for the base {base!r}" in line
    assert "llmapps finetune lora --recipe" in line and "adapter=DIR" in line


def test_serve_app_with_lora_finds_its_demo_adapter(tiny_models: Path, tmp_path: Path) -> None:
    """``serve --app boutique --strategy lora`` (no --adapter) as cmd_serve builds it: the composed
    options (the demo adapter) for both the served model and the app's chain; answered over HTTP."""
    import openai

    from llmapps.cli.serve import app_chat, resolve_model, served_options
    from llmapps.serving.app import create_app
    from llmapps.serving.server import serve_in_thread
    from llmapps.settings import ServerSettings
    from tests.conftest import TEST_HOME

    args = serve_namespace(
        "boutique",
        "lora",
        max_new_tokens=8,
        set=["allow_other_task=true"],
        app_option=[f"history_db={tmp_path / 'h.sqlite'}"],
    )
    with served_options(args) as options:
        assert options is not None
        assert Path(options["adapter"]) == TEST_HOME / "adapters" / "news-riddle-tiny"
        lm = resolve_model(args, options)
        app = create_app(
            lm, ServerSettings(api_key=KEY), model_name="boutique", chat=app_chat(args, options)
        )
        with serve_in_thread(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
            reply = client.chat.completions.create(
                model="boutique",
                messages=[{"role": "user", "content": "How much is the white linen shirt?"}],
            )
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].message.content.strip()


def test_serve_with_a_strategy_that_cannot_run_says_why_in_one_line(
    tiny_models: Path, capsys
) -> None:
    from llmapps.cli import main

    base = str(tiny_models / "tiny-instruct")
    argv = ["serve", "--app", "boutique", "--strategy", "lora", "--base-model", base]
    assert main([*argv, "--port", "0"]) == 2
    line = _one_line_error(capsys.readouterr().err, "--strategy lora cannot run: ")
    assert f"no demo adapter for the base {base!r}" in line
    # a strategy with no local model is refused before its defaults start a server
    assert main(["serve", "--app", "boutique", "--strategy", "service", "--port", "0"]) == 2
    _one_line_error(capsys.readouterr().err, "the 'service' strategy has no local model to serve")


def test_an_adapter_given_is_used_as_is_nothing_trained(tmp_path: Path) -> None:
    """--adapter DIR does the defaults' job: no demo adapter is looked for or trained first."""
    from llmapps.compose import strategy_options
    from llmapps.settings import Settings

    settings = Settings(home=tmp_path / "home")  # no models, no adapters: training would fail
    with strategy_options("lora", settings, {"adapter": "/some/adapter"}) as (opts, reason):
        assert opts == {"adapter": "/some/adapter"} and reason is None
    assert not (tmp_path / "home" / "adapters").exists()


def test_the_trainer_reports_its_steps_with_its_own_bar_off(
    tiny_models: Path, tmp_path: Path
) -> None:
    """The registered trainer called as the lora strategy calls it on first use (progress=False):
    inside ``reporting_progress`` it still reports (done, total) at the start and every step."""
    import yaml

    from llmapps.adapters import get_trainer
    from llmapps.training import reporting_progress
    from tests.conftest import ROOT

    recipe = yaml.safe_load((ROOT / "finetune" / "recipes" / "tiny.yaml").read_text())
    recipe["name"] = "progress-probe"
    recipe["training"].update(epochs=1, max_steps=3, save_steps=100, batch_size=2, max_length=384)
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    heard: list[tuple[int, int]] = []
    with reporting_progress(lambda done, total: heard.append((done, total))):
        get_trainer("peft")(str(path), tmp_path / "adapter", overwrite=True, progress=False)
    assert heard == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert (tmp_path / "adapter" / "llmapps-adapter.json").is_file()


@pytest.mark.slow
def test_lora_training_its_adapter_on_first_use_shows_its_steps(
    tiny_models: Path, tmp_path: Path, capsys
) -> None:
    """A fresh home (the tiny models linked in, no adapter): composing lora trains the demo
    adapter, and stderr shows its steps from 0 to the total, as `llmapps ui`, chat, serve,
    daily and the bench print them."""
    from llmapps.adapters import read_manifest
    from llmapps.compose import StepPrinter, compose_strategies
    from llmapps.settings import Settings

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models, target_is_directory=True)
    settings = Settings(home=home)
    with compose_strategies(["lora"], settings=settings) as composed:
        (lora,) = composed
    assert lora.runnable, lora.reason
    adapter = home / "adapters" / "news-riddle-tiny"
    assert Path(lora.options["adapter"]) == adapter
    steps = read_manifest(adapter).metrics["steps"]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "training its adapter" in ln]
    assert lines[0].startswith(f"lora: training its adapter (first use): step 0/{steps}, ")
    assert lines[-1].startswith(f"lora: training its adapter (first use): step {steps}/{steps}")
    assert 3 <= len(lines) <= 12, lines  # a line per tenth on a pipe, not one per step

    # on a terminal the line is rewritten in place, a newline at the end only
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    show = StepPrinter("lora", tty)
    for done in range(0, 5):
        show(done, 4)
    text = tty.getvalue()
    assert text.count("\r") == 5 and text.count("\n") == 1 and "step 4/4" in text
