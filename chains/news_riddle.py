"""news-riddle: turn a news article into a one-sentence summary, a riddle and its answer.

The seed's flagship app. One-step (summary, riddle and answer in one generation) or two-step
(summarise, then riddle the summary) on any registered strategy::

    from llmapps import load_chain
    chain = load_chain("news-riddle", strategy="few-shot")
    chain.invoke({"title": "...", "text": "..."})   # -> {"summary", "riddle", "answer", "valid", ...}

Generations are parsed tolerantly: a malformed one yields a result with ``valid=False`` and the
reasons, never an exception that would lose the rest of a batch. With structured generation on
(the strategies' ``structured`` option) a chat reply is the task's JSON object and a completion
reply its layout; a reply the backend could not close inside its budget is invalid with the
backend's reason (``constraint_error``), never cut silently. Validity judges content too: a
riddle that repeats the summary or names its answer is not a riddle, whatever its format.

Its own metrics (solvability@k, leakage, copying) are in ``chains/news_riddle_metrics.py``,
registered through the ``llmapps.metrics`` entry points; ``metric_fields`` tells them (and the
fairness audit, augmentation's teacher filter) which fields to read.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Literal

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from pydantic import Field

from chains import news_data
from llmapps.api.apps import AppSpec, MetricFields, UiSpec
from llmapps.api.strategies import Strategy
from llmapps.errors import InputError
from llmapps.options import AppOptions
from prompts import load_task

log = logging.getLogger(__name__)

LABELS = ("summary", "riddle", "answer")
_LABEL_RE = re.compile(
    r"^\s*(?:\[|\*\*)?\s*(summary|riddle|answer)\s*(?:\d+)?\s*(?:\]|\*\*)?\s*:\s*", re.I | re.M
)


_PLACEHOLDER_RE = re.compile(r"^\s*<[^<>]{1,60}>\s*$")
_DELIMITER_RE = re.compile(r"<\s*/?\s*article\b[^>]*>", re.I)


def defuse_delimiters(text: str) -> str:
    """``text`` with look-alikes of the prompt's ``<article>``/``</article>`` delimiters defused.

    The news-riddle prompt hands the article to chat models between those tags; an article that
    contains ``</article>`` itself could otherwise end the data early and pose as instructions.
    """
    return _DELIMITER_RE.sub(
        lambda m: m.group(0).replace("<", "\u2039").replace(">", "\u203a"), text
    )


def validate_article(article: Any) -> dict[str, Any]:
    """Check an input at the edge: a mapping with a non-empty ``text`` (and a title, or one is made).

    Whitespace is normalised and delimiter look-alikes are defused (article text is data).
    """
    if not isinstance(article, dict):
        raise InputError(
            f"an article must be a dict with 'title' and 'text', got {type(article).__name__}"
        )
    text = article.get("text")
    ident = article.get("id") or article.get("title") or "(untitled)"
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"article {ident!r} has an empty 'text': give the article body in 'text'")
    title = str(article.get("title") or "").strip() or text.strip().split(".")[0][:80]
    return {
        **article,
        "title": defuse_delimiters(" ".join(title.split())),
        "text": defuse_delimiters(" ".join(text.split())),
    }


def to_text(output: Any) -> str:
    """Model output (str or chat message) as text."""
    if isinstance(output, BaseMessage):
        return output.text if not isinstance(output.content, str) else output.content
    return str(output)


def parse_fields(
    text: str, expected: tuple[str, ...] = LABELS, leading: str | None = "summary"
) -> dict[str, Any]:
    """Parse labelled fields (``Summary:``, ``[Riddle]:`` ...) or a JSON object out of ``text``.

    ``leading`` names the field a completion starts with unlabelled (the prompt ended on its label).
    Returns the fields found plus ``valid``, ``errors`` and ``raw``; never raises.
    """
    raw = text
    found: dict[str, str] = {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped[: stripped.rfind("}") + 1])
            found = {k: str(obj[k]).strip() for k in expected if k in obj}
        except (json.JSONDecodeError, ValueError):
            found = {}
    if not found:
        matches = list(_LABEL_RE.finditer(text))
        if (
            leading
            and (not matches or matches[0].start() > 0)
            and text[: matches[0].start() if matches else None].strip()
        ):
            head_end = matches[0].start() if matches else len(text)
            found[leading] = text[:head_end].strip()
        for m, nxt in zip(matches, [*matches[1:], None], strict=False):
            key = m.group(1).lower()
            value = text[m.end() : nxt.start() if nxt else len(text)].strip()
            if key not in found and value:
                found[key] = value
    result: dict[str, Any] = {k: found.get(k, "") for k in expected}
    # a small model may copy a format placeholder ("<one sentence>") instead of filling it in
    copied = [k for k in expected if _PLACEHOLDER_RE.match(result[k])]
    for k in copied:
        result[k] = ""
    errors = [
        f"no {k}" + (" (a copied placeholder)" if k in copied else "")
        for k in expected
        if not result[k]
    ]
    if result.get("answer"):
        result["answer"] = result["answer"].splitlines()[0].strip().rstrip(".")
    if result.get("summary"):
        result["summary"] = " ".join(result["summary"].split())
    if result.get("riddle") and result.get("answer"):
        riddle_words = set(re.findall(r"[a-z]+", result["riddle"].lower()))
        named = [
            w
            for w in re.findall(r"[a-z]+", result["answer"].lower())
            if len(w) > 3 and w in riddle_words
        ]
        if named:
            result["names_answer"] = named
            errors.append(f"the riddle names its answer ({', '.join(named)})")
    if result.get("riddle"):  # a grammar guarantees the shape, not the content
        riddle = _words(result["riddle"])
        errors += [
            f"the riddle repeats the {k}"
            for k in ("summary", "answer")
            if _words(result.get(k)) == riddle
        ]
    result.update(valid=not errors, errors=errors, raw=raw)
    return result


def _words(text: Any) -> str:
    return " ".join(re.findall(r"\w+", str(text or "").lower()))


def constraint_error(output: Any) -> str | None:
    """Why a structured reply did not close (the backend's ``constraint_error`` in the message's
    ``response_metadata``); None when it closed or was not constrained."""
    meta = getattr(output, "response_metadata", None) or {}
    reason = meta.get("constraint_error")
    return str(reason) if reason else None


def parse_output(
    output: Any, expected: tuple[str, ...] = LABELS, leading: str | None = "summary"
) -> dict[str, Any]:
    """``parse_fields`` of a strategy's output (text or message), invalid with the reason when
    the backend says its structured reply did not close."""
    result = parse_fields(to_text(output), expected, leading)
    reason = constraint_error(output)
    if reason:
        result["constraint_error"] = reason
        result["errors"].append(f"the structured reply did not close: {reason}")
        result["valid"] = False
    return result


def _parser(expected: tuple[str, ...], leading: str | None) -> Runnable[Any, dict[str, Any]]:
    return RunnableLambda(lambda out: parse_output(out, expected, leading), name="parse")


def _examples() -> list[dict[str, Any]]:
    try:
        return news_data.examples("train")
    except FileNotFoundError:  # pragma: no cover - data folder missing
        return []


class NewsRiddleOptions(AppOptions):
    """What ``build`` accepts (``llmapps run news-riddle --variant two-step``)."""

    variant: Literal["one-step", "two-step"] = Field(
        "one-step", description="one-step, or two-step (summarise, then riddle the summary)"
    )


def build(strategy: Strategy, *, variant: str = "one-step") -> Runnable[Any, dict[str, Any]]:
    """The news-riddle chain on ``strategy``: article dict in, ``{summary, riddle, answer, valid, ...}`` out."""
    examples = _examples()
    validate = RunnableLambda(validate_article, name="validate_article")
    if variant == "one-step":
        task = load_task("news_riddle/one_step", examples)
        gen = strategy.build(task)
        return (validate | gen | _parser(LABELS, "summary")).with_config(
            run_name=f"news-riddle[{strategy.name}]"
        )
    if variant == "two-step":
        summarize = strategy.build(load_task("news_riddle/summarize", examples)) | _parser(
            ("summary",), "summary"
        )
        riddle = strategy.build(load_task("news_riddle/riddle", examples)) | _parser(
            ("riddle", "answer"), "riddle"
        )

        def combine(x: dict[str, Any]) -> dict[str, Any]:
            s, r = x["s"], x["r"]
            errors = s["errors"] + r["errors"]
            if r["riddle"] and _words(r["riddle"]) == _words(s["summary"]):
                errors.append("the riddle repeats the summary")
            out = {
                "summary": s["summary"],
                "riddle": r["riddle"],
                "answer": r["answer"],
                "valid": not errors,
                "errors": errors,
                "raw": s["raw"] + "\n---\n" + r["raw"],
            }
            if "names_answer" in r:
                out["names_answer"] = r["names_answer"]
            reasons = [x["constraint_error"] for x in (s, r) if x.get("constraint_error")]
            if reasons:
                out["constraint_error"] = "; ".join(reasons)
            return out

        chain = (
            validate
            | RunnableParallel(s=summarize, passthrough=RunnablePassthrough())
            | RunnableLambda(
                lambda x: {"s": x["s"], "summary": x["s"]["summary"] or x["passthrough"]["title"]}
            )
            | RunnablePassthrough.assign(r=riddle)
            | RunnableLambda(combine, name="combine")
        )
        return chain.with_config(run_name=f"news-riddle-2step[{strategy.name}]")
    raise InputError(f"unknown news-riddle variant {variant!r}; use one-step or two-step")


APP = AppSpec(
    name="news-riddle",
    description="news article -> one-sentence summary, riddle and answer",
    build=build,
    samples=news_data.samples,
    read_inputs=news_data.read_articles,
    corpus=news_data.corpus,
    training_examples=news_data.examples,  # recipes: data.train: train (or news-riddle:train)
    input_keys=("title", "text"),
    reference_keys=("summary", "riddle", "answer"),
    options=NewsRiddleOptions,
    metric_fields=MetricFields(
        primary="riddle",
        target="riddle",  # the text its own metrics judge (chains/news_riddle_metrics.py)
        answer="answer",
        leak=("answer", "title"),  # a riddle that names its answer or headline gives it away
        copy=("summary", "text"),  # nor may it repeat the summary or the article
        source=("title", "text"),  # the document solvability retrieves by the riddle
    ),
    demo_columns={"riddle": "riddle / output", "answer": "answer"},
    default_for=("demo", "bench"),
    judge_app="riddle-judge",
    ui=UiSpec(
        title="Riddle me this",
        inputs={"title": "Headline", "text": "Article"},
        long_inputs=("text",),
        outputs={"summary": "Summary", "riddle": "Riddle"},
        hidden={"answer": "Answer"},
        reveal="Show the answer",
        rate_fields=("riddle", "answer"),
    ),
)
