"""Typed app options, and the ``KEY=VALUE`` flags that set app and strategy options.

An app declares what its ``build`` accepts as a pydantic model (``AppSpec.options``), a subclass
of ``AppOptions`` (``extra="forbid"``), so an option it does not have, or a bad value, is a
``ConfigError`` that names the app's options, before any model is loaded::

    class RiddleOptions(AppOptions):
        variant: Literal["one-step", "two-step"] = Field("one-step", description="...")

On the command line every app option is ``-O KEY=VALUE`` (repeatable, as simonw/llm's model
options) or ``--KEY VALUE``: the CLI builds these flags from the chosen app's model, so the core
names none of them. Values are read as YAML scalars (``-O k=4`` is the number 4).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from llmapps.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class AppOptions(BaseModel):
    """Base of an app's options: every option a typed field, unknown ones rejected."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


class NoOptions(AppOptions):
    """The options of an app that takes none."""


def parse_value(raw: str) -> Any:
    """A flag's value as a YAML scalar (``4`` -> 4, ``true`` -> True), else the text itself."""
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def option_key(raw: str) -> str:
    """``max-new-tokens`` -> ``max_new_tokens``: the field name a flag's key means."""
    return raw.strip().replace("-", "_")


def parse_assignments(items: Iterable[str], flag: str, *, dotted: bool = False) -> dict[str, Any]:
    """``["k=4", "index=x"]`` -> ``{"k": 4, "index": "x"}``; a malformed item is a ``ConfigError``.

    The one parser of every ``--set``/``-O`` flag. ``dotted=True``: keys are dotted paths into a
    nested config (``training.max_steps=20``, the recipe overrides of ``llmapps finetune``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".") if dotted else [key.strip()]
        if not sep or not all(_KEY.match(p) for p in parts):
            example = "training.max_steps=20" if dotted else "temperature=0.7"
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {example}")
        out[".".join(option_key(p) for p in parts)] = parse_value(value)
    return out


def describe_options(model: type[BaseModel]) -> dict[str, str]:
    """Option name -> its help (description and default), in declaration order."""
    out: dict[str, str] = {}
    for name, f in model.model_fields.items():
        text = f.description or ""
        if not f.is_required() and f.default is not None:
            text = f"{text} (default {f.default})" if text else f"default {f.default}"
        out[name] = text
    return out


def validate_app_options(app: str, model: type[AppOptions], raw: Mapping[str, Any]) -> AppOptions:
    """``raw`` checked against the app's options model; unknown names and bad values are one
    ``ConfigError`` that names the app's options."""
    names = list(model.model_fields)
    unknown = [k for k in raw if k not in model.model_fields]
    if unknown:
        given = ", ".join(repr(k) for k in unknown)
        if not names:
            raise ConfigError(f"the app {app!r} takes no options (given: {given})")
        valid = "; ".join(f"{k}: {v}" if v else k for k, v in describe_options(model).items())
        raise ConfigError(f"the app {app!r} has no option {given}; its options are {valid}")
    try:
        return model(**raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = e.get("loc") or ()
            where = ".".join(str(x) for x in loc) or "(root)"
            value = raw.get(str(loc[0])) if loc else None
            problems.append(f"{where}={value!r}: {e.get('msg')}")
        raise ConfigError(f"bad option of the app {app!r}: {'; '.join(problems)}") from err


def as_kwargs(options: BaseModel) -> dict[str, Any]:
    """The validated options as ``build`` keyword arguments (objects kept as they are)."""
    return dict(options)
