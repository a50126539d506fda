"""Load any Hugging Face causal LM (hub id or directory) and generate from it in real batches.

``load_local_model`` resolves a name to weights (the built-in ``tiny-base``/``tiny-instruct``,
a local directory, or a hub id with ``local_files_only`` first), picks the device (CUDA when
present) and dtype (bf16 on capable GPUs), and caches the loaded model per process.

``LocalModel.generate`` is the one batched generation path every local strategy uses: prompts are
sorted by length, left-padded in batches (each prompt prefilled without padding, the caches stitched
into one left-padded batch cache), stop strings end each row on its own, the prompt is never
echoed, and a CUDA out-of-memory halves the batch and retries.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from llmapps.errors import BackendError, InputError, ModelNotFoundError
from llmapps.settings import Settings, get_settings

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmapps.models.pool import ModelPool

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("tiny-base", "tiny-instruct")


@dataclass
class GenerationParams:
    """Sampling settings for one generate call; greedy when ``temperature`` is 0."""

    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class GenerationOutput:
    """One completion: text without the prompt, cut before the first stop string."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or stop string) or "length"
    truncated_prompt: bool = False


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def pick_dtype(requested: str, device: str) -> torch.dtype:
    import torch

    if requested != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                    "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[requested]
        except KeyError as err:
            raise InputError(
                f"dtype {requested!r} is not one of auto, float32, bfloat16, float16"
            ) from err
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "cpu" and _cpu_has_native_bf16():
        # Measured on 2 cores with AVX512-BF16 (4 prompts x 512 tokens, then 8 decode steps, three
        # interleaved repeats, machine shared): Gemma 3 270M prefill 20.4 s bf16 vs 33.3 s fp32,
        # decode 2.2 vs 4.4 s/step; SmolLM2-135M prefill 18.3 vs 30.4 s, decode 2.2 vs 2.3 s/step.
        # Half the weight bytes to stream per token and oneDNN's bf16 kernels win on such CPUs; on
        # CPUs without native bf16 it is emulated and slower, so float32 stays there.
        return torch.bfloat16
    return torch.float32


