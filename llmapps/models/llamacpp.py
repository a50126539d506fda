"""The llama.cpp backend: GGUF models run by ``llama-cpp-python`` for the local strategies.

``load_gguf_model(source)`` takes a ``.gguf`` path or a packaged model name (``gemma-3-270m``,
``smollm2-135m-instruct``; its file is checked against the SHA-256 the registry ships) and
returns a ``GGUFModel``: the same surface the strategies use on a transformers ``LocalModel``
(``context_length``, ``count_tokens`` with the GGUF's own tokenizer, ``apply_chat_template``,
``generate(prompts, params)`` returning ``GenerationOutput``), so few-shot and zero-shot build
the same prompts, stop strings and token budget on either backend.

Speed comes from llama.cpp's prefix reuse: a prompt that starts with the tokens of the one
before it only prefills the rest. ``generate`` therefore runs a batch in the order that puts
prompts sharing a prefix next to each other (the few-shot instruction and examples) and returns
the outputs in input order. The reuse is cut back to a multiple of ``n_ubatch`` (128) tokens, so
every prompt is prefilled in the same aligned chunks as on a fresh context: llama.cpp's
kernels round differently for different batch shapes, and greedy text from a reused cache of any
length drifted from the fresh one (batch != invoke on the conformance suite). With the cut, a
prompt's output depends on the prompt alone, equals plain llama-cpp-python's on a fresh context,
and is the same in a batch, alone or in any order.

Files are checked before llama.cpp sees them (``read_gguf_header``, ``llmapps.models.gguf``): a file that is not GGUF, is
truncated or names an architecture llama.cpp cannot run gets a one-line error naming the file,
never a crash of the process.

The backend registers as ``llama.cpp`` (``LlamaCppBackend``, see ``llmapps.api.backends``); it
claims ``.gguf`` sources, so one with no explicit backend runs here (``llmapps.models.loader``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from llmapps.api.backends import BACKENDS as BACKENDS  # the registry; names as the old tuple
from llmapps.api.backends import Backend, Capabilities, ModelSpec, register_backend
from llmapps.errors import BackendError, ConfigError
from llmapps.models.gguf import GGUFInfo as GGUFInfo  # the header check; importable from here too
from llmapps.models.gguf import read_gguf_header as read_gguf_header
from llmapps.models.grammar_masks import NumpyGrammarProcessor, NumpyNoRepeatNGram
from llmapps.models.langchain_local import ChatLocal, LocalLLM
from llmapps.models.llamacpp_batch import BatchDecoder, batch_refusal, check_batch_size

# the loader and the backend dispatch moved to llmapps.models.loader; importable from here
from llmapps.models.loader import chat_llm as chat_llm
from llmapps.models.loader import completion_llm as completion_llm
from llmapps.models.loader import context as loader_context
from llmapps.models.loader import load_model as load_model
from llmapps.models.loader import resolve_backend as resolve_backend
from llmapps.models.loader import with_logits as with_logits
from llmapps.models.local import GenerationOutput, GenerationParams, fit_prompts
from llmapps.models.native_probe import check_llamacpp
from llmapps.models.structured import (
    CompiledConstraint,
    OutputConstraint,
    compile_constraint,
    engine_refusal,
    gguf_engine_tokenizer,
)

if TYPE_CHECKING:
    from llmapps.models.pool import ModelPool
    from llmapps.settings import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = (
    'pip install -c constraints.txt -e ".[llamacpp]"  (compiles llama.cpp: ~6 min on 2 cores)'
)

# ------------------------------------------------------------------ the backend


def is_gguf_source(source: str) -> bool:
    return source.lower().endswith(".gguf")


def gguf_file_for(source: str, settings: Settings | None = None) -> Path:
    """The GGUF file behind ``source``: a ``.gguf`` path, or a packaged model's checked file."""
    from llmapps.models import packaged

    if packaged.is_packaged(source):
        return packaged.gguf_path(source, settings)
    if is_gguf_source(source):
        return Path(source).expanduser()
    known = ", ".join(sorted(packaged.packaged_models()))
    raise ConfigError(
        f"the llama.cpp backend runs GGUF files: {source!r} is neither a .gguf path nor a "
        f"packaged model ({known}); pass one of those, or use backend=transformers"
    )


