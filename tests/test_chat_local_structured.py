"""Structured output through our LangChain models (issue 21 item 6), on the tiny instruct model.

``ChatLocal.with_structured_output`` binds the schema as a constraint and parses the reply: a
pydantic class gives its instance, a dict or TypedDict schema a dict, ``include_raw=True`` the
``{"raw", "parsed", "parsing_error"}`` LangChain promises, a reply cut short by its budget a
parsing error that says so (never a dict missing fields). ``LocalLLM`` takes a regex or grammar
through ``.bind(constraint=...)``. The tiny model's content is noise; the shape is what the
constraint guarantees, and what these tests check.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from pydantic import BaseModel
from typing_extensions import TypedDict

from llmapps.models.langchain_local import ChatLocal, LocalLLM, json_schema_of
from llmapps.models.structured import ConstraintError, OutputConstraint

ASK = "Is the cat on the mat?"


class Pick(BaseModel):
    """What the tiny model can always close: an enum and a boolean."""

    animal: Literal["cat", "dog", "bird"]
    sure: bool


class PickDict(TypedDict):
    animal: Literal["cat", "dog", "bird"]
    sure: bool


@pytest.fixture(scope="module")
def chat(tiny_instruct: str) -> ChatLocal:
    # JSON may hold whitespace between its tokens, which the tiny model takes: room for it
    return ChatLocal(model=tiny_instruct, max_new_tokens=160)


def test_a_pydantic_schema_gives_its_instance_invoked_raw_and_streamed(chat: ChatLocal) -> None:
    structured = chat.with_structured_output(Pick)
    assert isinstance(structured.invoke(ASK), Pick)
    out = chat.with_structured_output(Pick, include_raw=True).invoke(ASK)
    assert set(out) == {"raw", "parsed", "parsing_error"} and out["parsing_error"] is None
    assert isinstance(out["raw"], AIMessage) and Pick.model_validate_json(out["raw"].text)
    assert out["parsed"] == Pick.model_validate_json(out["raw"].text)
    chunks = list(structured.stream(ASK))
    assert chunks and chunks[-1] == out["parsed"]  # greedy: streamed and whole agree


def test_dict_and_typeddict_schemas_give_dicts_in_one_batch(chat: ChatLocal) -> None:
    for schema in (PickDict, Pick.model_json_schema()):
        rows = chat.with_structured_output(schema, strict=True).batch([ASK, "Which one barks?"])
        assert [set(r) for r in rows] == [{"animal", "sure"}] * 2, rows
    mode = chat.with_structured_output(Pick, method="json_mode").invoke(ASK)
    assert isinstance(mode, Pick)


def test_a_reply_cut_short_is_a_parsing_error_not_a_partial_dict(chat: ChatLocal) -> None:
    short = chat.model_copy(update={"max_new_tokens": 6})
    out = short.with_structured_output(Pick.model_json_schema(), include_raw=True).invoke(ASK)
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    assert "did not complete its schema" in str(out["parsing_error"])
    assert out["raw"].response_metadata["constraint_error"]
    with pytest.raises(OutputParserException, match="did not complete its schema"):
        short.with_structured_output(PickDict).invoke(ASK)
    assert list(short.stream(ASK))[-1].response_metadata["finish_reason"] == "length"


def test_callbacks_see_the_structured_output_format(chat: ChatLocal) -> None:
    seen: list[Any] = []

    class Options(BaseCallbackHandler):
        def on_chat_model_start(self, *args: Any, options: Any = None, **kw: Any) -> None:
            seen.append(options)

    handler = Options()
    chat.with_structured_output(Pick).batch([ASK, ASK], config={"callbacks": [handler]})
    assert len(seen) == 2
    assert all(o["ls_structured_output_format"]["kwargs"]["method"] == "json_schema" for o in seen)


def test_schemas_from_classes_are_closed_and_arguments_checked(chat: ChatLocal) -> None:
    closed = json_schema_of(Pick, closed=True)
    assert closed["additionalProperties"] is False and "additionalProperties" not in json_schema_of(
        Pick
    )
    with pytest.raises(ValueError, match="needs a schema"):
        chat.with_structured_output(None)
    with pytest.raises(ValueError, match="unsupported arguments"):
        chat.with_structured_output(Pick, tools=[])
    with pytest.raises(ValueError, match="strict is not supported"):
        chat.with_structured_output(Pick, method="json_mode", strict=True)


def test_local_llm_takes_a_regex_or_grammar_through_bind(tiny_base: str) -> None:
    llm = LocalLLM(model=tiny_base, max_new_tokens=12)
    pattern = r"[0-9]{3}-[a-z]{2}"
    texts = llm.bind(constraint=OutputConstraint("regex", pattern)).batch(["The council", "A"])
    assert all(re.fullmatch(pattern, t) for t in texts), texts
    yes_no = llm.bind(constraint=OutputConstraint("grammar", 'root ::= ("yes" | "no")'))
    assert yes_no.invoke("Is it?") in ("yes", "no")
    assert "".join(yes_no.stream("Is it?")) in ("yes", "no")
    with pytest.raises(ConstraintError) as info:
        llm.bind(constraint=OutputConstraint("regex", "([a-z")).invoke("x")
    assert info.value.param == "regex"
