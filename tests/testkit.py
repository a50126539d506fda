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


def leaky_pairs(n: int, leak: str) -> list:
    """``n`` preference pairs from news-riddle's train split: the reference reply chosen over the
    same reply whose riddle is ``leak`` (a format string of ``answer``: it names the answer)."""
    from llmapps.apps import get_app
    from llmapps.evaluate.preferences import PreferencePair

    rows = get_app("news-riddle").training_examples("train")[:n]
    return [
        PreferencePair(
            id=f"p{i}",
            sample_id=e["id"],
            source="ai",
            prompt={"title": e["title"], "text": e["text"]},
            chosen={k: e[k] for k in ("summary", "riddle", "answer")},
            rejected={
                "summary": e["summary"],
                "riddle": leak.format(answer=e["answer"]),
                "answer": e["answer"],
            },
        )
        for i, e in enumerate(rows)
    ]


def llama_server_command(gguf: Path | str, alias: str, port: int, n_ctx: int, *extra: str) -> list:
    """llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``) on loopback ``port``,
    serving ``gguf`` as model ``alias`` with an ``n_ctx`` context, and ``extra`` flags."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        *extra,
    ]


def streamed_chat(client: Any, model: str, messages: list, max_tokens: int = 12) -> tuple:
    """A greedy streamed chat completion through the ``openai`` ``client``, usage included: its
    chunks and the text they carry."""
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def serve_namespace(app: str, strategy: str, **fields: Any) -> Any:
    """The parsed ``llmapps serve --app APP --strategy STRATEGY`` arguments, as ``cmd_serve``
    reads them: no model, instruct/base model, adapter or batch size given; ``fields`` adds or
    sets the others."""
    import argparse

    unset = dict.fromkeys(("model", "instruct_model", "base_model", "adapter", "batch_size"))
    return argparse.Namespace(app=app, strategy=strategy, **{**unset, **fields})


def bench_two_strategies(
    out: Path, batch_size: int, strategy_options: dict[str, Any], **extra: Any
) -> list[dict]:
    """A real ``run_bench`` of news-riddle's few-shot and zero-shot on 3 articles into ``out``,
    with ``strategy_options`` (``extra`` adds ``BenchConfig`` fields): the rows."""
    from llmapps.bench import BenchConfig, run_bench

    config = BenchConfig(
        app="news-riddle",
        strategies=["few-shot", "zero-shot"],
        limit=3,
        batch_size=batch_size,
        strategy_options=strategy_options,
        **extra,
    )
    return run_bench(config, out, progress=False)


def riddle_prompts(
    lm: Any, articles: list[dict[str, Any]], *, chars: int, chat: bool, json_ask: str = "as JSON"
) -> list[str]:
    """news-riddle prompts for ``articles`` (title and the first ``chars`` of the text): a chat
    request for summary, riddle and answer ``json_ask`` through ``lm``'s chat template when
    ``chat``, else the base model's ``[Article]: ... [Summary]:`` layout."""
    prompts = []
    for a in articles:
        text = f"{a['title']}. {a['text'][:chars]}"
        if chat:
            ask = (
                "Summarize the article in one sentence, write a riddle whose answer is its main "
                f"subject, and give the answer, {json_ask}.\n\n{text}"
            )
            prompts.append(lm.apply_chat_template([{"role": "user", "content": ask}]))
        else:
            prompts.append(
                "Summarize the article, then write a riddle and its answer.\n"
                f"[Article]: {text}\n[Summary]:"
            )
    return prompts


def stop_process(proc: Any, timeout: float) -> None:
    """Terminate ``proc`` (a ``subprocess.Popen``), kill it if it is still there after
    ``timeout`` seconds, and reap it."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def riddle_layout(budget: int) -> Any:
    """The few-shot template's reply (after ``[Summary]:``), each field ``budget`` tokens."""
    from llmapps.models.structured import Layout, LayoutField

    return Layout(
        fields=(
            LayoutField("summary", "", budget),
            LayoutField("riddle", "\n[Riddle]:", budget),
            LayoutField("answer", "\n[Answer]:", budget),
        )
    )


def random_causal_lm(out: Path, tokenizer_dir: str, arch: str, seed: int, **config: Any) -> str:
    """A seeded, randomly initialised causal LM of ``arch`` (``Llama``, ``Gemma3``: the
    transformers class prefix) saved with ``save_pretrained`` beside the tokenizer of
    ``tokenizer_dir``; ``config`` sets its shape over a small default (64 wide, 128 in the MLP,
    4 heads). Gives varied, deterministic greedy text."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg_cls = getattr(transformers, f"{arch}TextConfig", None) or getattr(
        transformers, f"{arch}Config"
    )
    cfg = cfg_cls(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, **config},
    )
    getattr(transformers, f"{arch}ForCausalLM")(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
