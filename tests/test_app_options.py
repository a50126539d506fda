"""App options and strategy flags on the command line: ``-O KEY=VALUE`` and ``--KEY VALUE`` reach
the chosen app's options model, unknown or inapplicable options are one-line errors (exit 2) that
name the valid ones, and a flag no chosen strategy has is an error, not silently dropped.

These run no model: every error comes before one is loaded, which the tests also show by timing
nothing and needing no tiny models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from llmapps.cli import build_parser, main
from llmapps.cli.flags import app_flags_to_options, strategy_options
from llmapps.errors import ConfigError


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def test_an_option_for_an_app_that_takes_none_names_the_app(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for flags in (["-O", "variant=x"], ["--variant", "x"], ["--variant=x"]):
        code, err = _run(
            capsys, "run", "riddle-judge", "-i", "x.jsonl", "--out", str(tmp_path / "o"), *flags
        )
        assert code == 2, err
        assert err == "error: the app 'riddle-judge' takes no options (given: 'variant')"


def test_an_unknown_option_lists_the_apps_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = _run(capsys, "run", "news-riddle", "-i", "x", "--out", "o", "--foo", "3")
    assert code == 2 and "\n" not in err
    assert "the app 'news-riddle' has no option 'foo'; its options are variant:" in err


def test_a_bad_value_is_rejected_by_the_apps_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "run", "news-riddle", "-i", "x", "--out", "o", "--variant", "three")
    assert code == 2
    assert "variant='three': Input should be 'one-step' or 'two-step'" in err
    code, err = _run(capsys, "run", "news-qa", "-i", "x", "--out", "o", "-O", "k=0")
    assert code == 2 and "k=0: Input should be greater than or equal to 1" in err


def test_app_flags_become_options_and_the_commands_own_flags_stay() -> None:
    parser = build_parser()
    argv = [
        "run",
        "news-riddle",
        "-i",
        "in.jsonl",
        "--out",
        "o",
        "--variant",
        "two-step",
        "--k=3",
        "--max-new",
        "8",
    ]  # an abbreviation of the command's own flag is its own
    rewritten = app_flags_to_options(parser, argv)
    assert rewritten == [
        "run",
        "news-riddle",
        "-i",
        "in.jsonl",
        "--out",
        "o",
        "-O",
        "variant=two-step",
        "-O",
        "k=3",
        "--max-new",
        "8",
    ]
    args = parser.parse_args(rewritten)
    assert args.app_option == ["variant=two-step", "k=3"] and args.max_new_tokens == 8
    # commands that build no app keep argparse's own error for an unknown flag
    assert app_flags_to_options(parser, ["models", "list", "--foo"]) == ["models", "list", "--foo"]


def test_options_reach_the_app_and_its_model_types_them() -> None:
    from llmapps.apps import get_app
    from llmapps.cli.flags import check_app_options

    args = build_parser().parse_args(
        app_flags_to_options(
            build_parser(), ["run", "news-qa", "-i", "x", "--out", "o", "--k", "6"]
        )
    )
    raw = check_app_options("news-qa", args)
    assert raw == {"k": 6}
    assert get_app("news-qa").parse_options(raw).k == 6  # type: ignore[attr-defined]


def test_dash_o_stays_out_and_says_so_when_it_looks_like_an_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _run(capsys, "run", "news-riddle", "-i", "x.jsonl", "-o", "variant=two-step")
    assert code == 2
    assert err == (
        "error: -o is --out (the results file), not an app option; did you mean -O variant=two-step?"
    )


def test_a_strategy_flag_that_does_not_apply_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _run(
        capsys,
        "run",
        "news-riddle",
        "-s",
        "zero-shot",
        "-i",
        "x",
        "--out",
        "o",
        "--base-model",
        "m",
    )
    assert code == 2, err
    assert err.startswith(
        "error: --base-model does not apply to the 'zero-shot' strategy (it is an option of few-shot, lora)"
    )
    assert "instruct_model" in err  # the options it does have
    code, err = _run(capsys, "run", "news-riddle", "-i", "x", "--out", "o", "--set", "nope=1")
    assert (
        code == 2
        and "--set nope does not apply to the 'few-shot' strategy (no strategy has it)" in err
    )


def test_with_several_strategies_a_flag_goes_to_those_that_have_it() -> None:
    args = argparse.Namespace(
        strategies="few-shot,lora",
        adapter="ad",
        base_model=None,
        instruct_model=None,
        max_new_tokens=5,
        batch_size=2,
        set=[],
    )
    assert strategy_options("lora", args) == {"adapter": "ad", "max_new_tokens": 5, "batch_size": 2}
    assert strategy_options("few-shot", args) == {"max_new_tokens": 5, "batch_size": 2}
    args.strategies = "few-shot,zero-shot"
    with pytest.raises(
        ConfigError,
        match=r"--adapter does not apply to the 'few-shot' and 'zero-shot' strategies \(it is an option of lora\)",
    ):
        strategy_options("few-shot", args)


def test_batch_size_is_the_commands_own_too_and_never_an_error() -> None:
    args = argparse.Namespace(
        strategy="service",
        batch_size=3,
        set=[],
        base_model=None,
        instruct_model=None,
        adapter=None,
        max_new_tokens=None,
    )
    assert strategy_options("service", args) == {}  # the run's batch, not a service option


def test_apps_lists_the_options_of_every_app(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apps"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "-O KEY=VALUE" in out and "variant" in out


def test_an_unknown_strategy_option_in_the_library_names_the_valid_ones() -> None:
    from llmapps.apps import load_chain

    with pytest.raises(
        ConfigError, match=r"(?s)adapter: Extra inputs.*its options: backend, base_model"
    ):
        load_chain("news-riddle", "few-shot", adapter="x")


def test_serve_checks_the_apps_options_before_loading_a_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _run(capsys, "serve", "--app", "boutique", "-O", "bogus=1", "--port", "0")
    assert code == 2 and "\n" not in err
    assert err.startswith("error: the app 'boutique' has no option 'bogus'; its options are index:")
