"""Structured-output fields of a request, as the servers users compare us with spell them, mapped
to one ``OutputConstraint`` (``llmapps.models.structured``):

- OpenAI ``response_format``: ``{"type": "text"}``; ``{"type": "json_object"}`` (any JSON object,
  or the ``schema`` beside it, as llama.cpp's servers take it); ``{"type": "json_schema",
  "json_schema": {"name", "schema", "strict", "description"}}``;
- vLLM ``structured_outputs``: exactly one of ``json`` (a schema, or its JSON text), ``regex``,
  ``choice`` (a list of strings), ``grammar`` or ``json_object: true``;
- llama-server's top-level ``json_schema`` (a schema) and ``grammar`` (GBNF text).

Only the shape is checked here; whether a schema, regex or grammar compiles is the backend's to
say (``ConstraintError`` before any token), and the server answers either with 400 naming the
request field (``param``). Two fields asking for structured output at once are a 400 as well:
which one wins would be a guess.
"""

from __future__ import annotations

import json
from typing import Any

from llmapps.models.structured import OutputConstraint
from llmapps.serving.protocol import APIError

# each response_format type and the fields it takes
_RESPONSE_FORMATS = {
    "text": {"type"},
    "json_object": {"type", "schema"},
    "json_schema": {"type", "json_schema"},
}
_JSON_SCHEMA_KEYS = frozenset({"name", "schema", "strict", "description"})
_VLLM_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def _bad(param: str, message: str, code: str = "invalid_structured_output") -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


# deeper schemas are refused: compiling walks them recursively (900 levels was a RecursionError)
MAX_SCHEMA_DEPTH = 64


def _depth(value: Any) -> int:
    """How deeply ``value``'s objects and lists nest (iteratively: any depth is safe here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _schema(value: Any, param: str) -> dict[str, Any]:
    """A JSON schema given as an object (``{}``/``true``: any JSON object)."""
    if value is True or value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(param, f"a JSON schema is an object, not {type(value).__name__}")
    if _depth(value) > MAX_SCHEMA_DEPTH:
        raise _bad(param, f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels; flatten it")
    return value


def _from_response_format(rf: dict[str, Any]) -> tuple[OutputConstraint, str] | None:
    kind = rf.get("type")
    if kind not in _RESPONSE_FORMATS:
        raise _bad(
            "response_format.type",
            f"{str(kind)[:40]!r} is not supported; one of {', '.join(_RESPONSE_FORMATS)}",
            code="unsupported_parameter",
        )
    extra = sorted(set(rf) - _RESPONSE_FORMATS[kind])
    if extra:
        raise _bad(
            f"response_format.{extra[0]}",
            f"not a field of response_format type {kind!r}; leave it out",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        where = "response_format.schema" if "schema" in rf else "response_format"
        return OutputConstraint("json_schema", _schema(rf.get("schema"), where)), where
    spec = rf.get("json_schema")
    if not isinstance(spec, dict):
        raise _bad(
            "response_format.json_schema",
            'send {"name": NAME, "schema": {...}} with type json_schema',
        )
    unknown = sorted(set(spec) - _JSON_SCHEMA_KEYS)
    if unknown:
        raise _bad(
            f"response_format.json_schema.{unknown[0]}",
            f"not a field of json_schema; its fields are {', '.join(sorted(_JSON_SCHEMA_KEYS))}",
        )
    where = "response_format.json_schema.schema"
    return OutputConstraint("json_schema", _schema(spec.get("schema"), where)), where


def _from_structured_outputs(so: dict[str, Any]) -> tuple[OutputConstraint, str]:
    kinds = [k for k in _VLLM_KINDS if so.get(k) not in (None, False)]
    unknown = sorted(set(so) - set(_VLLM_KINDS))
    if unknown:
        raise _bad(
            f"structured_outputs.{unknown[0]}",
            f"not supported here; give one of {', '.join(_VLLM_KINDS)}",
            code="unsupported_parameter",
        )
    if len(kinds) != 1:
        raise _bad(
            "structured_outputs",
            f"give exactly one of {', '.join(_VLLM_KINDS)} (got {', '.join(kinds) or 'none'})",
        )
    (kind,) = kinds
    value, param = so[kind], f"structured_outputs.{kind}"
    if kind == "json_object":
        if value is not True:
            raise _bad(param, "json_object takes true")
        return OutputConstraint("json_schema", {}), param
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise _bad(param, f"the schema text is not JSON ({err.msg})") from err
        return OutputConstraint("json_schema", _schema(value, param)), param
    if kind == "choice":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(c, str) and c for c in value)
        ):
            raise _bad(param, "choice takes a non-empty list of non-empty strings")
        return OutputConstraint("choice", list(value)), param
    if not isinstance(value, str) or not value.strip():
        raise _bad(param, f"{kind} takes a non-empty string")
    return OutputConstraint(kind, value), param  # type: ignore[arg-type]  # regex or grammar


def constraint_of(req: Any) -> tuple[OutputConstraint | None, str | None]:
    """The request's ``OutputConstraint`` and the field path it came from, which a 400 names
    when the backend cannot compile it (``None, None``: free text).

    Raises:
        APIError: 400 naming the field, for a wrong shape, an unsupported kind, or two fields
            asking for structured output at once.
    """
    found: list[tuple[OutputConstraint, str]] = []
    rf = getattr(req, "response_format", None)
    if rf is not None and (got := _from_response_format(rf)) is not None:
        found.append(got)
    so = getattr(req, "structured_outputs", None)
    if so is not None:
        found.append(_from_structured_outputs(so))
    js = getattr(req, "json_schema", None)
    if js is not None:
        found.append((OutputConstraint("json_schema", _schema(js, "json_schema")), "json_schema"))
    grammar = getattr(req, "grammar", None)
    if grammar is not None:
        if not grammar.strip():
            raise _bad("grammar", "the grammar is empty; send GBNF text or leave it out")
        found.append((OutputConstraint("grammar", grammar), "grammar"))
    if len(found) > 1:
        names = [where.split(".")[0] for _, where in found]
        raise _bad(
            names[1],
            f"{' and '.join(names)} both ask for structured output; send one of them",
            code="conflicting_constraints",
        )
    return found[0] if found else (None, None)
