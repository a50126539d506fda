"""One family of errors for the whole library.

The library raises these and never prints or exits; only the CLI turns them into messages and exit
codes. Every message says what was wrong, with which input, and what to do about it.
"""

from __future__ import annotations


class LlmappsError(Exception):
    """Base class of every error llmapps raises on purpose."""

    exit_code = 1


class ConfigError(LlmappsError):
    """A setting, recipe or option is missing, invalid or inconsistent."""

    exit_code = 2


class InputError(LlmappsError):
    """User data (an article, a file, a row) cannot be used as given."""

    exit_code = 2


class UnknownComponentError(ConfigError):
    """A registry was asked for a name it does not know."""


class ModelNotFoundError(ConfigError):
    """A model id or directory cannot be resolved to weights on this machine."""


class BackendError(LlmappsError):
    """A model backend or remote endpoint failed while doing its work."""

    exit_code = 3


class RetrievalError(LlmappsError):
    """An index is missing, corrupted or does not match the embedding model."""

    exit_code = 2


def format_problems(header: str, problems: list[str]) -> str:
    """Join many problems into one message, so the user fixes them all at once."""
    lines = [header] + [f"  - {p}" for p in problems]
    return "\n".join(lines)


def config_error_from_validation(what: str, err: Exception) -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a ``ConfigError`` listing every field at fault."""
    problems: list[str] = []
    errors = getattr(err, "errors", None)
    if callable(errors):
        for e in errors():
            loc = ".".join(str(x) for x in e.get("loc", ())) or "(root)"
            problems.append(f"{loc}: {e.get('msg')}")
    else:  # pragma: no cover - defensive
        problems.append(str(err))
    return ConfigError(format_problems(f"invalid {what}:", problems))


def one_line(err: BaseException | str) -> str:
    """An error as one line for a person: our errors' own words (their lines joined), others'
    text without the Python class name."""
    text = str(err) if not isinstance(err, str) else err
    parts = [" ".join(p.split()).lstrip("- ") for p in text.splitlines() if p.strip()]
    line = "; ".join(parts) or (type(err).__name__ if not isinstance(err, str) else "")
    return line[:600]
