"""LangChain models over ``LocalModel``: ``LocalLLM`` (completion) and ``ChatLocal`` (chat).

Both load any Hugging Face causal LM by hub id or directory (see ``load_local_model``). Their
``batch`` runs one real batched ``generate`` (``BaseLLM`` already hands ``_generate`` all prompts;
``ChatLocal`` overrides ``batch``), report token usage, honour stop strings and never echo the
prompt.

Structured output is constrained decoding, not a parse-and-hope: ``constraint=`` (a field, or a
call's keyword through ``.bind(constraint=OutputConstraint(...))``) holds every reply to a JSON
schema, regex, choice list or grammar (``llmapps.models.structured``), and
``ChatLocal.with_structured_output`` binds the schema's constraint and an output parser, the shape
langchain-openai gives it (``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    ChatResult,
    Generation,
    GenerationChunk,
    LLMResult,
)
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableGenerator,
    RunnableMap,
    RunnablePassthrough,
)
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from typing_extensions import Self

from llmapps.models.batching import BatchCall as BatchCall  # its old path
from llmapps.models.batching import OneBatch as OneBatch
from llmapps.models.local import (
    GenerationOutput,
    GenerationParams,
    LocalModel,
    load_local_model,
)
from llmapps.models.structured import OutputConstraint


class _LocalMixin(BaseModel):
    """Fields, identity and loading shared by the completion and chat classes."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = Field(description="hub id, directory, or tiny-base/tiny-instruct")
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # Structured generation (see llmapps.models.structured): every reply is constrained to it;
    # a call's ``constraint=`` keyword (``.bind(constraint=...)``) overrides it.
    constraint: OutputConstraint | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    _lm: LocalModel | None = PrivateAttr(default=None)

    @classmethod
    def from_local(cls, lm: LocalModel, **kwargs: Any) -> Self:
        """Wrap an already loaded ``LocalModel`` (no second load)."""
        obj = cls(model=lm.name, **kwargs)
        obj._lm = lm
        return obj

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    @property
    def local_model(self) -> LocalModel:
        if self._lm is None:
            self._lm = load_local_model(
                self.model, device=self.device, dtype=self.dtype, batch_size=self.batch_size
            )
        return self._lm

    def _params(self, stop: list[str] | None, **kwargs: Any) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=int(
                kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))
            ),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            stop=list(stop or []),
            seed=kwargs.get("seed", self.seed),
            constraint=kwargs.get("constraint", self.constraint),
            repetition_penalty=float(kwargs.get("repetition_penalty", self.repetition_penalty)),
            no_repeat_ngram_size=int(kwargs.get("no_repeat_ngram_size", self.no_repeat_ngram_size)),
        )


def _usage(out: GenerationOutput) -> dict[str, int]:
    return {
        "input_tokens": out.prompt_tokens,
        "output_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
    }


class LocalLLM(_LocalMixin, BaseLLM):
    """A local Hugging Face causal LM as a LangChain completion model.

    Example:
        >>> llm = LocalLLM(model="Qwen/Qwen2.5-0.5B", max_new_tokens=64)  # doctest: +SKIP
        >>> llm.batch(["The capital of France is", "2 + 2 ="], stop=["\\n"])  # doctest: +SKIP
    """

    @property
    def _llm_type(self) -> str:
        return "llmapps-local"

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        outs = self.local_model.generate(prompts, self._params(stop, **kwargs))
        gens = [
            [
                Generation(
                    text=o.text,
                    generation_info={
                        "finish_reason": o.finish_reason,
                        **_usage(o),
                        # a constrained reply that did not close, and why (as ChatLocal says it)
                        **({"constraint_error": o.constraint_error} if o.constraint_error else {}),
                    },
                )
            ]
            for o in outs
        ]
        total = {
            "prompt_tokens": sum(o.prompt_tokens for o in outs),
            "completion_tokens": sum(o.completion_tokens for o in outs),
        }
        return LLMResult(
            generations=gens, llm_output={"token_usage": total, "model_name": self.model}
        )

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for piece in self.local_model.stream(prompt, self._params(stop, **kwargs)):
            chunk = GenerationChunk(text=piece)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk


def _to_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    roles = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else m.text
        out.append({"role": roles.get(m.type, m.type), "content": content})
    return out


