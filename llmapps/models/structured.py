"""Structured generation: the contract every backend honours.

An ``OutputConstraint`` says what shape a reply must take; ``GenerationParams.constraint`` carries
it to a backend, which constrains decoding to it (token masks: the model can only write what the
grammar allows). Kinds, with the servers users compare us with:

- ``json_schema``: a JSON schema (dict) — OpenAI ``response_format: json_schema``, vLLM
  ``structured_outputs.json``, llama-server ``json_schema``; ``{}`` or ``True`` means any JSON object
  (``response_format: json_object`` without a schema).
- ``regex``: a regular expression the whole reply matches (vLLM ``structured_outputs.regex``).
- ``choice``: a list of strings, the reply is exactly one of them (vLLM ``structured_outputs.choice``).
- ``grammar``: a grammar text (Lark, or GBNF as llama.cpp writes it) (vLLM ``grammar``, llama-server
  ``grammar``).
- ``layout``: a completion layout — literal text and fields in order, each field with a token
  budget (``Layout``), derived from a task's example template (``[Summary]: …\\n[Riddle]: …``).

The backends apply a compiled constraint through ``grammar_masks`` (their logits processors).
A constraint that cannot be compiled raises ``ConstraintError`` (an ``InputError``) naming the
field at fault (``param``), before any token is generated: the server answers it with 400.

**The engine: llguidance**, chosen by measurement (``benchmarks/bench_structured.py --engines``,
``benchmarks/results/bench_structured_engines.json``; 2 CPU cores shared with other jobs, the
news-riddle schema, a batch of 16 matchers walking a real 50-token reply):

===================================  =============  ================  ==============
                                     llguidance     xgrammar          outlines-core
===================================  =============  ================  ==============
tokenizer model, SmolLM2 49k (once)  2.2 s          0.9 s             2.0 s
tokenizer model, Gemma 262k (once)   7.3-10.4 s     3.0 s             3.1 s
schema compile 49k, cold / warm      20 / 1 ms      53 / 7 ms         434 ms
schema compile 262k, cold / warm     29 / 1-6 ms    103 / 84 ms       1,482 ms
mask + advance per step, batch 16    0.30 / 0.24    0.12 / 0.68 ms    6.9 / 19.1 ms
(49k / 262k)
JSON schema, regex, choice           yes            yes               regex only
Lark grammar, per-rule token budget  yes            EBNF, no budgets  no grammars
GBNF (llama.cpp grammars)            converted      yes               no
transformers 5.24                    our processor  its hf processor  our processor
install                              7.6 MB         3.9 MB + triton   5.3 MB
                                                    999 MB + torch
===================================  =============  ================  ==============

llguidance and xgrammar are both far inside the budget (a decoding step of Gemma at batch 16 is
tens of ms on CPU; the mask is under 1 ms). llguidance wins on what the contract needs: a layout
field's token budget is a Lark rule attribute (``f[max_tokens=N]``), so a field cannot run away
and a reply closes inside ``max_new_tokens``; one engine and one grammar serve both backends
(transformers through ``TorchGrammarProcessor``, llama.cpp through ``NumpyGrammarProcessor``
over the GGUF's own vocabulary, so the two backends constrain to the same language and judge
replies alike; llama.cpp's own GBNF sampler has no token budgets); and it pulls no triton.
Its slow part is building the tokenizer model for a 262k vocabulary (seconds, once per tokenizer
per process, then cached in memory); a schema compiles in milliseconds, so compiled grammars are
cached in memory only, keyed by the tokenizer's fingerprint and ``OutputConstraint.key``.

Decoding only masks: disallowed tokens get ``-inf``, allowed logits are never rescaled, so where
the unconstrained greedy reply already fits, the constrained one is the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The constraint types are the generation contract (llmapps.api.generation); importable from here.
from llmapps.api.generation import CONSTRAINT_KINDS as CONSTRAINT_KINDS
from llmapps.api.generation import ConstraintError as ConstraintError
from llmapps.api.generation import ConstraintKind as ConstraintKind
from llmapps.api.generation import Layout as Layout
from llmapps.api.generation import LayoutField as LayoutField
from llmapps.api.generation import OutputConstraint as OutputConstraint
from llmapps.errors import BackendError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ the engine (llguidance)

# Whitespace JSON may hold between tokens: one space, or one newline and an indent, so a small
# model cannot spend its tokens on blank lines (llguidance's default is any run of whitespace:
# SmolLM2 wrote "\n\n,\n\n" between fields and ran out of tokens in 1 of 4 replies); both
# json.dumps' and pretty-printed JSON still fit.
JSON_WHITESPACE = r"(\x20|\x0A[\x20\x09]{0,8})?"
# compiled grammars kept per (tokenizer fingerprint, constraint key)
_CACHE_SIZE = 64

INSTALL_HINT = 'pip install -c constraints.txt "llguidance>=1.9"'


def engine_refusal() -> str | None:
    """Why this process cannot constrain decoding (llguidance missing); None when it can."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return f"structured generation needs llguidance, which is not installed: {INSTALL_HINT}"
    return None


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise ConstraintError(f"not JSON-serialisable: {err}", param="json_schema") from err


