"""Small pieces several test files share (imported as ``from testkit import ...``; pytest puts
``tests/`` on the path, as for ``browser`` and ``feed_server``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# A short SFT run of the tiny recipe: 6 steps of 4 rows, checkpoints every 3 steps.
FAST_TRAINING = {
    "training.max_steps": 6,
    "training.batch_size": 4,
    "training.max_length": 320,
    "training.save_steps": 3,
    "training.logging_steps": 2,
    "training.learning_rate": 1e-2,
}


def cli_command(*args: str) -> list[str]:
    """``llmapps ARGS`` as a subprocess runs it (``python -m llmapps.cli``), with this Python."""
    return [sys.executable, "-m", "llmapps.cli", *args]


def run_args(inp: Path | str, out: Path | str, *extra: str) -> list[str]:
    """``run news-riddle -i IN -o OUT`` and ``extra``: the arguments of ``llmapps run``."""
    return ["run", "news-riddle", "-i", str(inp), "-o", str(out), *extra]


def bench_args(limit: int, batch_size: int, max_new_tokens: int, *extra: str) -> list[str]:
    """``bench news-riddle --strategies few-shot`` on ``limit`` samples, and ``extra``."""
    return [
        "bench",
        "news-riddle",
        "--strategies",
        "few-shot",
        "--limit",
        str(limit),
        "--batch-size",
        str(batch_size),
        "--max-new-tokens",
        str(max_new_tokens),
        *extra,
    ]


def few_shot_bench(limit: int, batch_size: int, max_new_tokens: int, **extra: Any) -> Any:
    """A ``BenchConfig`` of news-riddle on few-shot alone: ``limit`` samples, short outputs, no
    perplexity (what ``bench_args`` runs, as a library call); ``extra`` adds fields."""
    from llmapps.bench import BenchConfig

    return BenchConfig(
        app="news-riddle",
        strategies=["few-shot"],
        limit=limit,
        batch_size=batch_size,
        perplexity=False,
        strategy_options={"few-shot": {"max_new_tokens": max_new_tokens}},
        **extra,
    )


def fake_service_chain(url: str, api_key: str, **options: Any) -> Any:
    """news-riddle on the ``service`` strategy against the scripted endpoint at ``url``
    (``llmapps.serving.fake_endpoint``; model ``fake-model``, no response cache)."""
    from pydantic import SecretStr

    from llmapps import load_chain

    return load_chain(
        "news-riddle",
        "service",
        base_url=url,
        model="fake-model",
        api_key=SecretStr(api_key),
        cache=False,
        **options,
    )
