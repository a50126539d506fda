"""Settings, resolved once with a stated precedence.

defaults < YAML file (``LLMAPPS_CONFIG`` or ``$LLMAPPS_HOME/config.yaml``) < environment
(``LLMAPPS_*``, nested with ``__``, e.g. ``LLMAPPS_SERVICE__BASE_URL``) < CLI flags / keyword
arguments. Secrets come only from the environment and are ``SecretStr``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from llmapps.errors import ConfigError, config_error_from_validation


def default_home() -> Path:
    """``LLMAPPS_HOME`` or ``~/.cache/llmapps``: where built models, adapters and caches live."""
    return Path(os.environ.get("LLMAPPS_HOME", Path.home() / ".cache" / "llmapps")).expanduser()


class GenerationSettings(BaseModel):
    """Defaults for local generation."""

    model_config = ConfigDict(extra="forbid")

    # 32: one chunk for the bench's 32 prompts halves the decode steps of two chunks of 16
    # (benchmarks/bench_generation.py); CUDA out-of-memory halves it automatically.
    batch_size: int = Field(32, ge=1, description="prompts per generate() call")
    max_new_tokens: int = Field(96, ge=1)
    backend: Literal["transformers", "llama.cpp"] = Field(
        "transformers",
        description="backend of the local strategies (few-shot, zero-shot); a .gguf "
        "model given without a backend runs on llama.cpp",
    )
    llamacpp_context: int = Field(
        8192,
        ge=256,
        description="tokens of context the llama.cpp backend allocates per model "
        "(the GGUF's trained context is the ceiling)",
    )
    # 2,048: the model's context (32,768 for Gemma 3) is a ceiling, never the target. On 2 CPU
    # cores a 2,048-token Gemma 3 prompt holds 4-5 worked examples and prefills in seconds; 8 of
    # them at the full context were OOM-killed at 24 GB (see README: What we measured).
    max_prompt_tokens: int = Field(
        2048,
        ge=16,
        description="prompt budget of local models: few-shot packs examples up to it, "
        "longer inputs are truncated (the model's context is the ceiling)",
    )
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="memory one generate() chunk may use for KV cache and activations; "
        "none: memory_fraction of what is available (RAM, or free VRAM on CUDA) at the call",
    )
    memory_fraction: float = Field(0.5, gt=0, le=0.95)


class BenchSettings(BaseModel):
    """Defaults of ``llmapps bench`` and the evaluation metrics (all overridable per run)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(
        4, ge=1, description="articles per batch in a bench (latency is per batch)"
    )
    compute_price_per_hour: float = Field(
        0.0, ge=0.0, description="price of the machine running local strategies, per hour (0: free)"
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per strategy: usd_per_1k_input_tokens, usd_per_1k_output_tokens, usd_per_hour",
    )
    # None: the app's own choice (AppSpec.metric_fields); a value here overrides it for every app
    primary_field: str | None = Field(
        None, description="output field the quality table reports (default: the app's)"
    )
    target_field: str | None = Field(
        None,
        # the name before issue 24, still read from settings files written for it
        validation_alias=AliasChoices("target_field", "riddle_field"),
        description="output field the app's own checks judge (leakage, copying, solvability); "
        "default: the app's",
    )
    answer_field: str | None = Field(
        None,
        description="field holding the short answer (token F1, exact match); default: the app's",
    )
    leak_fields: list[str] | None = Field(
        None,
        description="output or input fields whose content words must not appear in the target "
        "field (default: the app's)",
    )
    copy_fields: list[str] | None = Field(
        None,
        description="output or input fields the target field must not repeat nearly word for "
        "word (copying; default: the app's)",
    )
    source_fields: list[str] | None = Field(
        None, description="input fields that make the source document (default: the app's)"
    )
    solvability_k: list[int] = Field(default_factory=lambda: [1, 3])


class IngestSettings(BaseModel):
    """Defaults for news ingestion (``llmapps news fetch``, ``llmapps daily``)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(10.0, gt=0, description="connect/read timeout of one HTTP request")
    retries: int = Field(
        2, ge=0, le=10, description="extra attempts after a 5xx, 429 or network error"
    )
    concurrency: int = Field(4, ge=1, le=64, description="HTTP requests in flight at once")
    user_agent: str = Field("llmapps-news/0.1 (+https://github.com/llmapps)", min_length=1)
    max_response_bytes: int = Field(5_000_000, ge=1024, description="a larger response is rejected")
    newsapi_base_url: str = Field(
        "https://newsapi.org", description="any NewsAPI-compatible server"
    )
    newsapi_key: SecretStr | None = Field(
        None, description="from LLMAPPS_INGEST__NEWSAPI_KEY or NEWSAPI_KEY"
    )


class ModelPrice(BaseModel):
    """What one model costs, in US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_1m: float = Field(0.0, ge=0.0)
    output_per_1m: float = Field(0.0, ge=0.0)