def grammar_of(constraint: OutputConstraint) -> tuple[str, str]:
    """The llguidance grammar for ``constraint`` and the field to blame when it does not compile.

    Raises:
        ConstraintError: the value has the wrong type for its kind (a schema that is not an
            object, an empty choice list, a layout that is not a ``Layout``...).
    """
    from llguidance import LLMatcher

    kind, value = constraint.kind, constraint.value
    if kind == "json_schema":
        if value is True or value == {} or value is None:
            value = {"type": "object"}  # response_format json_object: any JSON object
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as err:
                raise ConstraintError(
                    f"the JSON schema is not valid JSON: {err}", param="json_schema"
                ) from err
        if not isinstance(value, dict):
            raise ConstraintError(
                f"a JSON schema is an object, not {type(value).__name__}", param="json_schema"
            )
        try:
            grammar = LLMatcher.grammar_from_json_schema(
                _json_text(_closed_objects(value)),
                defaults={"whitespace_pattern": JSON_WHITESPACE},
            )
        except ValueError as err:
            raise ConstraintError(f"invalid JSON schema: {err}", param="json_schema") from err
        return grammar, "json_schema"
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise ConstraintError("a regex constraint is a non-empty string", param="regex")
        return LLMatcher.grammar_from_regex(value), "regex"
    if kind == "choice":
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise ConstraintError(
                "a choice constraint is a non-empty list of non-empty strings", param="choice"
            )
        return LLMatcher.grammar_from_lark("start: " + " | ".join(map(_lark_str, value))), "choice"
    if kind == "grammar":
        if not isinstance(value, str) or not value.strip():
            raise ConstraintError(
                "a grammar constraint is a non-empty grammar text", param="grammar"
            )
        if "::=" in value:  # GBNF, as llama.cpp writes it
            from llguidance.gbnf_to_lark import any_to_lark

            try:
                value = any_to_lark(value)
            except Exception as err:  # its converter raises bare Exceptions
                raise ConstraintError(f"invalid GBNF grammar: {err}", param="grammar") from err
        return LLMatcher.grammar_from_lark(value), "grammar"
    if not isinstance(value, Layout) or not value.fields:
        raise ConstraintError("a layout constraint is a Layout with fields", param="layout")
    return LLMatcher.grammar_from_lark(layout_lark(value)), "layout"