@register_backend("llama.cpp")
class LlamaCppBackend(Backend):
    """GGUF files (and packaged models' GGUFs) in llama.cpp, on the CPU; no logits."""

    name = "llama.cpp"
    capabilities = Capabilities(logits=False, devices=("cpu",), dtypes=False)
    install_hint = INSTALL_HINT
    example_source = "smollm2-135m-instruct"

    def claims(self, source: str) -> bool:
        return is_gguf_source(source)

    def load(self, spec: ModelSpec) -> GGUFModel:
        dtype, device = spec.dtype, spec.device
        if dtype not in (None, "auto"):
            raise ConfigError(
                f"dtype={dtype!r} does not apply to the llama.cpp backend (a GGUF file fixes its "
                "own quantization); leave dtype unset or use backend=transformers"
            )
        if device not in (None, "auto", "cpu"):
            raise ConfigError(
                f"device={device!r}: this llama.cpp build runs on the CPU; leave device unset or "
                "use backend=transformers"
            )
        return load_gguf_model(
            spec.source, settings=spec.settings, pool=spec.pool, batch_size=spec.batch_size
        )

    def completion_llm(self, lm: Any, **kwargs: Any) -> LlamaCppLLM:
        return LlamaCppLLM.from_gguf(lm, **kwargs)

    def chat_llm(self, lm: Any, **kwargs: Any) -> ChatLlamaCpp:
        return ChatLlamaCpp.from_gguf(lm, **kwargs)


# ------------------------------------------------------------------ the model

DEFAULT_CONTEXT = 8192
# Prefill micro-batches of 128 tokens: a reused prefix is cut to a multiple of it (see the module
# docstring), so a smaller one keeps more of it; 512 (llama.cpp's default) lost up to 511 tokens
# of reuse per prompt.
N_BATCH, N_UBATCH = 512, 128
DEFAULT_BATCH = 3  # settings.generation.llamacpp_batch's default


class _TokenizerView:
    """The slice of a Hugging Face tokenizer's call the strategies use, over the GGUF vocabulary."""

    def __init__(self, model: GGUFModel) -> None:
        self._model = model

    def __call__(
        self, text: str, add_special_tokens: bool = True, **_: Any
    ) -> dict[str, list[int]]:
        return {"input_ids": self._model.tokenize(text, add_bos=add_special_tokens)}