def _default_prices() -> dict[str, ModelPrice]:
    # List prices at the time of writing; override per model in config.yaml (service.prices).
    return {
        "gpt-4o-mini": ModelPrice(input_per_1m=0.15, output_per_1m=0.60),
        "gpt-4o": ModelPrice(input_per_1m=2.50, output_per_1m=10.00),
        "gpt-4.1-mini": ModelPrice(input_per_1m=0.40, output_per_1m=1.60),
        "gpt-4.1-nano": ModelPrice(input_per_1m=0.10, output_per_1m=0.40),
    }


def _openai_key_from_env() -> SecretStr | None:
    key = os.environ.get("OPENAI_API_KEY")
    return SecretStr(key) if key else None


class ServerSettings(BaseModel):
    """``llmapps serve``: where it listens and what it accepts (``LLMAPPS_SERVICE__SERVER__*``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        "127.0.0.1", description="bind address; loopback unless you mean to expose it"
    )
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    api_key: SecretStr | None = Field(
        None, description="bearer token clients must send; none: open"
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    max_concurrent: int = Field(
        64, ge=1, description="prompts in flight (all requests) before 429 + Retry-After"
    )
    max_prompts: int = Field(
        16, ge=1, description="most prompts in one /v1/completions request (400 above)"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers answered (others get 400, against DNS rebinding); empty: the loopback "
        "names when bound to loopback, any host otherwise",
    )
    max_stop: int = Field(4, ge=0, description="most stop strings in one request (400 above)")
    max_stop_chars: int = Field(
        1000, ge=0, description="most characters of all stop strings together (400 above)"
    )
    max_batch: int = Field(16, ge=1, description="most requests in one batched generate call")
    batch_wait_ms: float = Field(
        5.0, ge=0.0, description="how long to gather requests into a batch"
    )


class ServiceSettings(BaseModel):
    """The ``service`` strategy: an OpenAI-compatible endpoint (``LLMAPPS_SERVICE__*``).

    The API key is read from ``LLMAPPS_SERVICE__API_KEY`` or else ``OPENAI_API_KEY``.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1; none: OpenAI")
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = Field(default_factory=_openai_key_from_env)
    timeout: float = Field(
        600.0, gt=0.0, description="seconds per request (as OpenAI's and LangChain's clients)"
    )
    max_retries: int = Field(
        4, ge=0, description="retries on 429, 5xx, connect timeouts, lost connections, bad bodies"
    )
    retry_timeouts: bool = Field(
        False,
        description="also retry a request that timed out once sent (only for an endpoint that "
        "cancels the work of a client that hung up)",
    )
    max_concurrency: int = Field(8, ge=1, description="requests in flight in a batch")
    rpm: int | None = Field(None, ge=1, description="requests per minute (none: unlimited)")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (none: unlimited)")
    cache: bool = Field(True, description="SQLite response cache on/off")
    cache_path: Path | None = Field(None, description="default: $LLMAPPS_HOME/service-cache.sqlite")
    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)
    server: ServerSettings = Field(default_factory=ServerSettings)  # type: ignore[arg-type]


class RetrievalSettings(BaseModel):
    """Embeddings and vector indexes (``LLMAPPS_RETRIEVAL__*``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        description="all-MiniLM-L6-v2 (bundled offline), any sentence-transformers id or directory, "
        "or openai:<model> for OpenAI embeddings",
    )
    batch_size: int = Field(64, ge=1, description="texts per embedding forward pass")
    index_kind: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto",
        description="flat (exact), hnsw or ivf (approximate); auto: flat below auto_ann_above vectors",
    )
    auto_ann_above: int = Field(
        200_000, ge=1, description="auto switches to HNSW above this many vectors"
    )
    cache_dir: Path | None = Field(
        None, description="embedding cache; default $LLMAPPS_HOME/embeddings"
    )
    chunk_tokens: int = Field(
        200, ge=16, description="split documents longer than this (model tokens)"
    )
    chunk_overlap: int = Field(24, ge=0)


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
