"""Settings, resolved once with a stated precedence.

defaults < YAML file (``LLMAPPS_CONFIG`` or ``$LLMAPPS_HOME/config.yaml``) < environment
(``LLMAPPS_*``, nested with ``__``, e.g. ``LLMAPPS_SERVICE__BASE_URL``) < CLI flags / keyword
arguments. Secrets come only from the environment and are ``SecretStr``.

Each section is owned by the package that reads it and re-exported here: ``generation``
(``llmapps.models.settings``), ``retrieval`` (``llmapps.retrieval.settings``), ``service`` and its
prices (``llmapps.service.settings``), ``service.server`` (``llmapps.serving.settings``),
``ingest`` (``llmapps.ingest.settings``), ``bench`` (``llmapps.bench.settings``). A section module
imports nothing of its own package, so assembling them here makes no import cycle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from llmapps.bench.settings import BenchSettings
from llmapps.errors import ConfigError, config_error_from_validation
from llmapps.ingest.settings import IngestSettings
from llmapps.models.settings import GenerationSettings
from llmapps.retrieval.settings import RetrievalSettings
from llmapps.service.settings import ModelPrice, ServiceSettings
from llmapps.serving.settings import ServerSettings

__all__ = [
    "BenchSettings",
    "GenerationSettings",
    "IngestSettings",
    "ModelPrice",
    "RetrievalSettings",
    "ServerSettings",
    "ServiceSettings",
    "Settings",
    "default_home",
    "get_settings",
    "load_settings",
]


def default_home() -> Path:
    """``LLMAPPS_HOME`` or ``~/.cache/llmapps``: where built models, adapters and caches live."""
    return Path(os.environ.get("LLMAPPS_HOME", Path.home() / ".cache" / "llmapps")).expanduser()


class _YamlSource(YamlConfigSettingsSource):
    """The settings file, read with ``yaml.safe_load``; every fault one ``ConfigError`` naming it."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        import yaml

        hint = "fix it, or point LLMAPPS_CONFIG at another file"
        try:
            text = file_path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"the settings file {file_path} is not UTF-8 (byte {err.start}); {hint}"
            ) from err
        except OSError as err:
            raise ConfigError(
                f"the settings file {file_path} cannot be read ({err.strerror}); {hint}"
            ) from err
        try:
            data = yaml.safe_load(text)
        except yaml.constructor.ConstructorError as err:  # a !!python/... tag: never constructed
            raise ConfigError(
                f"the settings file {file_path} uses a YAML tag llmapps does not load "
                f"({err.problem}{_yaml_where(err)}); use plain values; {hint}"
            ) from err
        except yaml.YAMLError as err:
            why = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(
                f"the settings file {file_path} is not valid YAML ({why}{_yaml_where(err)}); {hint}"
            ) from err
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"the settings file {file_path} holds a {type(data).__name__}, not a mapping of "
                f"setting: value; {hint}"
            )
        return data


def _yaml_where(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


class Settings(BaseSettings):
    """Every setting llmapps reads; see the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="LLMAPPS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    home: Path = Field(default_factory=default_home)
    # Real pretrained models from the package index (llmapps/models/packaged.yaml); the tiny
    # models we train ourselves (tiny-base, tiny-instruct) are for the fast test suite.
    base_model: str = Field(
        "gemma-3-270m",
        description="base (foundation) model: a packaged name, tiny-base, hub id, directory or .gguf file",
    )
    instruct_model: str = Field(
        "smollm2-135m-instruct",
        description="instruction-tuned model: a packaged name, tiny-instruct, hub id, directory or .gguf file",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: str = Field(
        "auto",
        description="auto (bf16 on capable GPUs and on CPUs with native bf16, else float32), float32, bfloat16, float16",
    )
    offline: bool = Field(False, description="never try the Hugging Face hub; local files only")
    trust_remote_code: bool = False
    generation: GenerationSettings = Field(default_factory=GenerationSettings)  # type: ignore[arg-type]
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)  # type: ignore[arg-type]
    service: ServiceSettings = Field(default_factory=ServiceSettings)  # type: ignore[arg-type]
    ingest: IngestSettings = Field(default_factory=IngestSettings)  # type: ignore[arg-type]
    bench: BenchSettings = Field(default_factory=BenchSettings)  # type: ignore[arg-type]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        named = os.environ.get("LLMAPPS_CONFIG")
        config = Path(named or default_home() / "config.yaml").expanduser()
        if named and not config.is_file():  # the default file is optional; a named one is not
            kind = "is a folder" if config.is_dir() else "does not exist"
            raise ConfigError(
                f"LLMAPPS_CONFIG={named} {kind}; point it at a YAML settings file or unset it"
            )
        if config.is_dir():
            raise ConfigError(
                f"the settings file {config} is a folder; remove it or set LLMAPPS_CONFIG"
            )
        yaml_source = _YamlSource(settings_cls, yaml_file=config)
        return (init_settings, env_settings, yaml_source)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


def load_settings(**overrides: Any) -> Settings:
    """Resolve settings; ``overrides`` (CLI flags, keyword arguments) win over everything."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as err:
        raise config_error_from_validation("settings", err) from err


def get_settings() -> Settings:
    """Settings from file and environment, read afresh (cheap) so env changes are seen."""
    return load_settings()
