"""The embedded default models, built from a text corpus because nothing can be downloaded.

The corpus is an argument (the callers above pass an app's, ``AppSpec.corpus``): the model layer
knows no app.

``build_tiny_models`` trains, seeded and reproducibly:

1. a byte-level BPE tokenizer on the corpus (with a chat template and chat special tokens);
2. ``tiny-base``: a small Llama-architecture causal LM pretrained on the corpus documents;
3. ``tiny-instruct``: ``tiny-base`` further tuned on generic instructions derived from each
   document (write a headline, summarise in one sentence, list key facts), answered through the
   chat template. No task of any app is in that mix, so prompting it on such a task is truly
   zero-shot.

All three are saved with ``save_pretrained`` in standard Hugging Face format and are loaded back
with ``from_pretrained`` like any real model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmapps.errors import InputError, ModelNotFoundError

log = logging.getLogger(__name__)

SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MANIFEST = "llmapps-tiny.json"
# Bump when the build recipe (data mix, generation defaults) changes, so old builds are rebuilt.
BUILD_VERSION = 4  # 4: trained by the project's one training loop (llmapps.training)
# Shipped in each model's generation_config.json, as real model releases ship their defaults:
# models this small loop on their most likely phrase without a repetition penalty. It is mild
# because it also applies to prompt tokens, and no n-gram ban: a template's labels ("]:") repeat
# by design, and banning repeated n-grams mangled them (0 of 21 LoRA riddles parsed, 6 with this).
GENERATION_DEFAULTS = {"repetition_penalty": 1.15}


@dataclass(frozen=True)
class TinySpec:
    """Size and training budget of the tiny models (the defaults take ~2 min on 2 CPU cores)."""

    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 352
    context_length: int = 1024
    block_size: int = 256
    batch_size: int = 8
    base_steps: int = 300
    instruct_steps: int = 200
    learning_rate: float = 3e-3
    seed: int = 0


TEST_SPEC = TinySpec(
    vocab_size=1024,
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    intermediate_size=160,
    context_length=1024,
    block_size=128,
    batch_size=8,
    base_steps=60,
    instruct_steps=40,
)


def corpus_hash(corpus: Sequence[dict[str, str]]) -> str:
    h = hashlib.sha256()
    for doc in corpus:
        h.update(doc.get("title", "").encode())
        h.update(b"\x00")
        h.update(doc["text"].encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


def _is_built(models_dir: Path, spec: TinySpec, corpus_id: str | None = None) -> bool:
    for name in ("tiny-base", "tiny-instruct"):
        manifest = models_dir / name / MANIFEST
        if not manifest.exists():
            return False
        try:
            data = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            return False
        if data.get("spec") != asdict(spec) or data.get("build_version") != BUILD_VERSION:
            return False
        if corpus_id is not None and data.get("corpus_sha256_16") != corpus_id:
            return False
    return True


def ensure_tiny_models(
    models_dir: Path,
    spec: TinySpec | None = None,
    corpus: Sequence[dict[str, str]] | Callable[[], Sequence[dict[str, str]]] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Build the tiny models under ``models_dir`` unless an identical build is already there.

    ``corpus``: the documents (``title``, ``text``) to learn from: a list (a build from another
    corpus is rebuilt), or a function returning one, called only when nothing is built yet
    (callers pass an app's corpus, e.g. ``llmapps.api.apps.default_corpus``); None: use what is
    built, a ``ModelNotFoundError`` saying how to build it when nothing is.
    """
    spec = spec or spec_from_env()
    if corpus is None or callable(corpus):
        if _is_built(models_dir, spec):
            return models_dir
        if corpus is None:
            raise ModelNotFoundError(
                f"the tiny models are not built yet at {models_dir}; run `llmapps models build` "
                "(it builds them from the installed apps' corpus)"
            )
        corpus = corpus()
    if _is_built(models_dir, spec, corpus_hash([d for d in corpus if d.get("text", "").strip()])):
        return models_dir
    build_tiny_models(models_dir, corpus, spec, progress=progress)
    return models_dir


def spec_from_env() -> TinySpec:
    """``LLMAPPS_TINY_SPEC=test`` selects the smaller test spec (used by the test suite)."""
    return TEST_SPEC if os.environ.get("LLMAPPS_TINY_SPEC") == "test" else TinySpec()


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])[\"”’']?\s+", " ".join(text.split()))
    return [p.strip() for p in parts if len(p.split()) >= 4]