class GGUFModel:
    """A GGUF model loaded in llama.cpp, with the generation surface of ``LocalModel`` (a
    ``LocalLM``)."""

    backend = "llama.cpp"

    def __init__(
        self,
        llama: Any,
        info: GGUFInfo,
        *,
        name: str,
        context_length: int,
        batch_size: int = DEFAULT_BATCH,
        memory_fraction: float = 0.5,
    ) -> None:
        self.llama = llama
        self.info = info
        self.name = name
        self.path = info.path
        self.device = "cpu"
        # sequences decoded together by generate() (llmapps.models.llamacpp_batch); 1: one at a time
        self.batch_size = check_batch_size(batch_size)
        self.memory_fraction = memory_fraction
        self._batcher: BatchDecoder | None = None
        self._context_length = context_length
        self._lock = threading.Lock()  # a llama.cpp context is not re-entrant
        self.reused_tokens = 0  # prompt tokens served from the KV cache (for benchmarks)
        # the micro-batch size: prefill chunks start at its multiples (n_batch is a multiple)
        self.reuse_step = int(llama.context_params.n_ubatch)
        self.tokenizer = _TokenizerView(self)
        self._bos_text = self._piece(llama.token_bos())
        self._eos_text = self._piece(llama.token_eos())

    def _piece(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return bytes(self.llama.detokenize([token], special=True)).decode("utf-8", "replace")

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def has_chat_template(self) -> bool:
        return bool(self.info.chat_template)

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids from the GGUF's own tokenizer; special-token text (``<|im_start|>``) parses."""
        if add_bos and self._bos_text and text.startswith(self._bos_text):
            add_bos = False  # a chat template that writes the BOS itself: never two
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        if not self.info.chat_template:
            raise BackendError(
                f"the model {self.name!r} has no chat template in its GGUF file; use a completion "
                "strategy (few-shot) with it, or an instruction-tuned model for chat"
            )
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        fmt = Jinja2ChatFormatter(
            self.info.chat_template,
            eos_token=self._eos_text,
            bos_token=self._bos_text,
            add_generation_prompt=True,
        )
        return str(fmt(messages=cast(Any, messages)).prompt)

    # -------------------------------------------------------------- generation

    def _encode(self, prompts: Sequence[str], max_new: int) -> tuple[list[list[int]], list[bool]]:
        return fit_prompts(self, [self.tokenize(p) for p in prompts], max_new)

    def _align_cache(self, ids: list[int]) -> None:
        """Keep only a ``reuse_step``-aligned part of the cached prefix ``ids`` shares (see above).

        llama-cpp-python then reuses exactly that part and prefills the rest in micro-batches
        that start at multiples of ``n_ubatch`` (= ``reuse_step``), as a fresh context would.
        """
        llama = self.llama
        n_cached = int(llama.n_tokens)
        if n_cached == 0:
            return
        cached = llama.input_ids[:n_cached]
        common = 0
        for a, b in zip(cached, ids, strict=False):
            if a != b:
                break
            common += 1
        step = self.reuse_step
        keep = min(common, len(ids) - 1) // step * step
        if keep < n_cached:
            llama.n_tokens = keep  # generate() removes the KV cells past it and prefills from here
            self.reused_tokens += keep
        else:
            self.reused_tokens += n_cached

    # -------------------------------------------------------------- structured generation

    def constraint_refusal(self, constraint: OutputConstraint) -> str | None:
        """Why this model cannot constrain decoding to ``constraint``; None when it can (every
        kind, where llguidance is installed: it reads the GGUF's own vocabulary)."""
        return engine_refusal()

    def compile(self, constraint: OutputConstraint) -> CompiledConstraint:
        """``constraint`` compiled for this GGUF's vocabulary (cached; see ``structured``).

        Raises:
            ConstraintError: it does not compile (``param`` names the field).
        """
        stat = self.path.stat()
        tok = gguf_engine_tokenizer(
            self, self.llama, f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        )
        return compile_constraint(constraint, tok)

    def _kwargs(
        self, params: GenerationParams, max_new: int, compiled: CompiledConstraint | None = None
    ) -> dict[str, Any]:
        """``create_completion`` arguments; the logits processors are new per completion (they
        follow one reply's tokens): llguidance's mask for a constraint and the no-repeat n-gram
        ban (llama.cpp has none of its own); ``repeat_penalty`` is llama.cpp's (over its last
        64 tokens, where transformers' ``repetition_penalty`` sees the whole sequence)."""
        kw: dict[str, Any] = {
            "max_tokens": max_new,
            "temperature": params.temperature,
            "top_p": params.top_p if params.temperature > 0 else 1.0,
            "top_k": 0,  # off, as in transformers' greedy/top-p sampling here
            "min_p": 0.0,
            "repeat_penalty": params.repetition_penalty,
            "stop": [s for s in params.stop if s] or None,
        }
        if params.seed is not None:
            kw["seed"] = params.seed
        processors: list[Any] = []
        if params.no_repeat_ngram_size > 0:  # before the mask: the grammar has the last word
            processors.append(NumpyNoRepeatNGram(params.no_repeat_ngram_size, self.llama))
        if compiled is not None:
            processors.append(NumpyGrammarProcessor(compiled, self.llama))
        if processors:
            from llama_cpp import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList(processors)
        return kw

    def generate(
        self, prompts: Sequence[str], params: GenerationParams | None = None
    ) -> list[GenerationOutput]:
        """One completion per prompt, outputs in input order; shared prefixes prefilled once.

        Prompts start in the order of their tokens, so that prompts sharing a prefix follow each
        other and reuse its KV cache. Greedy decoding of several prompts runs ``batch_size`` of
        them per decode step (``llmapps.models.llamacpp_batch``; at the default 3, the same
        texts); sampling, repetition control and constrained decoding run one prompt at a time.
        """
        params = params or GenerationParams()
        if not prompts:
            return []
        max_new = params.max_new_tokens
        encoded, truncated = self._encode(prompts, max_new)
        # a constraint that does not compile fails here, before any token is generated
        compiled = self.compile(params.constraint) if params.constraint is not None else None
        order = sorted(range(len(encoded)), key=lambda i: encoded[i])
        results: list[GenerationOutput | None] = [None] * len(encoded)
        with self._lock:
            slots = self._slots_for(encoded, params)
            if slots > 1:
                return self._generate_batched(encoded, truncated, order, params)
            for i in order:
                self._align_cache(encoded[i])
                try:
                    out = self.llama.create_completion(
                        encoded[i], **self._kwargs(params, max_new, compiled)
                    )
                except (RuntimeError, ValueError) as err:
                    raise BackendError(
                        f"llama.cpp generation with {self.name!r} failed: {err}"
                    ) from err
                choice = out["choices"][0]
                usage = out.get("usage") or {}
                finish = "length" if choice.get("finish_reason") == "length" else "stop"
                results[i] = GenerationOutput(
                    text=choice["text"],
                    prompt_tokens=int(usage.get("prompt_tokens", len(encoded[i]))),
                    completion_tokens=int(usage.get("completion_tokens", 0)),
                    finish_reason=finish,
                    truncated_prompt=truncated[i],
                    constraint_error=(
                        compiled.check(choice["text"], finish, max_new) if compiled else None
                    ),
                )
        return [r for r in results if r is not None]

    def _slots_for(self, encoded: list[list[int]], params: GenerationParams) -> int:
        """Sequences to decode together for this call: 1 (the sequential path) for one prompt,
        a call ``batch_refusal`` refuses, or a KV cache that would not fit the memory budget."""
        if self.batch_size < 2 or len(encoded) < 2:
            return 1
        reason = batch_refusal(params)
        if reason is not None:
            log.debug("%s: %s: one prompt at a time", self.name, reason)
            return 1
        slots = min(self.batch_size, len(encoded))
        # the decoder makes its llama.cpp context on first use, so a new one costs nothing here
        batcher = self._batcher or BatchDecoder(self.llama, slots, reuse_step=self.reuse_step)
        per_slot = max(len(ids) for ids in encoded) + params.max_new_tokens + 1
        fit = batcher.slots_that_fit(per_slot, self.memory_fraction)
        if fit < slots:
            log.warning(
                "%s: %d sequences of %d tokens do not fit the memory budget: decoding %d at once",
                *(self.name, slots, per_slot, max(fit, 1)),
            )
            slots = max(fit, 1)
        if slots < 2:
            return 1
        # a kept decoder with more streams than fit would grow its context past the budget
        if self._batcher is None or not slots <= self._batcher.slots <= max(fit, slots):
            if self._batcher is not None:
                self._batcher.close()
            self._batcher = BatchDecoder(
                self.llama, slots, reuse_step=self.reuse_step, quiet=_native_stderr_to_log
            )
        return self._batcher.slots

    def _generate_batched(
        self,
        encoded: list[list[int]],
        truncated: list[bool],
        order: list[int],
        params: GenerationParams,
    ) -> list[GenerationOutput]:
        assert self._batcher is not None
        before = self._batcher.reused_tokens
        try:
            replies = self._batcher.generate(encoded, order, params.max_new_tokens, params.stop)
        except (RuntimeError, ValueError) as err:
            raise BackendError(f"llama.cpp generation with {self.name!r} failed: {err}") from err
        self.reused_tokens += self._batcher.reused_tokens - before
        return [
            GenerationOutput(
                text=r.text.decode("utf-8", errors="ignore"),
                prompt_tokens=len(ids),
                completion_tokens=len(r.tokens),
                finish_reason=r.finish,
                truncated_prompt=cut,
            )
            for r, ids, cut in zip(replies, encoded, truncated, strict=True)
        ]

    def reset(self) -> None:
        """Forget every cached prefix, the sequential path's and the batch path's."""
        with self._lock:
            self.llama.reset()
            if self._batcher is not None:
                self._batcher.reset()

    def stream(self, prompt: str, params: GenerationParams | None = None) -> Iterator[str]:
        """Text pieces of one completion as llama.cpp produces them (stop strings honoured)."""
        params = params or GenerationParams()
        (ids,), _ = self._encode([prompt], params.max_new_tokens)
        compiled = self.compile(params.constraint) if params.constraint is not None else None
        text, finish = "", "stop"
        with self._lock:
            self._align_cache(ids)
            try:
                for chunk in self.llama.create_completion(
                    ids, stream=True, **self._kwargs(params, params.max_new_tokens, compiled)
                ):
                    piece = chunk["choices"][0]["text"]
                    finish = chunk["choices"][0].get("finish_reason") or finish
                    if piece:
                        text += piece
                        yield piece
            except (RuntimeError, ValueError) as err:
                raise BackendError(
                    f"llama.cpp generation with {self.name!r} failed: {err}"
                ) from err
        if compiled is not None:
            reason = compiled.check(text, finish, params.max_new_tokens)
            if reason:  # a stream has no field for it: said in the log, never silently
                log.warning("%s: streamed reply is invalid: %s", self.name, reason)


@contextlib.contextmanager
def _native_stderr_to_log() -> Iterator[None]:
    """Send what llama.cpp's C code prints to stderr while loading (with a LoRA: a line per
    tensor, whatever ``verbose`` says) to this module's debug log instead of the terminal."""
    import tempfile

    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                log.debug("llama.cpp: %s", line)


def load_gguf_model(
    source: str,
    *,
    context_length: int | None = None,
    n_threads: int | None = None,
    settings: Settings | None = None,
    pool: ModelPool | None = None,
    lora_path: Path | None = None,
    name: str | None = None,
    batch_size: int | None = None,
) -> GGUFModel:
    """Load (once per pool: default the process's ``default_pool()``) a ``.gguf`` file or
    packaged model in llama.cpp.

    Args:
        source: a ``.gguf`` path or a packaged model name.
        context_length: tokens of context to allocate; default the smaller of the model's
            trained context and ``settings.generation.llamacpp_context`` (8192).
        n_threads: CPU threads; default every CPU this process may use, as torch does
            (llama-cpp-python's own default, half the CPUs, is one thread on a 2-core machine).
        settings: resolved settings; read from the environment when omitted.
        pool: where loaded models are kept and shared.
        lora_path: a llama.cpp LoRA file applied on top (see ``llmapps.models.gguf_lora``).
        name: the loaded model's name (default ``source``).
        batch_size: sequences ``generate`` decodes together (1 to 64; default
            ``settings.generation.llamacpp_batch``); given for a model already loaded, it
            replaces that model's.

    Raises:
        ConfigError: ``batch_size`` is not 1 to 64.
    """
    if batch_size is not None:
        check_batch_size(batch_size, name="batch_size")
    settings, pool = loader_context(settings, pool)  # the one loader's preamble
    path = gguf_file_for(source, settings)
    info = read_gguf_header(path)
    cap = context_length or settings.generation.llamacpp_context
    n_ctx = min(cap, info.context_length or cap)

    def load() -> GGUFModel:
        try:
            import llama_cpp
        except ImportError as err:
            raise ConfigError(
                f"the llama.cpp backend needs llama-cpp-python, which is not installed: {INSTALL_HINT}"
            ) from err
        # a build that crashes on this CPU fails here in one line, in a child process, not later
        # in this one with SIGSEGV (see llmapps.models.native_probe)
        check_llamacpp()
        try:
            threads = n_threads or max(1, len(os.sched_getaffinity(0)))
            with _native_stderr_to_log():
                llama = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=N_BATCH,
                    n_ubatch=N_UBATCH,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                    lora_path=str(lora_path) if lora_path else None,
                )
        except (ValueError, RuntimeError, OSError) as err:
            raise BackendError(
                f"llama.cpp cannot load {path} (architecture {info.architecture!r}): {err}. Use a "
                "GGUF of an architecture this llama.cpp build runs (llama, gemma3, qwen2, phi3, ...), "
                "a newer llama-cpp-python, or backend=transformers"
            ) from err
        lm = GGUFModel(
            llama,
            info,
            name=name or source,
            context_length=n_ctx,
            batch_size=batch_size or settings.generation.llamacpp_batch,
            memory_fraction=settings.generation.memory_fraction,
        )
        log.info("loaded %s in llama.cpp (%s, %d-token context)", path, info.architecture, n_ctx)
        return lm

    lora = str(Path(lora_path).resolve()) if lora_path else None
    lm: GGUFModel = pool.get(("gguf", str(path.resolve()), n_ctx, lora), load)
    if batch_size is not None:
        lm.batch_size = batch_size
    return lm