def _cpu_has_native_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
            from llmapps.models.tiny import ensure_tiny_models

            ensure_tiny_models(settings.models_dir)
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
    """A loaded causal LM and its tokenizer, with one batched generation path."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        device: str,
        batch_size: int = 16,
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

    def _rows_within_budget(self, lengths: list[int], max_new: int, budget: int) -> int:
        """How many of ``lengths`` (longest first) one chunk can take within ``budget`` bytes."""
        dtype_bytes = self.model.dtype.itemsize
        rows = len(lengths)
        while rows > 0:
            need = estimate_generate_bytes(self.model.config, rows, lengths[0], max_new, dtype_bytes)
            if need <= budget:
                break
            rows = rows // 2 if rows > 8 else rows - 1
        if rows == 0:
            need = estimate_generate_bytes(self.model.config, 1, lengths[0], max_new, dtype_bytes)
            raise InputError(
                f"a prompt of {lengths[0]} tokens with {max_new} new tokens needs about "
                f"{need / 2**30:.1f} GiB for {self.name!r}, more than the memory budget of "
                f"{budget / 2**30:.1f} GiB: shorten the input, lower generation.max_prompt_tokens, "
                "or raise generation.memory_budget_gb"
            )
        if rows < len(lengths):
            log.info("%s: %d prompts of up to %d tokens per chunk fit the %.1f GiB memory budget",
                     self.name, rows, lengths[0], budget / 2**30)
        return rows

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

    def with_batch_size(self, batch_size: int | None) -> LocalModel:
        """A view of this model (same weights, tokenizer and lock) generating ``batch_size``
        prompts at a time; ``self`` when it already does. The shared model is never changed."""
        if not batch_size or batch_size == self.batch_size:
            return self
        view = copy.copy(self)
        view.batch_size = batch_size
        return view

    def generate(
        self, prompts: Sequence[str], params: GenerationParams | None = None, *,
        batch_size: int | None = None,
    ) -> list[GenerationOutput]:
        """Generate one completion per prompt, batched (``batch_size`` prompts at a time, default
        ``self.batch_size``); the outputs keep the input order."""
        params = params or GenerationParams()
        if not prompts:
            return []
        encoded = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        limit = self.context_length - params.max_new_tokens
        if limit <= 0:
            raise InputError(
                f"max_new_tokens={params.max_new_tokens} leaves no room for a prompt in the "
                f"{self.context_length}-token context of {self.name!r}; lower max_new_tokens"
            )
        truncated = [False] * len(encoded)
        for i, ids in enumerate(encoded):
            if len(ids) > limit:
                log.warning(
                    "prompt %d has %d tokens, more than the %d that fit %r with %d new tokens: "
                    "keeping its last %d tokens", i, len(ids), limit, self.name,
                    params.max_new_tokens, limit,
                )
                encoded[i] = ids[-limit:]
                truncated[i] = True
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        results: list[GenerationOutput | None] = [None] * len(encoded)
        with self._lock:
            pos = 0
            batch_size = batch_size or self.batch_size
            budget = self.memory_budget()
            while pos < len(order):
                rows = self._rows_within_budget(
                    [len(encoded[i]) for i in order[pos : pos + batch_size]],
                    params.max_new_tokens, budget,
                )
                chunk = order[pos : pos + rows]
                try:
                    outs = self._generate_chunk([encoded[i] for i in chunk], params)
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
        self, batch: list[list[int]], params: GenerationParams
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
            kwargs["stopping_criteria"] = [_StopStrings(tok, list(params.stop), width)]
        generate: Any = self.model.generate  # transformers' stubs type it as a Tensor attribute
        with torch.inference_mode():
            cache = self._stitched_prefill(batch, width, params.max_new_tokens)
            if cache is not None:
                try:
                    out = generate(input_ids=input_ids, attention_mask=attention,
                                              past_key_values=cache, **kwargs)
                except (ValueError, NotImplementedError, TypeError) as err:
                    log.info("%s: generate refused a prefilled cache (%s); prefilling padded "
                             "batches", self.name, err)
                    self.stitch_prefill = False
                    cache = None
            if cache is None and self.cache_implementation:
                try:
                    out = generate(input_ids=input_ids, attention_mask=attention,
                                              cache_implementation=self.cache_implementation, **kwargs)
                except (ValueError, NotImplementedError, TypeError) as err:
                    log.info("%s: no %s cache (%s); using the dynamic one", self.name,
                             self.cache_implementation, err)
                    self.cache_implementation = None
            if cache is None and not self.cache_implementation:
                out = generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new = out[:, width:].tolist()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(pad_id) if pad_id is not None else None
        results = []
        for row, ids in enumerate(new):
            finish = "length"
            cut = len(ids)
            for j, t in enumerate(ids):
                if t in eos_ids:
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
                )
            )
        return results


    def _stitched_prefill(self, batch: list[list[int]], width: int, max_new_tokens: int) -> Any:
        """Prefill each prompt but its last token without padding; return one left-padded cache.

        A padded prefill spends its time on pad tokens and on an explicit attention mask (SDPA
        then cannot take its plain causal path); prompts of 324-596 tokens prefilled one by one
        took 0.53 s against 0.80 s padded at batch 32. Row ``i``'s keys and values go to the
        last ``L_i - 1`` of ``width - 1`` cache positions, so the batch looks exactly as if it had
        been prefilled left-padded: ``generate`` then gets the full padded prompts, computes the
        positions from the attention mask as usual and feeds only the last token of each row.

        **Shared prefix.** The tokens every row starts with (the instruction and, with
        ``example_selection=order``, the worked examples) are prefilled once, and each group of
        rows continues from a copy of that cache (a chunked prefill: the same attention, exact up
        to float rounding). Only a prefix of at least ``_MIN_SHARED_PREFIX`` tokens is shared.

        **Sliding-window layers** (Gemma 3: 5 of every 6 layers see 512 tokens) keep only their
        last ``window - 1`` keys; those are right-aligned the same way, and the layer's length
        counter is set to the padded width, so the mask ``generate`` builds maps each cached key
        to its place in the padded batch, as for a full layer.

        Returns None (the caller prefills padded batches) where this does not apply: one row of
        no shared prefix or rows of one length with none (nothing to gain), a one-token prompt,
        an encoder-decoder model, or a cache layer of a type not handled here.
        """
        import torch
        from transformers.cache_utils import (
            DynamicLayer,
            DynamicSlidingWindowLayer,
            StaticCache,
            StaticLayer,
        )

        lengths = [len(ids) for ids in batch]
        if not self.stitch_prefill or min(lengths) < 2 or self.model.config.is_encoder_decoder:
            return None
        shared = _shared_prefix(batch) if len(batch) > 1 else 0
        if shared < _MIN_SHARED_PREFIX:
            shared = 0
            if len(set(lengths)) < 2:
                return None
        model = self.model
        config = model.config.get_text_config(decoder=True)
        keep = {"logits_to_keep": 1} if _accepts(model.forward, "logits_to_keep") else {}
        kinds = (DynamicLayer, DynamicSlidingWindowLayer)

        def plain(cache: Any) -> bool:
            layers: list[Any] = list(getattr(cache, "layers", None) or [])
            return bool(layers) and all(type(layer) in kinds for layer in layers)

        prefix_cache: Any = None
        if shared:
            ids = torch.tensor([batch[0][:shared]], dtype=torch.long, device=model.device)
            prefix_cache = model(input_ids=ids, use_cache=True, **keep).past_key_values
            if not plain(prefix_cache):
                self.stitch_prefill = False
                return None

        def continued(rows: int) -> Any:
            """A copy of the prefix cache for ``rows`` rows, ``shared`` tokens long."""
            data = [(layer.keys.expand(rows, -1, -1, -1).contiguous(),
                     layer.values.expand(rows, -1, -1, -1).contiguous())
                    for layer in prefix_cache.layers]
            return _dynamic_cache(data, config, shared)

        # rows of one length share a forward pass (no padding either way)
        groups: dict[int, list[int]] = {}
        for row, n in enumerate(lengths):
            groups.setdefault(n, []).append(row)
        past = width - 1
        stitched: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        for n, rows in groups.items():
            start = shared if n - 1 > shared else 0  # a row that is all prefix: prefill it whole
            ids = torch.tensor([batch[r][start:-1] for r in rows], dtype=torch.long,
                               device=model.device)
            extra = {"past_key_values": continued(len(rows))} if start else {}
            pkv = model(input_ids=ids, use_cache=True, **extra, **keep).past_key_values
            if not plain(pkv):
                self.stitch_prefill = False
                return None
            if stitched is None:
                stitched = [
                    (layer.keys.new_zeros((len(batch), layer.keys.shape[1],
                                           _kept(layer, past), layer.keys.shape[3])),
                     layer.values.new_zeros((len(batch), layer.values.shape[1],
                                             _kept(layer, past), layer.values.shape[3])))
                    for layer in pkv.layers
                ]
            index = torch.tensor(rows, device=model.device)
            for (keys, values), layer in zip(stitched, pkv.layers, strict=True):
                m = layer.keys.shape[2]  # n - 1, or the window's last keys of them
                keys[index, :, keys.shape[2] - m:] = layer.keys
                values[index, :, values.shape[2] - m:] = layer.values
        assert stitched is not None
        sliding = [isinstance(layer, DynamicSlidingWindowLayer) for layer in pkv.layers]
        if self.cache_implementation != "static" or any(sliding):
            return _dynamic_cache(stitched, config, past)
        cache = StaticCache(config=config, max_cache_len=width + max_new_tokens)
        if len(cache.layers) != len(stitched) or any(
            type(layer) is not StaticLayer for layer in cache.layers
        ):
            return _dynamic_cache(stitched, config, past)
        static_layers: list[Any] = list(cache.layers)  # all StaticLayer, checked just above
        for layer, (keys, values) in zip(static_layers, stitched, strict=True):
            layer.lazy_initialization(keys, values)
            layer.keys[:, :, :past] = keys
            layer.values[:, :, :past] = values
            layer.cumulative_length.fill_(past)
        return cache


# The shortest common prompt start worth a prefill of its own (shorter: each row prefills it).
_MIN_SHARED_PREFIX = 32


def _shared_prefix(batch: list[list[int]]) -> int:
    """Tokens every row starts with, short of each row's last token (fed to ``generate``)."""
    first = batch[0]
    n = min(len(ids) for ids in batch) - 1
    for ids in batch[1:]:
        i = 0
        while i < n and ids[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _kept(layer: Any, past: int) -> int:
    """Cache positions a stitched layer holds: ``past``, or a sliding layer's window less one."""
    window = getattr(layer, "sliding_window", None)
    return min(past, int(window) - 1) if window else past


def _dynamic_cache(stitched: list[Any], config: Any, past: int) -> Any:
    """A ``DynamicCache`` holding these tensors, every layer ``past`` tokens long (a sliding
    layer holds only the last ``window - 1`` of them)."""
    from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

    cache = DynamicCache(stitched, config=config)
    layers: list[Any] = list(cache.layers)
    for layer in layers:
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = past  # its keys are the last window - 1 of them
    return cache


def available_memory(device: str) -> int:
    """Bytes free for new allocations: free VRAM on CUDA, else available RAM."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_generate_bytes(
    config: Any, rows: int, width: int, max_new: int, dtype_bytes: int
) -> int:
    """A deliberately high estimate of what generating ``rows`` prompts of up to ``width``
    tokens costs beyond the weights: the KV cache for ``width + max_new`` positions (sliding-window
    layers keep only their window), plus the largest transient of one layer's prefill (attention
    scores and probabilities in float32 when the math kernel materializes them, the MLP's
    activations, the layer's full keys and values before a sliding window trims them), plus the
    last position's logits over the vocabulary. 10% on top for the allocator.

    For Gemma 3 270M (18 layers, 1 KV head of 256, 262,144-token vocabulary), 8 prompts of 2,048
    tokens come to ~1.7 GiB in float32 (1.4 in bf16), of which the prefill's attention is most; at
    the 32,768-token context one prompt alone comes to ~36 GiB, which is why the prompt budget, not
    the context, is the target.
    """
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = int(getattr(cfg, "num_hidden_layers", 1))
    heads = int(getattr(cfg, "num_attention_heads", 1))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    hidden = int(getattr(cfg, "hidden_size", 1))
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    vocab = int(getattr(cfg, "vocab_size", 1))
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * layers
    total = width + max_new
    per_position = kv_heads * head_dim * 2 * dtype_bytes
    kv = sum(
        rows * (min(int(window), total) if window and t == "sliding_attention" else total) * per_position
        for t in types
    )
    attention = rows * heads * width * width * 4 * 2
    mlp = rows * width * inter * dtype_bytes * 3
    states = rows * width * hidden * dtype_bytes * 4
    layer_kv = rows * width * heads * head_dim * 2 * dtype_bytes
    logits = rows * vocab * 4 * 2
    return int(1.1 * (kv + max(attention, mlp) + states + layer_kv + logits))


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _StopStrings:
    """A per-row stopping criterion: every ``every`` steps, decode each row's new tokens and
    mark rows whose text holds a stop string (transformers' ``StopStringCriteria`` works per step
    over token-level tables, which costs more than the tiny models' forward passes)."""

    def __init__(self, tokenizer: Any, stop: list[str], prompt_width: int, every: int = 4) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.start = prompt_width
        self.every = every
        self.steps = 0
        self.done: Any = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        self.steps += 1
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.steps % self.every == 0:
            new = input_ids[:, self.start :].tolist()
            for row, ids in enumerate(new):
                if not self.done[row]:
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    if any(s and s in text for s in self.stop):
                        self.done[row] = True
        return self.done.clone()


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; say whether one was found."""
    first = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:first], True) if first >= 0 else (text, False)


def _is_oom(err: Exception) -> bool:
    return "out of memory" in str(err).lower()


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_local_model(
    name: str,
    *,
    settings: Settings | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    pool: ModelPool | None = None,
) -> LocalModel:
    """Load (once per pool) the model ``name`` with its tokenizer.

    Args:
        name: ``tiny-base``/``tiny-instruct``, a directory written by ``save_pretrained``, or a
            Hugging Face hub id (looked up in the local cache first; downloaded only when not
            offline).
        settings: resolved settings; read from the environment when omitted.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``...
        dtype: ``auto`` (bf16 on capable GPUs, float32 otherwise) or a dtype name.
        batch_size: prompts per ``generate`` call, for the model returned only: a caller
            asking for another batch size gets a view of the same loaded model with its own.
        pool: where loaded models are kept and shared (default: the process's ``default_pool()``).
    """
    from llmapps.models.pool import default_pool

    settings = settings or get_settings()
    path = resolve_model_path(name, settings)
    dev = pick_device(device or settings.device)
    dt = dtype or settings.dtype

    def load() -> LocalModel:
        model, tokenizer = load_pretrained(path, dev, dt, settings)
        return LocalModel(model, tokenizer, name=name, device=dev, batch_size=settings.generation.batch_size)

    shared = (pool or default_pool()).get(("transformers", path, dev, dt), load)
    return shared.with_batch_size(batch_size)


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
    log.info("loaded %s on %s (%s) in %.1fs", path, device, torch_dtype, time.perf_counter() - started)
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


def stream_local(lm: LocalModel, prompt: str, params: GenerationParams) -> Any:
    """Yield text pieces of one completion as they are generated (stop strings honoured)."""
    import torch
    from transformers import TextIteratorStreamer

    ids = lm.tokenizer(prompt, add_special_tokens=True, return_tensors="pt")
    limit = lm.context_length - params.max_new_tokens
    input_ids = ids["input_ids"][:, -limit:].to(lm.model.device)
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "max_new_tokens": params.max_new_tokens,
        "pad_token_id": lm.tokenizer.pad_token_id,
        "do_sample": params.temperature > 0,
        "streamer": streamer,
    }
    if params.temperature > 0:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=lm.tokenizer)

    failure: list[BaseException] = []

    def run() -> None:
        try:
            with lm._lock, torch.inference_mode():
                cast(Any, lm.model).generate(**kwargs)
        except BaseException as err:  # re-raised below; end() so the reader does not wait forever
            failure.append(err)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    emitted = ""
    held = ""
    hit = False
    for piece in streamer:
        held += piece
        text, hit = cut_at_stop(emitted + held, params.stop)
        if hit:
            if len(text) > len(emitted):
                yield text[len(emitted):]
            break
        # hold back a tail that could be the start of a stop string
        keep = max((len(s) - 1 for s in params.stop), default=0)
        safe = len(held) - keep if keep else len(held)
        if safe > 0:
            yield held[:safe]
            emitted += held[:safe]
            held = held[safe:]
    else:
        if held:
            yield held
    if hit:  # stopped early: drain so the generate thread can finish (an exhausted
        for _ in streamer:  # TextIteratorStreamer would block forever if iterated again)
            pass
    thread.join()
    if failure:
        raise BackendError(f"generation with {lm.name!r} failed: {failure[0]}") from failure[0]
