"""Load any Hugging Face causal LM (hub id or directory) and generate from it in real batches.

``load_local_model`` resolves a name to weights (the built-in ``tiny-base``/``tiny-instruct``,
a local directory, or a hub id with ``local_files_only`` first), picks the device (CUDA when
present) and dtype (bf16 on capable GPUs), and caches the loaded model per process.

``LocalModel.generate`` is the one batched generation path every local strategy uses: prompts are
sorted by length, left-padded in batches (each prompt prefilled without padding, the caches stitched
into one left-padded batch cache), stop strings end each row on its own, the prompt is never
echoed, and a CUDA out-of-memory halves the batch and retries. Its parts live beside it: the
device and dtype in ``device``, the stitched prefill in ``prefill``, the memory budget in
``memory``, stop strings and ``stream_local`` in ``streaming``.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmapps.api.backends import Backend, Capabilities, ModelSpec, register_backend
from llmapps.api.generation import GenerationOutput as GenerationOutput
from llmapps.api.generation import GenerationParams as GenerationParams
from llmapps.errors import BackendError, InputError, ModelNotFoundError

# pick_device, pick_dtype, available_memory, estimate_generate_bytes, cut_at_stop and stream_local
# moved to modules of their own and stay importable from here, where users import them
from llmapps.models.device import pick_device, pick_dtype
from llmapps.models.grammar_masks import TorchGrammarProcessor
from llmapps.models.loader import load_model
from llmapps.models.memory import available_memory, rows_within_budget
from llmapps.models.memory import estimate_generate_bytes as estimate_generate_bytes
from llmapps.models.prefill import UnstitchableCache, cache_arg, stitched_prefill
from llmapps.models.streaming import StopStrings, cut_at_stop, stream_local
from llmapps.models.structured import (
    CompiledConstraint,
    OutputConstraint,
    compile_constraint,
    engine_refusal,
    hf_engine_tokenizer,
)
from llmapps.settings import Settings, get_settings

if TYPE_CHECKING:  # heavy imports stay lazy
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmapps.models.pool import ModelPool

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("tiny-base", "tiny-instruct")


def resolve_model_path(name: str, settings: Settings | None = None, *, build: bool = True) -> str:
    """Turn a model name into something ``from_pretrained`` accepts.

    Built-in tiny names and packaged model names (``gemma-3-270m``, ``smollm2-135m-instruct``)
    map to ``$LLMAPPS_HOME/models/NAME`` and are built on first use when ``build`` is true; a
    ``.gguf`` file is converted once into a folder there. An existing directory is used as is.
    Anything else is treated as a hub id.
    """
    settings = settings or get_settings()
    if name in BUILTIN_MODELS:
        path = settings.models_dir / name
        if not (path / "config.json").exists():
            if not build:
                raise ModelNotFoundError(
                    f"the built-in model {name!r} is not built yet at {path}; "
                    "run `llmapps models build`"
                )
            from llmapps.api.apps import default_corpus
            from llmapps.models.tiny import ensure_tiny_models

            # the corpus comes from the app contract (api), read only if nothing is built yet
            ensure_tiny_models(settings.models_dir, corpus=default_corpus)
        return str(path)
    from llmapps.models import packaged

    if packaged.is_packaged(name):
        path = settings.models_dir / name
        if not build and not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"the packaged model {name!r} is not built yet at {path}; "
                f"run `llmapps models build {name}`"
            )
        return str(packaged.ensure_packaged_model(name, settings))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        return str(packaged.ensure_gguf_model(path, settings))
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} exists but holds no config.json: point to a folder written by "
                "save_pretrained (or a Hugging Face snapshot)"
            )
        return str(path)
    return name


class LocalModel:
    """A loaded causal LM and its tokenizer, with one batched generation path (a ``LocalLM``)."""

    backend = "transformers"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        device: str,
        batch_size: int = 16,
        prefill_chunk: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.batch_size = batch_size
        # A static KV cache skips the per-step torch.cat of the dynamic one (~25% faster greedy
        # batches on CPU, measured in benchmarks/bench_generation.py); None after a model refuses it.
        self.cache_implementation: str | None = "static"
        # Prefill each prompt on its own (no padding) and stitch the caches into one left-padded
        # batch cache before decoding together (see _stitched_prefill); False once refused.
        self.stitch_prefill = True
        # Tokens per prefill pass on models with sliding-window layers (generation.
        # prefill_chunk_tokens; None: a prompt in one pass); see prefill.stitched_prefill.
        self.prefill_chunk = prefill_chunk
        self._lock = threading.Lock()  # generate() is not re-entrant on one model
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    def memory_budget(self) -> int:
        """Bytes one generate() chunk may use beyond the weights (``generation.memory_budget_gb``,
        else ``memory_fraction`` of the RAM, or free VRAM, available now)."""
        gen = get_settings().generation
        if gen.memory_budget_gb is not None:
            return int(gen.memory_budget_gb * 2**30)
        return int(gen.memory_fraction * available_memory(self.device))

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, attr, None)
            if value:
                return int(value)
        return int(getattr(self.tokenizer, "model_max_length", 2048))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        if not self.has_chat_template:
            raise BackendError(
                f"the model {self.name!r} has no chat template; use a completion strategy "
                "(few-shot) with it, or an instruction-tuned model for chat"
            )
        if messages and messages[-1].get("role") == "assistant":
            # a final assistant message is the start of the reply (prefill): the model continues it
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, continue_final_message=True
            )
        else:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return str(text)

    def stream(self, prompt: str, params: GenerationParams | None = None) -> Iterator[str]:
        """Text pieces of one completion as they are generated (``stream_local``)."""
        return stream_local(self, prompt, params or GenerationParams())

    def constraint_refusal(self, constraint: OutputConstraint) -> str | None:
        """Why this model cannot constrain decoding to ``constraint``; None when it can (every
        kind, where llguidance is installed and the tokenizer is a fast one)."""
        if (reason := engine_refusal()) is not None:
            return reason
        if getattr(self.tokenizer, "backend_tokenizer", None) is None:
            return f"the tokenizer of {self.name!r} is not a fast tokenizer"
        return None

    def end_ids(self) -> list[int]:
        """The token ids that end a row: the generation config's end-of-sequence ids and pad."""
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if not ids and self.tokenizer.eos_token_id is not None:
            ids = [self.tokenizer.eos_token_id]
        return [int(i) for i in ids]

    def compile(self, constraint: OutputConstraint) -> CompiledConstraint:
        """``constraint`` compiled for this model's tokenizer (cached; see ``structured``).

        Raises:
            ConstraintError: it does not compile (``param`` names the field).
        """
        head = self.model.get_output_embeddings()
        vocab = int(head.weight.shape[0]) if head is not None else len(self.tokenizer)
        tok = hf_engine_tokenizer(self.tokenizer, vocab, self.end_ids())
        return compile_constraint(constraint, tok)

    def with_batch_size(self, batch_size: int | None) -> LocalModel:
        """A view of this model (same weights, tokenizer and lock) generating ``batch_size``
        prompts at a time; ``self`` when it already does. The shared model is never changed."""
        if not batch_size or batch_size == self.batch_size:
            return self
        view = copy.copy(self)
        view.batch_size = batch_size
        return view

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams | None = None,
        *,
        batch_size: int | None = None,
    ) -> list[GenerationOutput]:
        """Generate one completion per prompt, batched (``batch_size`` prompts at a time, default
        ``self.batch_size``); the outputs keep the input order."""
        params = params or GenerationParams()
        if not prompts:
            return []
        encoded, truncated = fit_prompts(
            self,
            [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts],
            params.max_new_tokens,
        )
        # a constraint that does not compile fails here, before any token is generated
        compiled = self.compile(params.constraint) if params.constraint is not None else None
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        results: list[GenerationOutput | None] = [None] * len(encoded)
        with self._lock:
            pos = 0
            batch_size = batch_size or self.batch_size
            budget = self.memory_budget()
            while pos < len(order):
                rows = rows_within_budget(
                    self.model.config,
                    self.model.dtype.itemsize,
                    self.name,
                    [len(encoded[i]) for i in order[pos : pos + batch_size]],
                    params.max_new_tokens,
                    budget,
                )
                chunk = order[pos : pos + rows]
                try:
                    outs = self._generate_chunk([encoded[i] for i in chunk], params, compiled)
                except Exception as err:  # CUDA OOM: halve the batch and retry
                    if _is_oom(err) and batch_size > 1:
                        batch_size = max(1, batch_size // 2)
                        log.warning("out of memory: retrying with batch size %d", batch_size)
                        _empty_cache()
                        continue
                    raise
                for i, out in zip(chunk, outs, strict=True):
                    out.truncated_prompt = truncated[i]
                    results[i] = out
                pos += len(chunk)
        return [r for r in results if r is not None]

    def _generate_chunk(
        self,
        batch: list[list[int]],
        params: GenerationParams,
        compiled: CompiledConstraint | None = None,
    ) -> list[GenerationOutput]:
        import torch

        tok = self.tokenizer
        width = max(len(ids) for ids in batch)
        pad_id = tok.pad_token_id
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        input_ids = input_ids.to(self.model.device)
        attention = attention.to(self.model.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": pad_id,
            "do_sample": params.temperature > 0,
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        else:  # silence "temperature is set but do_sample is False" from model defaults
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            # Our own check on decoded tails every few steps: transformers' stop_strings criterion
            # costs ~10% per step; rows may run a few tokens past a stop, cut off below anyway.
            kwargs["stopping_criteria"] = [StopStrings(tok, list(params.stop), width)]
        kwargs.update(repetition_kwargs(params))
        end_ids = set(self.end_ids())
        if pad_id is not None:
            end_ids.add(pad_id)
        if compiled is not None:
            # after transformers' penalties, before temperature/top-p: a masked token stays out
            kwargs["logits_processor"] = [
                TorchGrammarProcessor(
                    compiled,
                    len(batch),
                    width,
                    sorted(end_ids),
                    guard_banned=params.no_repeat_ngram_size > 0,
                )
            ]
        generate: Any = self.model.generate  # transformers' stubs type it as a Tensor attribute
        with torch.inference_mode():
            cache = self._stitched_prefill(batch, width, params.max_new_tokens)
            if cache is not None:
                try:
                    out = generate(
                        input_ids=input_ids,
                        attention_mask=attention,
                        **{cache_arg(): cache},
                        **kwargs,
                    )
                except (ValueError, NotImplementedError, TypeError) as err:
                    log.info(
                        "%s: generate refused a prefilled cache (%s); prefilling padded batches",
                        self.name,
                        err,
                    )
                    self.stitch_prefill = False
                    cache = None
            if cache is None and self.cache_implementation:
                try:
                    out = generate(
                        input_ids=input_ids,
                        attention_mask=attention,
                        cache_implementation=self.cache_implementation,
                        **kwargs,
                    )
                except (ValueError, NotImplementedError, TypeError) as err:
                    log.info(
                        "%s: no %s cache (%s); using the dynamic one",
                        self.name,
                        self.cache_implementation,
                        err,
                    )
                    self.cache_implementation = None
            if cache is None and not self.cache_implementation:
                out = generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new = out[:, width:].tolist()
        results = []
        for row, ids in enumerate(new):
            finish = "length"
            cut = len(ids)
            for j, t in enumerate(ids):
                if t in end_ids:
                    cut, finish = j, "stop"
                    break
            ids = ids[:cut]
            text, hit = cut_at_stop(str(tok.decode(ids, skip_special_tokens=True)), params.stop)
            if hit:
                finish = "stop"
            results.append(
                GenerationOutput(
                    text=text,
                    prompt_tokens=len(batch[row]),
                    completion_tokens=len(ids),
                    finish_reason=finish,
                    constraint_error=(
                        compiled.check(text, finish, params.max_new_tokens) if compiled else None
                    ),
                )
            )
        return results

    def _stitched_prefill(self, batch: list[list[int]], width: int, max_new_tokens: int) -> Any:
        """One left-padded cache of the batch prefilled without padding (``stitched_prefill``),
        or None: stitching is off for this model, does not apply, or the model's cache has
        layers it does not handle (then it stays off for this model)."""
        if not self.stitch_prefill:
            return None
        try:
            return stitched_prefill(
                self.model,
                batch,
                width,
                max_new_tokens,
                static=self.cache_implementation == "static",
                chunk=self.prefill_chunk,
            )
        except UnstitchableCache as err:
            log.info("%s: no stitched prefill (%s); prefilling padded batches", self.name, err)
            self.stitch_prefill = False
            return None


def fit_prompts(
    lm: Any, encoded: list[list[int]], max_new: int
) -> tuple[list[list[int]], list[bool]]:
    """Each prompt's token ids cut to its last tokens that fit ``lm``'s context with ``max_new``
    new tokens (a warning names each cut one), and which were cut; any backend's generate.

    Raises:
        InputError: ``max_new`` leaves no room for a prompt at all.
    """
    limit = lm.context_length - max_new
    if limit <= 0:
        raise InputError(
            f"max_new_tokens={max_new} leaves no room for a prompt in the "
            f"{lm.context_length}-token context of {lm.name!r}; lower max_new_tokens"
        )
    out, truncated = [], []
    for i, ids in enumerate(encoded):
        truncated.append(len(ids) > limit)
        if len(ids) > limit:
            log.warning(
                "prompt %d has %d tokens, more than the %d that fit %r with %d new tokens: "
                "keeping its last %d tokens",
                *(i, len(ids), limit, lm.name, max_new, limit),
            )
            ids = ids[-limit:]
        out.append(ids)
    return out, truncated


def repetition_kwargs(params: GenerationParams) -> dict[str, Any]:
    """transformers' ``generate`` arguments for the params' repetition control (none when off)."""
    kw: dict[str, Any] = {}
    if params.repetition_penalty != 1.0:
        kw["repetition_penalty"] = params.repetition_penalty
    if params.no_repeat_ngram_size > 0:
        kw["no_repeat_ngram_size"] = params.no_repeat_ngram_size
    return kw


def _is_oom(err: Exception) -> bool:
    return "out of memory" in str(err).lower()


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Load (once per pool) a model with its tokenizer on the transformers backend:
# ``load_local_model(name, *, settings, device, dtype, batch_size, pool)``, ``name`` being
# ``tiny-base``/``tiny-instruct``, a directory written by ``save_pretrained`` or a hub id (local
# cache first); ``batch_size`` gives a view of the shared model with its own batch size. See
# ``llmapps.models.loader.load_model``.
load_local_model = functools.partial(load_model, backend="transformers")


@register_backend("transformers")
class TransformersBackend(Backend):
    """Hugging Face causal LMs in transformers (``LocalModel``); the one backend with logits."""

    name = "transformers"
    capabilities = Capabilities(logits=True, devices=("*",), dtypes=True)
    example_source = "tiny-instruct"

    def load(self, spec: ModelSpec) -> LocalModel:
        settings = spec.settings
        path = resolve_model_path(spec.source, settings)
        dev = pick_device(spec.device or settings.device)
        dt = spec.dtype or settings.dtype

        def load() -> LocalModel:
            model, tokenizer = load_pretrained(path, dev, dt, settings)
            return LocalModel(
                model,
                tokenizer,
                name=spec.source,
                device=dev,
                batch_size=settings.generation.batch_size,
                prefill_chunk=settings.generation.prefill_chunk_tokens,
            )

        shared: LocalModel = spec.pool.get(("transformers", path, dev, dt), load)
        return shared.with_batch_size(spec.batch_size)

    def completion_llm(self, lm: Any, **kwargs: Any) -> Any:
        from llmapps.models.langchain_local import LocalLLM

        return LocalLLM.from_local(lm, **kwargs)

    def chat_llm(self, lm: Any, **kwargs: Any) -> Any:
        from llmapps.models.langchain_local import ChatLocal

        return ChatLocal.from_local(lm, **kwargs)


def load_pretrained(
    path: str, device: str, dtype: str, settings: Settings
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh (model, tokenizer) from ``path`` (a folder, or a hub id in the local cache) on
    ``device`` in ``dtype``, outside any pool: for callers that change the weights (training,
    merging, a base that carries adapters).

    Raises:
        ModelNotFoundError: not on disk nor in the Hugging Face cache (and the hub unreachable).
        BackendError: the checkpoint left tensors without data.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = pick_dtype(dtype, device)
    common = {"trust_remote_code": settings.trust_remote_code}
    attempts = [True] if settings.offline or Path(path).exists() else [True, False]
    last: Exception | None = None
    started = time.perf_counter()
    for local_only in attempts:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only, **common)
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=local_only, dtype=torch_dtype, **common
            )
            break
        except OSError as err:
            last = err
    else:
        raise ModelNotFoundError(
            f"cannot load the model {path!r}: not found on disk or in the Hugging Face cache"
            f"{'' if settings.offline else ', and the hub could not be reached'}. Download it "
            f"where you have network (`hf download {path}`) and set HF_HOME, or pass a directory "
            "written by save_pretrained (--base-model/--instruct-model or LLMAPPS_BASE_MODEL)."
        ) from last
    if _meta_tensors(model):
        # Seen once (not reproduced since) in a process that had just built and loaded the same
        # model: a tied weight left on the meta device. Re-tie, then reload once, before failing.
        model.tie_weights()
        if _meta_tensors(model):
            log.warning("%s: weights left on the meta device after loading; loading again", path)
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=torch_dtype, **common
            )
        left = _meta_tensors(model)
        if left:
            raise BackendError(
                f"loading {path!r} left {len(left)} tensor(s) without data ({', '.join(left[:3])}); "
                "the checkpoint may be incomplete: rebuild it (llmapps models build --force) or "
                "download it again"
            )
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    log.info(
        "loaded %s on %s (%s) in %.1fs", path, device, torch_dtype, time.perf_counter() - started
    )
    return model, tokenizer


_from_pretrained = load_pretrained  # its former, private name


def _meta_tensors(model: Any) -> list[str]:
    """Names of parameters and buffers still on the meta device (declared but never loaded)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in named if t.device.type == "meta"]


def clear_model_cache(pool: ModelPool | None = None) -> None:
    """Forget every model loaded with transformers into ``pool`` (default: the process's), the
    ``lora`` strategy's shared bases included (frees memory; the next load reads from disk again)."""
    from llmapps.models.pool import default_pool

    (pool or default_pool()).clear("transformers", "lora-base")
    _empty_cache()
