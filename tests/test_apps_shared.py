"""Shared tests for every registered app (``APPS.names()``) on every strategy, with no app-specific code.

Each app is built on each strategy (under the strategy's offline demo options, tiny models
pinned by the conftest's ``LLMAPPS_BASE_MODEL`` / ``LLMAPPS_INSTRUCT_MODEL``), answers the first
bundled samples of its test split in one ``batch`` (one result per input, in order), and a bench
of those samples writes one scored row per sample. A new app registered through an entry point is
picked up here without an edit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmapps.apps import APPS, load_chain
from llmapps.compose import demo_options
from llmapps.settings import get_settings
from llmapps.strategies.base import STRATEGIES

APP_NAMES = APPS.names()
N_SAMPLES = 2


def test_models_are_pinned_to_the_tiny_ones() -> None:
    s = get_settings()
    assert (s.base_model, s.instruct_model) == ("tiny-base", "tiny-instruct")


@pytest.fixture(scope="module", params=STRATEGIES.names())
def strategy(
    request: pytest.FixtureRequest, tiny_models: Path
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, options): the strategy's demo options, short greedy outputs, adapters allowed on
    other apps' tasks (a strategy with such an option, e.g. ``lora``)."""
    name = request.param
    cls = STRATEGIES.get(name)
    with contextlib.ExitStack() as stack:
        options = stack.enter_context(demo_options(name, get_settings()))
        if options is None:
            pytest.skip(f"{name}: not available offline here (demo_options yielded None)")
        fields = cls.config_class.model_fields
        extra = {"max_new_tokens": 16, "temperature": 0.0, "allow_other_task": True}
        yield name, {**options, **{k: v for k, v in extra.items() if k in fields}}


def _inputs(spec: Any) -> list[dict[str, Any]]:
    samples = spec.samples("test")[:N_SAMPLES]
    keys = ("id", *spec.input_keys)
    return [{k: s[k] for k in keys if k in s} for s in samples]


@pytest.mark.parametrize("app", APP_NAMES)
def test_app_builds_and_answers_its_samples(app: str, strategy: tuple[str, dict[str, Any]]) -> None:
    name, options = strategy
    spec = APPS.get(app)
    chain = load_chain(app, name, **options)
    assert hasattr(chain, "invoke") and hasattr(chain, "batch")
    if spec.samples is None:
        pytest.skip(f"{app} ships no samples")
    inputs = _inputs(spec)
    assert inputs, f"{app} has an empty test split"
    outs = chain.batch(inputs)
    assert len(outs) == len(inputs)
    for out in outs:
        assert isinstance(out, dict) and "valid" in out, f"{app} on {name}: {out!r}"


@pytest.mark.parametrize("app", [a for a in APP_NAMES if APPS.get(a).samples is not None])
def test_bench_writes_a_scored_row_per_sample(
    app: str, strategy: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    from llmapps.bench.run import Bench, BenchConfig

    name, options = strategy
    config = BenchConfig(
        app=app,
        strategies=[name],
        limit=N_SAMPLES,
        batch_size=N_SAMPLES,
        perplexity=False,
        strategy_options={name: options},
    )
    bench = Bench(config, tmp_path / "bench", progress=False)
    (summary,) = bench.run()
    rows = bench.rows(name)
    assert summary["status"] == "ran", summary
    assert len(rows) == N_SAMPLES and all("metrics" in r and "latency_s" in r for r in rows), rows
    spec = APPS.get(app)
    if spec.score is not None:  # an app with its own metrics gets them in every row
        assert all(
            set(spec.score(s, r)) <= set(r["metrics"])
            for s, r in zip(bench.samples, rows, strict=False)
        )
    for column in spec.metric_columns:  # the app's own metrics reach the summary when it scores any
        if any(column in r["metrics"] for r in rows):
            assert column in summary


@pytest.mark.parametrize("app", APP_NAMES)
def test_app_options_are_a_typed_model_that_matches_build(app: str) -> None:
    """``AppSpec.options`` is an ``AppOptions`` model (extra options rejected), every option has a
    default and a description (``llmapps apps`` shows it), and ``build`` takes each one."""
    import inspect

    from llmapps.errors import ConfigError
    from llmapps.options import AppOptions

    spec = APPS.get(app)
    assert issubclass(spec.options, AppOptions), f"{app}: options must subclass AppOptions"
    assert spec.options.model_config.get("extra") == "forbid"
    spec.parse_options({})  # every option has a default
    fields = spec.options.model_fields
    assert all(f.description for f in fields.values()), f"{app}: describe every option"
    params = inspect.signature(spec.build).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        assert set(fields) <= set(params), f"{app}: build does not take {set(fields) - set(params)}"
    # an unknown option is refused by name, before any model loads
    with pytest.raises(ConfigError, match=rf"the app '{app}' (has no option|takes no options)"):
        load_chain(app, "few-shot", app_options={"no_such_option": 1})


@pytest.mark.parametrize("app", APP_NAMES)
def test_metric_fields_and_demo_columns_name_the_apps_own_keys(app: str) -> None:
    spec = APPS.get(app)
    f = spec.metric_fields
    for name in (f.primary, f.riddle, f.answer):
        assert name is None or name in spec.reference_keys, f"{app}: {name!r} is no reference key"
    known = {*spec.reference_keys, *spec.input_keys}
    assert set(f.leak) | set(f.copy) <= known and set(f.source) <= set(spec.input_keys)
    assert set(spec.demo_columns) <= set(spec.reference_keys) or not spec.reference_keys


def test_each_command_has_at_most_one_default_app() -> None:
    from collections import Counter

    counts = Counter(c for a in APP_NAMES for c in APPS.get(a).default_for)
    assert all(n == 1 for n in counts.values()), counts


@pytest.mark.parametrize("app", [a for a in APP_NAMES if APPS.get(a).samples is not None])
def test_demo_shows_the_apps_own_columns(
    app: str, tiny_models: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``llmapps demo`` titles its columns from ``AppSpec.demo_columns`` (or the reference keys),
    with the sample's references above the outputs: nothing of the app is in demo.py."""
    from llmapps.cli import main

    monkeypatch.setenv("COLUMNS", "240")  # one line per cell, so the headers read whole
    assert (
        main(
            ["demo", "--app", app, "-n", "1", "--strategies", "zero-shot", "--max-new-tokens", "8"]
        )
        == 0
    )
    out = capsys.readouterr().out
    spec = APPS.get(app)
    for title in (spec.demo_columns or {k: k for k in spec.reference_keys}).values():
        assert title in out, f"{app}: no {title!r} column in\n{out}"
    assert "reference" in out and "per strategy" in out
