"""``service``: an OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, llmapps serve).

The seed's third path. The endpoint, model and key come from settings (``LLMAPPS_SERVICE__*``,
``OPENAI_API_KEY``) or the strategy's options; calls go through ``ServiceChatModel``, which adds
a SQLite response cache, rate limits, counted retries and cost per call. Offline, the demo and
the tests point it at ``llmapps serve`` running ``tiny-instruct`` on a loopback port: a server
``llmapps.compose`` hands to ``demo_options`` (this package never looks one up or imports it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator

from llmapps.api.strategies import Strategy, StrategyConfig

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.api.backends import LocalServer
    from llmapps.service.chat import ServiceChatModel
    from llmapps.settings import Settings
    from llmapps.tasks import Task

log = logging.getLogger(__name__)


class ServiceStrategyConfig(StrategyConfig):
    """Options of the ``service`` strategy; ``None`` means "from settings.service"."""

    kind: Literal["service"] = "service"
    base_url: str | None = Field(None, description="API root, e.g. http://127.0.0.1:8000/v1")
    model: str | None = None
    api_key: SecretStr | None = Field(
        None,
        exclude=True,
        repr=False,
        description="default: LLMAPPS_SERVICE__API_KEY or OPENAI_API_KEY",
    )
    max_new_tokens: int | None = Field(None, ge=1, description="default: the task's budget")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    timeout: float | None = Field(None, gt=0.0)
    max_retries: int | None = Field(None, ge=0)
    max_concurrency: int | None = Field(None, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    cache: bool | None = None
    cache_path: str | None = None
    structured: Literal["auto", "on", "off"] = Field(
        "auto",
        # structured_output: its name before the local strategies took `structured`
        validation_alias=AliasChoices("structured", "structured_output"),
        description="ask the endpoint for the task's JSON schema (each string capped from its "
        "field budget): auto = json_schema, else json_object, else text, whichever the endpoint "
        "takes; on = json_schema or json_object required (an error where the endpoint takes "
        "neither); off = free text",
    )

    @field_validator("structured", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        # `--set structured=on` arrives as YAML's True (and off as False)
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    def settings_defaults(self, settings: Settings) -> dict[str, Any]:
        s = settings.service
        same = ("base_url", "model", "api_key", "timeout", "max_retries", "max_concurrency")
        return {
            **{name: getattr(s, name) for name in (*same, "rpm", "tpm", "cache")},
            "cache_path": str(s.cache_path or settings.home / "service-cache.sqlite"),
        }


class ServiceStrategy(Strategy):
    """Ask a chat model behind an OpenAI-compatible API, concurrently, cached and rate limited."""

    name = "service"
    config_class = ServiceStrategyConfig
    summary = "chat model behind an OpenAI-compatible API (OpenAI, vLLM, Ollama, llmapps serve)"
    requires = (
        "an endpoint (LLMAPPS_SERVICE__BASE_URL) and key (OPENAI_API_KEY); offline: llmapps serve"
    )
    config: ServiceStrategyConfig

    def __init__(self, config: ServiceStrategyConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        from llmapps.service.chat import check_endpoint_url

        check_endpoint_url(self.config.base_url)
        self.models: list[ServiceChatModel] = []

    @property
    def stats(self) -> dict[str, Any]:
        """Calls, cache hits, retries, failures, tokens and cost, summed over built chains."""
        total: dict[str, Any] = {}
        for m in self.models:
            for k, v in m.stats.as_dict().items():
                total[k] = total.get(k, 0) + v
        return total

    def chat_model(
        self, max_new_tokens: int, response_format: dict[str, Any] | None = None
    ) -> ServiceChatModel:
        """The configured ``ServiceChatModel`` (settings fill what the options leave open)."""
        from llmapps.errors import ConfigError
        from llmapps.service.chat import ServiceChatModel

        s = self.settings.service
        c = self.resolved
        key = c.api_key
        if key is None:
            if c.base_url is None:
                raise ConfigError(
                    "the service strategy has no API key: set OPENAI_API_KEY (or "
                    "LLMAPPS_SERVICE__API_KEY), or point LLMAPPS_SERVICE__BASE_URL at an endpoint "
                    "such as `llmapps serve`"
                )
            key = SecretStr("no-key")  # self-hosted endpoints without auth still want a header
        # the options ServiceChatModel takes under the config's own names
        same = ("model", "base_url", "temperature", "top_p", "seed", "timeout", "rpm", "tpm")
        model = ServiceChatModel(
            **{name: getattr(c, name) for name in same},
            api_key=key,
            max_tokens=max_new_tokens,  # ChatOpenAI alias
            retries=c.max_retries,
            retry_timeouts=s.retry_timeouts,
            max_inflight=self.max_concurrency,
            cache_path=c.cache_path if c.cache else None,
            prices={k: v.model_dump() for k, v in s.prices.items()},
            structured_format=response_format if c.structured != "off" else None,
            structured_required=c.structured == "on",
        )
        self.models.append(model)
        return model

    @property
    def max_concurrency(self) -> int:
        return int(self.resolved.max_concurrency or 1)

    def build(self, task: Task) -> Runnable[dict[str, Any], Any]:
        from langchain_core.runnables import RunnableLambda

        max_new = self.budget(task).max_new_tokens
        fmt = None
        if task.json_schema:
            fmt = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(task),
                    # the schema caps characters (maxLength), not tokens: with budgets from all
                    # of max_new, 2 of 8 SmolLM2 replies ran out before closing (benchmarks/
                    # results/bench_news_riddle_structured.md); from two thirds of it, the
                    # fields fit the tokens asked for and max_new_tokens stays the cap it says
                    "schema": budgeted_schema(task, max_new - max_new // 3),
                    "strict": False,
                },
            }
        elif self.config.structured == "on":
            from llmapps.errors import ConfigError

            raise ConfigError(
                f"structured=on: the task {task.name!r} declares no json_schema for the service "
                "strategy; use structured=auto or off"
            )
        llm = self.chat_model(max_new, fmt)
        stop = list(task.stop)
        # OpenAI takes at most 4 stop sequences: send 4, cut at any further ones on arrival
        gen: Runnable[Any, Any] = task.chat | (llm.bind(stop=stop[:4]) if stop else llm)
        if len(stop) > 4:
            gen = gen | RunnableLambda(lambda m: _cut(m, stop[4:]), name="stop")
        return gen.with_config(
            run_name=f"service:{task.name}", max_concurrency=self.max_concurrency
        )

    @classmethod
    @contextlib.contextmanager
    def demo_options(
        cls, settings: Settings, *, serve: LocalServer | None = None
    ) -> Iterator[dict[str, Any] | None]:
        """A configured endpoint as is; else the instruct model behind the local server compose
        hands in (``serve``: ``llmapps serve``, see ``llmapps.compose.demo_options``) on loopback
        for the block; None where none is handed in."""
        if settings.service.base_url:
            yield {}
            return
        if serve is None:
            yield None
            return
        import secrets

        key = secrets.token_urlsafe(24)
        name = settings.instruct_model
        with serve(name, api_key=key, settings=settings) as url:
            yield {
                "base_url": f"{url}/v1",
                "model": name,
                "api_key": SecretStr(key),
                "cache": False,
            }


def _cut(message: Any, stop: list[str]) -> Any:
    from llmapps.models.streaming import cut_at_stop

    text, hit = cut_at_stop(str(message.content), stop)
    return message.model_copy(update={"content": text}) if hit else message


def _schema_name(task: Task) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]", "_", str(task.json_schema.get("title") or task.name))[:64]  # type: ignore[union-attr]


def budgeted_schema(task: Task, max_new_tokens: int) -> dict[str, Any]:
    """The task's JSON schema as an endpoint that constrains decoding should get it: each string
    field capped (``maxLength``) from its token budget (``Task.field_budgets``, at
    ``CHARS_PER_TOKEN``) so the reply can close inside ``max_new_tokens``, and no keys beyond
    the schema's (``additionalProperties: false`` unless it says otherwise), where a small model
    would otherwise add keys until it runs out. An endpoint that does not constrain (OpenAI with
    ``strict: false``) reads it as guidance. What the task's schema sets itself is kept."""
    import json

    from llmapps.tasks import CHARS_PER_TOKEN

    schema = dict(task.json_schema or {})
    props = schema.get("properties")
    if isinstance(props, dict):
        skeleton = json.dumps({n: "" for n in task.output_variables if n in props})
        budgets = task.field_budgets(max(max_new_tokens - (len(skeleton) + 1) // 2, 1))
        schema["properties"] = {
            name: (
                {"maxLength": (budgets[name].max_tokens or 1) * CHARS_PER_TOKEN, **p}
                if name in budgets and isinstance(p, dict) and p.get("type") == "string"
                else p
            )
            for name, p in props.items()
        }
    return {"additionalProperties": False, **schema}
