"""One conformance suite for every registered strategy (``STRATEGIES.names()``).

Each strategy runs under its own ``demo_options(settings)`` (skipped when it yields None), so a new
strategy registered through an entry point is picked up here with no edit. Two contracts:

- the generic one, on a toy ``Task`` built in this file (not the news app): ``build(task)`` gives a
  Runnable whose ``invoke`` returns text (str or message) and whose ``batch`` gives one result per
  input, in order, equal to ``invoke`` under greedy settings; unknown options are a ``ConfigError``;
- the news-riddle one, through ``load_chain``: the result dict contract, batch == invoke, and an
  empty article is an ``InputError`` naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate

from llmapps.apps import load_chain
from llmapps.compose import demo_options
from llmapps.errors import ConfigError, InputError
from llmapps.settings import get_settings
from llmapps.strategies.base import STRATEGIES, Strategy, make_strategy
from llmapps.tasks import CompletionLayout, Task

NAMES = STRATEGIES.names()
# The local strategies run the same contract on their second backend: llama.cpp, with the packaged
# SmolLM2-135M-Instruct GGUF (skipped where llama-cpp-python or the model package is missing).
LLAMACPP_VARIANTS = {
    "few-shot@llama.cpp": ("few-shot", "base_model"),
    "zero-shot@llama.cpp": ("zero-shot", "instruct_model"),
}
RESULT_KEYS = {"summary", "riddle", "answer", "valid", "errors", "raw"}

TOY_TASK = Task(
    name="toy-headline",
    input_variables=("text",),
    output_variables=("headline",),
    completion=CompletionLayout(
        prefix="Write a headline for each text.",
        example_template="Text: {text}\nHeadline: {headline}",
        suffix="Text: {text}\nHeadline:",
    ),
    chat=ChatPromptTemplate.from_messages(
        [("system", "You write headlines."), ("human", "Write a headline for this text.\n{text}")]
    ),
    examples=(
        {"text": "The river rose after a week of rain.", "headline": "River rises"},
        {"text": "The school opened a new library.", "headline": "New library opens"},
    ),
    stop=("\n",),
    max_new_tokens=12,
    truncate_variable="text",
)
TOY_INPUTS = [
    {"text": "The council approved a new bridge over the harbour."},
    {"text": "Rain."},
    {"text": "Scientists counted more birds on the island this spring than in any year before."},
]


def test_builtins_are_registered() -> None:
    assert {"few-shot", "zero-shot"} <= set(NAMES)


def _llamacpp_options(model_field: str) -> dict[str, Any]:
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend needs llama-cpp-python")
    from llmapps.errors import ModelNotFoundError
    from llmapps.models.packaged import gguf_path

    try:
        gguf_path("smollm2-135m-instruct")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    return {"backend": "llama.cpp", model_field: "smollm2-135m-instruct"}


@pytest.fixture(scope="module", params=[*NAMES, *LLAMACPP_VARIANTS])
def strategy_setup(
    request: pytest.FixtureRequest, tiny_models: Any
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, options) with the strategy's offline demo options entered for the whole module."""
    name = request.param
    variant: dict[str, Any] = {}
    if name in LLAMACPP_VARIANTS:
        name, model_field = LLAMACPP_VARIANTS[name]
        variant = _llamacpp_options(model_field)
    cls = STRATEGIES.get(name)
    with contextlib.ExitStack() as stack:
        options = stack.enter_context(demo_options(name, get_settings()))
        if options is None:
            pytest.skip(f"{name}: not available offline here (demo_options yielded None)")
        # greedy and short, so batch == invoke is a fair check and the suite stays fast
        opts = {**options, **variant}
        fields = cls.config_class.model_fields
        if "temperature" in fields:
            opts.setdefault("temperature", 0.0)
        # float32 on transformers: dtype auto is bf16 on CPUs with native bf16 (AMX Xeons), where
        # the toy LoRA's greedy text flips a near-tied token between a padded batch and one row
        # (at token 19 here, on the pre-session code too); batch == invoke is a float32 claim
        if "dtype" in fields and opts.get("backend") != "llama.cpp":
            opts.setdefault("dtype", "float32")
        yield name, opts


