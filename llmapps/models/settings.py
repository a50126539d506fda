"""The ``generation`` section of the settings (``LLMAPPS_GENERATION__*``): local generation's
defaults, read by the model backends and the local strategies. Imports nothing of ``llmapps.models``
(``llmapps.settings`` assembles it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GenerationSettings(BaseModel):
    """Defaults for local generation."""

    model_config = ConfigDict(extra="forbid")

    # 32: one chunk for the bench's 32 prompts halves the decode steps of two chunks of 16
    # (benchmarks/bench_generation.py); CUDA out-of-memory halves it automatically.
    batch_size: int = Field(32, ge=1, description="prompts per generate() call")
    backend: str = Field(
        "transformers",
        description="backend of the local strategies (few-shot, zero-shot): any registered "
        "model backend (llmapps.backends: transformers, llama.cpp, or a plugin's; checked by "
        "the loader before a model loads); a .gguf model given without a backend runs on "
        "llama.cpp",
    )
    llamacpp_context: int = Field(
        8192,
        ge=256,
        description="tokens of context the llama.cpp backend allocates per model "
        "(the GGUF's trained context is the ceiling)",
    )
    # 3: under 4 rows llama.cpp's repacked Q4_K kernels run row by row, so Gemma 3 270M Q4_K_M
    # gives plain llama-cpp-python's texts (16/16; at 8 rows 7/16 were): see
    # benchmarks/results/bench_local_backends*.json and llmapps/models/llamacpp_batch.py
    llamacpp_batch: int = Field(
        3,
        ge=1,
        le=64,
        description="sequences the llama.cpp backend decodes together in one greedy "
        "generate() (1: one prompt at a time)",
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
    # Tokens per prefill pass of the transformers backend on models with sliding-window layers
    # (Gemma 3): each window layer then attends over window + chunk rather than a masked square
    # of the whole prompt (llmapps.models.prefill). None: each prompt in one pass.
    prefill_chunk_tokens: int | None = Field(
        None,
        ge=16,
        description="tokens per prefill pass on models with sliding-window layers "
        "(transformers backend); none: a prompt in one pass",
    )
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="memory one generate() chunk may use for KV cache and activations; "
        "none: memory_fraction of what is available (RAM, or free VRAM on CUDA) at the call",
    )
    memory_fraction: float = Field(0.5, gt=0, le=0.95)