class ChatLocal(OneBatch, _LocalMixin, BaseChatModel):
    """A local instruction/chat model (Hugging Face, with a chat template) as a LangChain chat model.

    Example:
        >>> chat = ChatLocal(model="Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
        >>> chat.invoke("Summarise: ...").content                  # doctest: +SKIP
    """

    stop: list[str] | None = None

    @property
    def _llm_type(self) -> str:
        return "llmapps-chat-local"

    def _prompt(self, messages: Sequence[BaseMessage]) -> str:
        return self.local_model.apply_chat_template(_to_dicts(messages))

    def _message(self, out: GenerationOutput) -> AIMessage:
        meta: dict[str, Any] = {
            "finish_reason": out.finish_reason,
            "model_name": self.model,
            "model_provider": "llmapps",
        }
        if out.constraint_error:  # a constrained reply that did not close, and why
            meta["constraint_error"] = out.constraint_error
        return AIMessage(
            content=out.text,
            usage_metadata=_usage(out),  # type: ignore[arg-type]
            response_metadata=meta,
        )

    def _stops(self, stop: list[str] | None) -> list[str]:
        return list(stop if stop is not None else self.stop or [])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        (out,) = self.local_model.generate(
            [self._prompt(messages)], self._params(self._stops(stop), **kwargs)
        )
        return ChatResult(generations=[ChatGeneration(message=self._message(out))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        lm = self.local_model
        prompt = self._prompt(messages)
        params = self._params(self._stops(stop), **kwargs)
        pieces = []
        for piece in lm.stream(prompt, params):
            pieces.append(piece)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        n_in = lm.count_tokens(prompt)
        n_out = len(lm.tokenizer("".join(pieces), add_special_tokens=False)["input_ids"])
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata={
                    "input_tokens": n_in,
                    "output_tokens": n_out,
                    "total_tokens": n_in + n_out,
                },
                response_metadata={
                    # as the server says it: a reply that used its whole budget was cut
                    "finish_reason": "length" if n_out >= params.max_new_tokens else "stop",
                    "model_name": self.model,
                    "model_provider": "llmapps",
                },
                chunk_position="last",
            )
        )

    def _batch_once(self, call: BatchCall) -> list[Any]:
        """One batched ``generate`` for all inputs, unless the caller caps the concurrency."""
        inputs, configs, kwargs = call.inputs, call.configs, dict(call.kwargs)
        return_exceptions = call.return_exceptions
        if configs[0].get("max_concurrency") is not None:
            return BaseChatModel.batch(
                self, inputs, call.config, return_exceptions=return_exceptions, **kwargs
            )
        stop = self._stops(kwargs.pop("stop", None))
        structured = _ls_structured_output(kwargs.pop("ls_structured_output_format", None))
        options = {"stop": stop, **kwargs, **structured}
        message_lists = [self._convert_input(x).to_messages() for x in inputs]
        managers = []
        for msgs, cfg in zip(message_lists, configs, strict=True):
            cm = CallbackManager.configure(
                cfg.get("callbacks"),
                self.callbacks,
                self.verbose,
                cfg.get("tags"),
                self.tags,
                cfg.get("metadata"),
                self.metadata,
            )
            (rm,) = cm.on_chat_model_start(
                self._serialized,
                [msgs],
                invocation_params=self._identifying_params,
                options=options,
                name=cfg.get("run_name"),
                run_id=cfg.get("run_id"),
                batch_size=len(inputs),
            )
            managers.append(rm)
        try:
            outs = self.local_model.generate(
                [self._prompt(m) for m in message_lists], self._params(stop, **kwargs)
            )
        except BaseException as err:
            for rm in managers:
                rm.on_llm_error(err)
            if return_exceptions and isinstance(err, Exception):
                return [err] * len(inputs)  # type: ignore[list-item]
            raise
        results: list[AIMessage] = []
        for rm, out in zip(managers, outs, strict=True):
            msg = self._message(out)
            msg.id = f"lc_run-{rm.run_id}"
            rm.on_llm_end(LLMResult(generations=[[ChatGeneration(message=msg)]]))
            results.append(msg)
        return results

    def with_structured_output(  # type: ignore[override]
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, Any]:
        """This model with every reply constrained to ``schema`` and parsed.

        Args:
            schema: a pydantic class (v2 or v1), a TypedDict, or a JSON schema dict; the result
                is an instance of the class, else a dict.
            method: ``json_schema`` constrains decoding to the schema. ``json_mode`` constrains
                to a JSON object: the schema's when one is given (as llama.cpp's ``json_object``
                with a ``schema`` does), any object otherwise. ``function_calling``: this model
                has no tool calls, so the schema constrains the reply itself, as
                ``json_schema`` does; the result is the same parsed object.
            include_raw: return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``
                (a reply that does not parse gives ``parsed`` None and the error) instead of
                raising.
            strict: decoding is always held to the schema; ``strict=True`` also closes a dict
                schema's objects to the keys it names (``additionalProperties: false``, as
                OpenAI's strict mode wants them). Schemas from classes are always closed: keys
                the class lacks would be dropped by the parser anyway, and a small model that
                may add keys can keep adding them until it runs out of tokens.

        Raises:
            ValueError: an unknown ``method`` or keyword, or no schema where one is needed.
        """
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported arguments {sorted(kwargs)}")
        if method not in ("json_schema", "json_mode", "function_calling"):
            raise ValueError(
                f"method={method!r}: use 'json_schema', 'json_mode' or 'function_calling'"
            )
        if strict is not None and method == "json_mode":
            raise ValueError("strict is not supported with method='json_mode'")
        if schema is None and method != "json_mode":
            raise ValueError(f"method={method!r} needs a schema (only json_mode works without)")
        is_dict = isinstance(schema, dict)
        constraint = OutputConstraint(
            "json_schema",
            {} if schema is None else json_schema_of(schema, closed=strict or not is_dict),
        )
        bind: dict[str, Any] = {"constraint": constraint}
        if schema is not None:
            bind["ls_structured_output_format"] = {
                "kwargs": {"method": method, "strict": strict},
                "schema": schema,
            }
        llm = self.bind(**bind)
        parse: Runnable[Any, Any] = (
            PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type,type-var]
            if isinstance(schema, type) and is_basemodel_subclass(schema)
            else JsonOutputParser()
        )
        # checked per message so a stream still streams; JsonOutputParser would otherwise
        # complete a reply cut short into a dict that lacks the fields it never reached
        parser = RunnableGenerator(_check_closed, _acheck_closed) | parse
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [unparsed], exception_key="parsing_error"
        )

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        import asyncio

        return await asyncio.to_thread(
            self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )


def json_schema_of(schema: dict[str, Any] | type, *, closed: bool = False) -> dict[str, Any]:
    """The JSON schema of a pydantic class (v2 or v1), a TypedDict or a schema dict: pydantic's
    own (nested models as ``$defs``), else LangChain's conversion; ``closed``: every object that
    does not say otherwise takes no keys beyond its ``properties``."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        model: Any = schema
        out = dict(
            model.model_json_schema() if hasattr(model, "model_json_schema") else model.schema()
        )
    elif (
        isinstance(schema, dict)
        and schema.get("type") != "function"  # an OpenAI tool, converted below
        and not {"type", "properties"}.isdisjoint(schema)
    ):
        out = dict(schema)  # a JSON schema as it is
    else:
        out = dict(convert_to_json_schema(schema))
    return _closed(out) if closed else out


# keywords whose value maps names to schemas (a property may be called "properties")
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def _closed(node: Any) -> Any:
    """A copy of a JSON schema whose objects take only the keys they name."""
    if isinstance(node, list):
        return [_closed(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: {name: _closed(sub) for name, sub in v.items()}
        if k in _SCHEMA_MAPS and isinstance(v, dict)
        else _closed(v)
        for k, v in node.items()
    }
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _raise_if_unclosed(message: BaseMessage) -> None:
    why = message.response_metadata.get("constraint_error")
    if why:
        raise OutputParserException(
            f"the reply did not complete its schema: {why}", llm_output=str(message.content)
        )


def _check_closed(messages: Iterator[BaseMessage]) -> Iterator[BaseMessage]:
    for message in messages:
        _raise_if_unclosed(message)
        yield message


async def _acheck_closed(messages: AsyncIterator[BaseMessage]) -> AsyncIterator[BaseMessage]:
    async for message in messages:
        _raise_if_unclosed(message)
        yield message


def _ls_structured_output(fmt: dict[str, Any] | None) -> dict[str, Any]:
    """The ``ls_structured_output_format`` callback option, as ``BaseChatModel`` gives it."""
    if not fmt:
        return {}
    try:
        schema = convert_to_json_schema(fmt["schema"])
    except ValueError:
        return {}
    return {"ls_structured_output_format": {"kwargs": fmt.get("kwargs", {}), "schema": schema}}