def _closed_objects(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its
    ``properties`` and says nothing of others: the strict reading OpenAI's structured outputs
    require and xgrammar applies by default (SmolLM2 otherwise went on past the three news-riddle
    fields with keys of its own, 2 of 4 replies). An explicit ``additionalProperties`` is kept."""
    if isinstance(schema, list):
        return [_closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed_objects(v) for k, v in schema.items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _lark_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def layout_lark(layout: Layout) -> str:
    """A layout as a Lark grammar: each field's ``before`` literally, then the field's text (one
    line, or up to ``max_lines`` lines when ``multiline``; at least one character, at most
    ``max_tokens`` tokens), then ``after``, then the end of the reply."""
    seq, rules = [], []
    for i, f in enumerate(layout.fields):
        if f.max_tokens < 1:
            raise ConstraintError(
                f"layout field {f.name!r} has a budget of {f.max_tokens} tokens; give it at least 1",
                param="layout",
            )
        if f.before:
            seq.append(_lark_str(f.before))
        seq.append(f"f{i}")
        nxt = layout.fields[i + 1].before if i + 1 < len(layout.fields) else layout.after
        rules.extend(_field_rules(f"f{i}", f, nxt, layout.forbid))
    if layout.after:
        seq.append(_lark_str(layout.after))
    return "start: " + " ".join(seq) + "\n" + "\n".join(rules) + "\n"


def _without(body: str, forbid: Sequence[str]) -> str:
    """A lexeme ``body`` that never contains any of ``forbid`` (llguidance's ``& ~`` operators);
    strings with a newline are left out (a field's lines hold none)."""
    for s in forbid:
        if s and "\n" not in s:
            body += " & ~/(?s:.*" + re.escape(s).replace("/", "\\/") + ".*)/"
    return body


def _field_rules(rule: str, f: LayoutField, nxt: str, forbid: Sequence[str] = ()) -> list[str]:
    """The rules of one field. A multiline field is its lines as separate lexemes joined by
    ``"\n"``: a line after the first may not start with the character that follows the newline
    of the next literal (``[`` of ``"\n[Answer]: "``), so the engine's greedy lexer always knows
    where the field ends, and a spent budget forces the next literal. Two designs failed on Gemma
    (issue 21): one ``/(.|\n)+/`` lexeme swallowed the next label and never closed, and one with
    ``stop="\n[Answer]:"`` made llguidance 1.9.1 panic ("num_rows=5 row_infos=4", then every
    matcher of the batch failed with a poisoned lock) as soon as the model wrote the label itself.
    The lines share the budget: each gets ``(max_tokens - (max_lines - 1)) // max_lines``. A
    field never holds a string of ``forbid``: Gemma's few-shot replies went on after a riddle's
    last line with "###" (the examples' separator, a stop string), which cut them unclosed."""
    line = _without(r"/[^\n]+/", forbid)
    if not f.multiline or f.max_lines < 2 or (nxt and not (nxt.startswith("\n") and len(nxt) > 1)):
        # one line; also a multiline field whose next literal does not start a new line
        return [f"{rule}[max_tokens={f.max_tokens}]: {line}"]
    per_line = max(1, (f.max_tokens - (f.max_lines - 1)) // f.max_lines)
    head = nxt[1] if nxt else ""
    cont = (
        line
        if not head
        else _without("/[^" + re.escape(head).replace("/", "\\/") + r"\n][^\n]*/", forbid)
    )
    return [
        f'{rule}: {rule}l0 ("\\n" {rule}ln){{0,{f.max_lines - 1}}}',
        f"{rule}l0[max_tokens={per_line}]: {line}",
        f"{rule}ln[max_tokens={per_line}]: {cont}",
    ]


@dataclass
class EngineTokenizer:
    """A tokenizer as the engine sees it: llguidance's model, a fingerprint for caches, the
    width of the model's logits, and the end-of-sequence ids a finished reply may take."""

    ll: Any  # llguidance.LLTokenizer
    fingerprint: str
    vocab_size: int


_TOKENIZERS: weakref.WeakKeyDictionary[Any, EngineTokenizer] = weakref.WeakKeyDictionary()
_COMPILED: OrderedDict[tuple[str, str], Any] = OrderedDict()
_LOCK = threading.Lock()


def hf_engine_tokenizer(tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> EngineTokenizer:
    """llguidance's model of a Hugging Face fast tokenizer (built once per tokenizer object:
    2 s for SmolLM2's 49k vocabulary, 7-10 s for Gemma's 262k on 2 busy cores).

    Raises:
        ConstraintError: a slow (Python) tokenizer, which the engine cannot read.
    """
    with _LOCK:
        cached = _TOKENIZERS.get(tokenizer)
        if cached is not None:
            return cached
        import copy

        from llguidance import LLTokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConstraintError(
                f"structured generation needs a fast tokenizer; {type(tokenizer).__name__} is not "
                "one (load the model with its tokenizer.json)",
                param="constraint",
            )
        backend = copy.copy(backend)
        backend.no_padding()
        backend.no_truncation()
        text = backend.to_str()
        n_vocab = max(vocab_size, len(tokenizer))
        eos = [int(t) for t in eos_ids] or [int(tokenizer.eos_token_id)]
        ll = LLTokenizer(text, n_vocab=n_vocab, eos_token=eos)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        made = EngineTokenizer(ll, f"hf:{digest}:{n_vocab}:{eos}", vocab_size)
        _TOKENIZERS[tokenizer] = made
        return made


def gguf_engine_tokenizer(owner: Any, llama: Any, fingerprint: str) -> EngineTokenizer:
    """llguidance's model of a GGUF model's own vocabulary (llama.cpp tokenizes), cached on
    ``owner`` (the loaded model)."""
    with _LOCK:
        cached = _TOKENIZERS.get(owner)
        if cached is not None:
            return cached
        import llama_cpp
        from llguidance.llamacpp import lltokenizer_from_vocab

        with warnings.catch_warnings():  # it calls llama_token_get_attr, deprecated, per token
            warnings.simplefilter("ignore", DeprecationWarning)
            ll = lltokenizer_from_vocab(llama_cpp.llama_model_get_vocab(llama.model))
        made = EngineTokenizer(ll, f"gguf:{fingerprint}", int(llama.n_vocab()))
        _TOKENIZERS[owner] = made
        return made


class CompiledConstraint:
    """A constraint compiled for one tokenizer: fresh matchers for rows, and the final check."""

    def __init__(self, constraint: OutputConstraint, tok: EngineTokenizer) -> None:
        from llguidance import LLMatcher

        self.constraint = constraint
        self.tokenizer = tok
        grammar, param = grammar_of(constraint)
        template = LLMatcher(tok.ll, grammar, log_level=0)
        if template.is_error():
            raise ConstraintError(
                f"invalid {constraint.kind.replace('_', ' ')}: {_first_line(template.get_error())}",
                param=param,
            )
        self._template = template

    def matcher(self) -> Any:
        """A matcher at the start of the reply (a copy of the compiled one)."""
        return self._template.deep_copy()

    def check(self, text: str, finish_reason: str, max_new_tokens: int) -> str | None:
        """Why ``text`` does not complete the constraint (the reply is invalid); None when it
        does. The text is re-read by a fresh matcher, so a stop string that cut the reply, a
        budget that ran out and a backend fault are all caught the same way."""
        m = self.matcher()
        ids = self.tokenizer.ll.tokenize_str(text)
        if m.consume_tokens(ids) and m.is_accepting():
            return None
        kind = self.constraint.kind.replace("_", " ")
        if finish_reason == "length":
            return (
                f"the reply used all {max_new_tokens} new tokens before completing its {kind} "
                "(raise max_new_tokens or lower the field budgets)"
            )
        return f"the reply ended before completing its {kind}"


def _first_line(message: str) -> str:
    """The compiler's message on one line (without its caret lines), at most 300 characters."""
    lines = [" ".join(ln.split()) for ln in message.splitlines() if ln.strip(" ^|0123456789")]
    text = "; ".join(lines) or "rejected by the grammar compiler"
    return text if len(text) <= 300 else text[:297] + "..."


def compile_constraint(constraint: OutputConstraint, tok: EngineTokenizer) -> CompiledConstraint:
    """``constraint`` compiled for ``tok``, from the in-memory cache when it was compiled before
    (1-6 ms warm for the news-riddle schema on Gemma's vocabulary, 20-30 ms cold).

    Raises:
        ConstraintError: the schema, regex, grammar or layout does not compile (``param`` names
            the field).
    """
    key = (tok.fingerprint, constraint.key)
    with _LOCK:
        hit = _COMPILED.get(key)
        if hit is not None:
            _COMPILED.move_to_end(key)
            return hit  # type: ignore[no-any-return]
    if (reason := engine_refusal()) is not None:
        raise BackendError(reason)
    compiled = CompiledConstraint(constraint, tok)
    with _LOCK:
        _COMPILED[key] = compiled
        while len(_COMPILED) > _CACHE_SIZE:
            _COMPILED.popitem(last=False)
    return compiled


# ------------------------------------------------------------------ masks on logits

# byte -> its 8 bits, least significant first (llguidance's bitmask order)