def instruction_pairs(corpus: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """Generic instruction/response pairs derived from each document (no app task among them):
    write a headline, summarise in one sentence, list the key facts."""
    pairs: list[tuple[str, str]] = []
    for doc in corpus:
        text = " ".join(doc["text"].split())
        sents = _sentences(text)
        if not sents:
            continue
        body = f"Article: {text}"
        if doc.get("title"):
            pairs.append((f"Write a headline for this article.\n{body}", doc["title"]))
        pairs.append((f"Summarize this article in one sentence.\n{body}", sents[0]))
        facts = [s for s in sents if any(c.isdigit() for c in s)][:3] or sents[1:3] or sents[:1]
        pairs.append(
            (f"List the key facts of this article.\n{body}", "\n".join(f"- {f}" for f in facts))
        )
    return pairs


def _train_tokenizer(corpus: Sequence[dict[str, str]], spec: TinySpec) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [f"{d.get('title', '')}\n\n{d['text']}" for d in corpus]
    texts += [
        "Write a headline for this article.",
        "Summarize this article in one sentence.",
        "List the key facts of this article.",
        "Summary: Riddle: Answer: Article: ###",
    ]
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=spec.context_length,
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _new_model(tokenizer: Any, spec: TinySpec) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


class _Batches:
    """An endless ``IterableDataset`` of rows drawn by ``draw(rng)``, seeded: the same rows every build."""

    def __init__(self, draw: Any, seed: int) -> None:
        self.draw, self.seed = draw, seed

    def as_dataset(self) -> Any:
        from torch.utils.data import IterableDataset

        outer = self

        class Rows(IterableDataset):  # type: ignore[misc]
            def __iter__(self) -> Any:
                rng = random.Random(outer.seed)
                while True:
                    yield outer.draw(rng)

        return Rows()


def _train(
    model: Any,
    rows: _Batches,
    steps: int,
    spec: TinySpec,
    learning_rate: float,
    desc: str,
    progress: bool,
    work: Path,
) -> float:
    """``steps`` steps of the project's one training loop (``llmapps.training``) on CPU: AdamW,
    weight decay 0.01, gradient clipping 1.0, 10% warmup then cosine; the last logged loss."""
    from transformers import TrainingArguments

    from llmapps.training import CompletionCollator, make_trainer_class

    log.info("%s: %d steps", desc, steps)
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=steps,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=spec.seed,
        data_seed=spec.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=max(1, min(10, steps)),
        report_to=[],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=rows.as_dataset(),
        data_collator=CompletionCollator(model.config.pad_token_id, attention_mask=True),
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the library logs; it does not print
    trainer.train()
    model.eval()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return float(losses[-1]) if losses else float("nan")


def _pretrain_rows(ids: list[int], spec: TinySpec) -> Any:
    """Draw one random ``block_size`` window of the token stream (every position labelled)."""
    block = spec.block_size
    starts = list(range(0, max(1, len(ids) - block - 1), block // 2))

    def draw(rng: random.Random) -> dict[str, list[int]]:
        window = ids[(s := rng.choice(starts)) : s + block]
        return {"input_ids": window, "labels": list(window)}

    return draw


def _sft_rows(rows: list[tuple[list[int], int]]) -> Any:
    """Draw one (prompt + response) row, the loss on the response only."""

    def draw(rng: random.Random) -> dict[str, list[int]]:
        ids, prompt_len = rng.choice(rows)
        return {"input_ids": ids, "labels": [-100] * prompt_len + ids[prompt_len:]}

    return draw


def _save_atomic(
    models_dir: Path, name: str, model: Any, tokenizer: Any, manifest: dict[str, Any]
) -> None:
    from llmapps.folders import atomic_folder

    with atomic_folder(models_dir / name) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


def build_tiny_models(
    models_dir: Path,
    corpus: Sequence[dict[str, str]],
    spec: TinySpec | None = None,
    *,
    progress: bool = True,
) -> dict[str, float]:
    """Train and save ``tiny-base`` and ``tiny-instruct`` under ``models_dir``; return final losses."""
    import torch
    from transformers import GenerationConfig

    spec = spec or TinySpec()
    docs = [d for d in corpus if d.get("text", "").strip()]
    if len(docs) < 5:
        raise InputError(f"the corpus has {len(docs)} non-empty documents; at least 5 are needed")
    torch.manual_seed(spec.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    log.info("building tiny models (%s) from %d documents", spec, len(docs))

    tokenizer = _train_tokenizer(docs, spec)
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for d in docs:
        stream += tokenizer(f"{d.get('title', '')}\n\n{d['text']}", add_special_tokens=True)[
            "input_ids"
        ] + [eos]
    base = _new_model(tokenizer, spec)
    work = Path(
        tempfile.mkdtemp(prefix="llmapps-tiny-train-")
    )  # the Trainer's output_dir: nothing is saved there
    try:
        base_loss = _train(
            base,
            _Batches(_pretrain_rows(stream, spec), spec.seed),
            spec.base_steps,
            spec,
            spec.learning_rate,
            "pretraining tiny-base",
            progress,
            work,
        )
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    meta = {
        "spec": asdict(spec),
        "build_version": BUILD_VERSION,
        "corpus_sha256_16": corpus_hash(docs),
        "documents": len(docs),
    }
    base.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        **GENERATION_DEFAULTS,
    )
    _save_atomic(models_dir, "tiny-base", base, tokenizer, {**meta, "final_loss": base_loss})

    end = tokenizer.convert_tokens_to_ids("<|end|>")
    rows: list[tuple[list[int], int]] = []
    limit = spec.context_length
    for instruction, response in instruction_pairs(docs):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
        p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [end]
        ids = (p_ids + r_ids)[-limit:]
        rows.append((ids, max(0, len(ids) - len(r_ids))))
    instruct = base
    try:
        inst_loss = _train(
            instruct,
            _Batches(_sft_rows(rows), spec.seed + 1),
            spec.instruct_steps,
            spec,
            spec.learning_rate / 2,
            "instruction-tuning tiny-instruct",
            progress,
            work,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    instruct.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[end, eos],
        pad_token_id=tokenizer.pad_token_id,
        **GENERATION_DEFAULTS,
    )
    _save_atomic(
        models_dir,
        "tiny-instruct",
        instruct,
        tokenizer,
        {**meta, "final_loss": inst_loss, "instruction_pairs": len(rows)},
    )
    return {"tiny-base": base_loss, "tiny-instruct": inst_loss}