def _text(out: Any) -> str:
    if isinstance(out, BaseMessage):
        return out.text if not isinstance(out.content, str) else out.content
    assert isinstance(out, str), (
        f"a strategy's Runnable must return str or a message, got {type(out)}"
    )
    return out


def test_strategy_class_contract(strategy_setup: tuple[str, dict[str, Any]]) -> None:
    name, opts = strategy_setup
    cls = STRATEGIES.get(name)
    assert issubclass(cls, Strategy)
    assert cls.name == name
    assert cls.summary and cls.requires
    assert cls.config_class.model_config.get("extra") == "forbid"
    strat = make_strategy(name, **opts)
    described = strat.describe()
    assert described["kind"] == name
    assert "api_key" not in str(described) or "**" in str(described.get("api_key", "**"))


def test_generic_build_invoke_and_batch(strategy_setup: tuple[str, dict[str, Any]]) -> None:
    name, opts = strategy_setup
    try:
        runnable = make_strategy(name, **opts).build(TOY_TASK)
    except ConfigError as err:
        # A strategy may refuse a task it was not made for (a LoRA adapter trained on another
        # task); the refusal must be a ConfigError that names the task.
        assert TOY_TASK.name in str(err)
        pytest.skip(f"{name} refuses tasks it was not trained for: {err}")
    single = [_text(runnable.invoke(x)) for x in TOY_INPUTS]
    batched = [_text(o) for o in runnable.batch(TOY_INPUTS)]
    assert len(batched) == len(TOY_INPUTS)
    assert batched == single


# Gaps found by this suite and left to the owner of the strategy; strict, so a fix turns them red.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def test_generic_stop_strings_are_honoured(
    strategy_setup: tuple[str, dict[str, Any]], request: pytest.FixtureRequest
) -> None:
    name, opts = strategy_setup
    if (name, "stop") in KNOWN_GAPS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_GAPS[(name, "stop")], strict=True))
    try:
        runnable = make_strategy(name, **opts).build(TOY_TASK)
    except ConfigError as err:
        pytest.skip(f"{name} refuses tasks it was not trained for: {err}")
    outs = [_text(o) for o in runnable.batch(TOY_INPUTS)]
    assert all("\n" not in t for t in outs), f"the task's stop strings must end the text: {outs}"


def test_unknown_option_is_a_config_error_naming_the_field(
    strategy_setup: tuple[str, dict[str, Any]],
) -> None:
    name, opts = strategy_setup
    with pytest.raises(
        ConfigError, match=rf"(?s)invalid options for the '{name}' strategy:.*no_such_option"
    ):
        make_strategy(name, **opts, no_such_option=1)


def test_news_riddle_contract(
    strategy_setup: tuple[str, dict[str, Any]], test_articles: list[dict[str, Any]]
) -> None:
    name, opts = strategy_setup
    chain = load_chain("news-riddle", name, **opts)
    articles = [{"id": a["id"], "title": a["title"], "text": a["text"]} for a in test_articles[:3]]
    single = [chain.invoke(a) for a in articles]
    for result in single:
        assert set(result) >= RESULT_KEYS
        assert isinstance(result["valid"], bool)
        assert isinstance(result["errors"], list)
        assert isinstance(result["raw"], str)
        assert result["valid"] == (not result["errors"])
    batched = chain.batch(articles)
    assert len(batched) == len(articles)
    assert [b["raw"] for b in batched] == [s["raw"] for s in single]


def test_news_riddle_empty_article_is_an_input_error(
    strategy_setup: tuple[str, dict[str, Any]],
) -> None:
    name, opts = strategy_setup
    chain = load_chain("news-riddle", name, **opts)
    with pytest.raises(InputError, match=r"article 'empty-one' has an empty 'text'"):
        chain.invoke({"id": "empty-one", "title": "Nothing", "text": "   "})


def test_news_riddle_unknown_option_lists_the_field(
    strategy_setup: tuple[str, dict[str, Any]],
) -> None:
    name, opts = strategy_setup
    with pytest.raises(ConfigError, match=r"temprature"):
        load_chain("news-riddle", name, **opts, temprature=0.5)