def clear_gguf_cache(pool: ModelPool | None = None) -> None:
    """Forget every GGUF model loaded into ``pool`` (default: the process's), closing each
    (frees its memory once nothing else holds it)."""
    from llmapps.models.pool import default_pool

    pool = pool or default_pool()
    for key in pool.loaded("gguf"):
        lm = pool.peek(key)
        close = getattr(getattr(lm, "llama", None), "close", None)
        if close is not None:
            close()
    pool.clear("gguf")


# ------------------------------------------------------------------ LangChain models


class _OnGGUF:
    """``from_gguf`` and a ``local_model`` loaded from GGUF, for both LangChain classes below;
    generating and streaming are their base classes' (``GGUFModel`` has ``LocalModel``'s surface)."""

    @classmethod
    def from_gguf(cls, lm: GGUFModel, **kwargs: Any) -> Any:
        obj: Any = cls(model=lm.name, **kwargs)  # type: ignore[call-arg]
        obj._lm = lm
        return obj

    @property
    def local_model(self) -> Any:
        me = cast(Any, self)
        if me._lm is None:
            me._lm = load_gguf_model(me.model)
        return me._lm


class LlamaCppLLM(_OnGGUF, LocalLLM):
    """A GGUF model in llama.cpp as a LangChain completion model (``LocalLLM``'s contract).

    Example:
        >>> llm = LlamaCppLLM(model="smollm2-135m-instruct", max_new_tokens=32)  # doctest: +SKIP
        >>> llm.batch(["The capital of France is", "2 + 2 ="], stop=["\\n"])      # doctest: +SKIP
    """

    @property
    def _llm_type(self) -> str:
        return "llmapps-llamacpp"


class ChatLlamaCpp(_OnGGUF, ChatLocal):
    """A GGUF instruct model in llama.cpp as a LangChain chat model (its own chat template)."""

    @property
    def _llm_type(self) -> str:
        return "llmapps-chat-llamacpp"
