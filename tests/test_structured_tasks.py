"""Structured generation at the task level (issue 21): the reply shape a task derives once (its
JSON schema after a chat prompt, its layout from the completion example template), the field
budgets that keep a reply inside ``max_new_tokens``, the local strategies' ``structured`` and
repetition options, the app's verdict on replies that did not close or say nothing, and the
bench's sweep over ``structured``. Tiny models; the backends are the real ones."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from testkit import few_shot_bench

from chains.news_riddle import parse_fields, parse_output
from llmapps.apps import load_chain
from llmapps.errors import ConfigError
from llmapps.models.structured import Layout
from llmapps.settings import get_settings
from llmapps.strategies.base import STRATEGIES, make_strategy
from llmapps.tasks import CHARS_PER_TOKEN, FieldSpec
from prompts.loader import list_prompt_files, load_task

LOCAL = ("few-shot", "zero-shot", "lora")
MODEL_FIELD = {"few-shot": "base_model", "zero-shot": "instruct_model"}


def _layout_regex(layout: Layout) -> re.Pattern[str]:
    """The language of a layout as a regex (the test's own reading of the contract)."""
    one_line, lines = "[^\\n]*?", ".*?"
    parts = [
        f"{re.escape(f.before)}(?P<{f.name}>{lines if f.multiline else one_line})"
        for f in layout.fields
    ]
    return re.compile("".join(parts) + re.escape(layout.after), re.S)


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_layout_is_derived_from_the_example_template_and_round_trips() -> None:
    task = load_task("news_riddle/one_step", [])
    constraint = task.output_constraint(chat=False)
    assert constraint is not None and constraint.kind == "layout"
    layout = constraint.value
    assert [(f.name, f.before, f.multiline) for f in layout.fields] == [
        ("summary", " ", False),
        ("riddle", "\n[Riddle]: ", True),
        ("answer", "\n[Answer]: ", False),
    ]
    assert layout.after == ""
    from chains.news_data import examples

    for ex in examples("train")[:20]:  # a worked example's reply is a word of the layout
        reply = task.reference_reply(ex, chat=False)
        assert reply is not None
        match = _layout_regex(layout).fullmatch(reply)
        assert match, reply
        assert {f.name: match[f.name] for f in layout.fields} == {
            k: ex[k] for k in ("summary", "riddle", "answer")
        }


@pytest.mark.parametrize("chat", [False, True], ids=["layout", "json"])
def test_the_engine_accepts_worked_replies(tiny_instruct: str, chat: bool) -> None:
    """The backend's own grammar (not only this test's regex) takes the worked examples' replies
    (budgets wide enough for the tiny tokenizer's short tokens), and refuses a cut one."""
    from dataclasses import replace

    from chains.news_data import examples
    from llmapps.models.llamacpp import load_model

    lm = load_model(tiny_instruct, "transformers")
    wide = (FieldSpec("summary", 400), FieldSpec("riddle", 400, True), FieldSpec("answer", 100))
    task = replace(load_task("news_riddle/one_step", []), fields=wide, max_new_tokens=1000)
    constraint = task.output_constraint(chat=chat)
    assert constraint is not None and constraint.kind == ("grammar" if chat else "layout")
    compiled = lm.compile(constraint)
    for ex in examples("train")[:10]:
        values = {k: ex[k] for k in ("summary", "riddle", "answer")}
        reply = json.dumps(values) if chat else task.reference_reply(ex, chat=False)
        assert reply is not None and "\n" in ex["riddle"]  # the riddles span lines
        assert compiled.check(reply, "stop", 1000) is None, reply
        assert compiled.check(reply[: len(reply) // 2], "length", 1000) is not None
        if chat:
            assert json.loads(reply) == values


def test_every_prompt_file_has_a_shape_and_budgets_fit(tiny_base: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    for path in list_prompt_files():
        task = load_task(path)
        for max_new in (task.max_new_tokens, 64, 24):
            layout = task.output_constraint(
                chat=False, max_new_tokens=max_new, count_tokens=lambda t: _tokens(tok, t)
            )
            assert layout is not None, f"{path}: no layout derived from its example template"
            fields = layout.value.fields
            literals = sum(_tokens(tok, f.before) for f in fields if f.before)
            literals += _tokens(tok, layout.value.after) if layout.value.after else 0
            if max_new >= literals + len(fields):
                assert sum(f.max_tokens for f in fields) + literals <= max_new, (path, max_new)
            if task.json_schema:  # the JSON object's grammar: key text + field budgets
                chat = task.output_constraint(
                    chat=True, max_new_tokens=max_new, count_tokens=lambda t: _tokens(tok, t)
                )
                assert chat is not None
                skeleton = json.dumps({k: "" for k in task.json_schema["properties"]})
                if chat.kind == "json_schema":  # not all strings: capped in characters
                    props = chat.value["properties"].values()
                    chars = sum(p.get("maxLength", 0) for p in props)
                    assert chars <= max_new * CHARS_PER_TOKEN
                    continue
                budgets = [int(n) for n in re.findall(r"max_tokens=(\d+)", chat.value)]
                if max_new >= _tokens(tok, skeleton) + len(budgets):
                    assert sum(budgets) + _tokens(tok, skeleton) <= max_new


def test_declared_budgets_are_kept_and_scaled_when_they_do_not_fit() -> None:
    task = load_task("news_riddle/one_step", [])
    assert task.fields == (
        FieldSpec("summary", 48, False),
        FieldSpec("riddle", 56, True),
        FieldSpec("answer", 10, False),
    )
    assert [f.max_tokens for f in task.field_budgets(200).values()] == [48, 56, 10]
    small = task.field_budgets(57)
    assert sum(f.max_tokens or 0 for f in small.values()) <= 57
    assert small["riddle"].multiline and all((f.max_tokens or 0) >= 1 for f in small.values())
    undeclared = load_task("news_riddle/one_step", []).__class__(
        **{**task.__dict__, "fields": (FieldSpec("riddle", None, True),)}
    )
    shares = undeclared.field_budgets(90)
    assert sum(f.max_tokens or 0 for f in shares.values()) <= 90
    assert shares["summary"].max_tokens == shares["answer"].max_tokens == 30


def test_prompt_file_budgets_over_max_new_tokens_are_refused(tmp_path: Path) -> None:
    from prompts.loader import validate_prompt_file

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ninput_variables: [text]\noutput_variables: [summary]\nmax_new_tokens: 20\n"
        "completion:\n  example_template: 'T: {text}\\nS: {summary}'\n  suffix: 'T: {text}\\nS:'\n"
        "chat:\n  - role: user\n    content: 'Summarise {text}'\n"
        "fields:\n  summary: {max_tokens: 30}\n  nope: {max_tokens: 1}\n"
    )
    with pytest.raises(ConfigError) as info:
        validate_prompt_file(bad)
    assert "sum to 31 tokens, more than max_new_tokens=20" in str(info.value)
    assert "fields names ['nope'], not output variables" in str(info.value)


@pytest.fixture(scope="module")
def local_options(tiny_models: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """Each local strategy's offline options (the tiny models; lora: the tiny demo adapter)."""
    import contextlib

    with contextlib.ExitStack() as stack:
        out = {}
        for name in LOCAL:
            opts = stack.enter_context(STRATEGIES.get(name).demo_options(get_settings()))
            assert opts is not None
            out[name] = opts
        yield out


def test_describe_records_structured_and_repetition_options(
    local_options: dict[str, dict[str, Any]],
) -> None:
    for name in LOCAL:
        strat = make_strategy(
            name,
            **local_options[name],
            structured=True,  # `--set structured=on` arrives as YAML's True
            repetition_penalty=1.15,
            no_repeat_ngram_size=4,
        )
        described = strat.describe()
        assert described["structured"] == "on"
        assert (described["repetition_penalty"], described["no_repeat_ngram_size"]) == (1.15, 4)
        assert make_strategy(name, **local_options[name]).describe()["structured"] == "auto"
        with pytest.raises(ConfigError, match="structured"):
            make_strategy(name, **local_options[name], structured="sometimes")


@pytest.mark.parametrize("name", LOCAL)
def test_structured_on_gives_parseable_replies(
    name: str, local_options: dict[str, dict[str, Any]], test_articles: list[dict[str, Any]]
) -> None:
    chain = load_chain(
        "news-riddle", name, **local_options[name], structured="on", no_repeat_ngram_size=3
    )
    articles = [{k: a[k] for k in ("id", "title", "text")} for a in test_articles[:2]]
    for row in chain.batch(articles):
        assert "constraint_error" not in row, row
        assert all(row[k] for k in ("summary", "riddle", "answer")), row
        if name == "zero-shot":  # a chat reply is the task's JSON object
            assert set(json.loads(row["raw"])) == {"summary", "riddle", "answer"}
        else:
            assert re.fullmatch(r"(?s) [^\n]*\n\[Riddle\]: .*\n\[Answer\]: [^\n]*", row["raw"])


def test_too_small_a_budget_is_invalid_with_the_reason(
    local_options: dict[str, dict[str, Any]], test_articles: list[dict[str, Any]]
) -> None:
    """Three tokens cannot hold the layout's labels: the reply cannot close, and says so."""
    chain = load_chain(
        "news-riddle", "few-shot", **local_options["few-shot"], structured="on", max_new_tokens=3
    )
    row = chain.invoke({k: test_articles[0][k] for k in ("title", "text")})
    assert row["valid"] is False and row["constraint_error"]
    assert any(e.startswith("the structured reply did not close: ") for e in row["errors"])


def test_structured_on_where_it_cannot_be_honoured_is_one_line(
    local_options: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a task whose chat prompt declares no reply shape
    summarize = load_task("news_riddle/summarize", [])
    strat = make_strategy("zero-shot", **local_options["zero-shot"], structured="on")
    with pytest.raises(ConfigError, match=r"^structured=on: the task .* declares no json_schema"):
        strat.build(summarize)
    assert make_strategy("zero-shot", **local_options["zero-shot"]).build(summarize) is not None
    # a backend without a grammar engine (the fault simulated: the engine reports itself missing)
    strat = make_strategy("few-shot", **local_options["few-shot"], structured="on")
    lm = strat.generation_model()
    monkeypatch.setattr(lm, "constraint_refusal", lambda c: "no grammar engine is installed")
    task = load_task("news_riddle/one_step", [])
    with pytest.raises(ConfigError) as info:
        strat.build(task)
    assert str(info.value).startswith("structured=on: no grammar engine is installed")
    assert "\n" not in str(info.value)
    auto = make_strategy("few-shot", **local_options["few-shot"])  # auto: free text instead
    assert auto.build(task) is not None


def test_the_app_judges_content_and_unclosed_replies() -> None:
    same = parse_fields(" The dam opened.\n[Riddle]: The dam opened.\n[Answer]: the new dam")
    assert not same["valid"] and "the riddle repeats the summary" in same["errors"]
    named = parse_fields(" A vote.\n[Riddle]: Hands rise for the election\n[Answer]: the election")
    assert not named["valid"] and "the riddle names its answer (election)" in named["errors"]
    good = parse_fields(' {"summary": "A vote.", "riddle": "Hands rise.", "answer": "a poll"}')
    assert good["valid"]
    cut = AIMessage(
        content='{"summary": "A vote.", "riddle": "Hands',
        response_metadata={"constraint_error": "ran out of tokens in riddle"},
    )
    out = parse_output(cut)
    assert out["valid"] is False and out["constraint_error"] == "ran out of tokens in riddle"
    assert "the structured reply did not close: ran out of tokens in riddle" in out["errors"]


def test_bench_sweeps_structured_side_by_side(tmp_path: Path, tiny_models: Path) -> None:
    from llmapps.bench import BenchConfig, run_bench
    from llmapps.bench.run import parse_sweep

    sweep = parse_sweep(["structured=on,off"])
    assert sweep == {"structured": ["on", "off"]}
    config = few_shot_bench(2, 2, 24, sweep=sweep)
    rows = run_bench(config, tmp_path, progress=False)
    assert [r["strategy"] for r in rows] == ["few-shot[structured=on]", "few-shot[structured=off]"]
    ids = [
        [
            json.loads(line)["id"]
            for line in (tmp_path / "samples" / f"{r['strategy']}.jsonl").open()
        ]
        for r in rows
    ]
    assert ids[0] == ids[1] and len(ids[0]) == 2
    statuses = json.loads((tmp_path / "strategies.json").read_text())
    assert statuses["few-shot[structured=off]"]["config"]["structured"] == "off"
    assert "few-shot[structured=on]" in (tmp_path / "summary.md").read_text()
    from llmapps.bench.run import Bench

    bad = BenchConfig(app="news-riddle", strategies=["few-shot"], sweep={"nope": [1]})
    with pytest.raises(ConfigError, match=r"sweep nope=\[1\]: no strategy of this bench"):
        Bench(bad, tmp_path / "other")
