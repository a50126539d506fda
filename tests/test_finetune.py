"""finetune/: recipes, dataset formatting, a real few-step LoRA run, resume after SIGKILL, merge.

Training runs for real (PEFT + HF Trainer) on tiny-base built with the test spec; runs are a few
steps on short examples so the module stays within seconds-to-a-minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from testkit import FAST_TRAINING as FAST
from testkit import cli_command

from llmapps.errors import ConfigError, InputError, ModelNotFoundError

ROOT = Path(__file__).resolve().parent.parent


def _recipe(**extra):
    from finetune.recipe import load_recipe

    return load_recipe("tiny", **{**FAST, **extra})


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """A LoRA adapter trained for 6 steps (its folder and metrics)."""
    from finetune.train import train

    out = tmp_path_factory.mktemp("ft") / "adapter"
    return train(_recipe(), out, progress=False)


@pytest.mark.parametrize(
    "path", sorted((ROOT / "finetune" / "recipes").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_recipe_loads(path):
    from finetune.recipe import load_recipe

    recipe = load_recipe(path)
    assert recipe.name and recipe.base_model and recipe.prompt


def test_bad_recipe_lists_every_field_at_once(tmp_path):
    from finetune.recipe import load_recipe

    bad = {
        "name": "x",
        "base_model": "tiny-base",
        "method": "dora",
        "lr": 1,
        "lora": {"r": 0, "dropout": 2},
        "training": {"batching": "random", "epochs": -1},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="6 problem") as err:
        load_recipe(path)
    for field in ("method", "lr", "lora.r", "lora.dropout", "training.batching", "training.epochs"):
        assert field in str(err.value)


def test_unknown_recipe_name_lists_the_shipped_ones():
    from finetune.recipe import load_recipe

    with pytest.raises(ConfigError, match="tiny"):
        load_recipe("no-such-recipe")


def test_malformed_rows_name_file_and_lines(tmp_path):
    from finetune.data import read_examples
    from prompts import load_task

    task = load_task("news_riddle/one_step")
    path = tmp_path / "rows.jsonl"
    good = {"title": "T", "text": "Some text.", "summary": "S", "riddle": "R", "answer": "A"}
    path.write_text(
        "\n".join([json.dumps(good), "{not json", json.dumps({**good, "riddle": ""}), "[1]"])
    )
    with pytest.raises(InputError, match="3 malformed") as err:
        read_examples(str(path), task)
    msg = str(err.value)
    assert f"{path}:2" in msg and f"{path}:3: missing or empty riddle" in msg and f"{path}:4" in msg


def test_formatting_uses_the_strategy_prompt_and_masks_it(tiny_base):
    from transformers import AutoTokenizer

    from chains.news_data import examples
    from finetune.data import IGNORE, split_example, tokenize_example
    from prompts import load_task

    task = load_task("news_riddle/one_step")
    ex = examples("train")[0]
    prompt, completion = split_example(task, ex)
    assert prompt == task.completion.render({"title": ex["title"], "text": ex["text"]}, [])
    assert completion.startswith(" " + ex["summary"]) and completion.rstrip().endswith(ex["answer"])
    tok = AutoTokenizer.from_pretrained(tiny_base)
    row = tokenize_example(task, ex, tok, 1024)
    n_prompt = len(tok(prompt)["input_ids"])
    assert row["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    assert row["input_ids"][-1] == tok.eos_token_id
    short = tokenize_example(task, ex, tok, 280)  # the article is cut, the completion kept
    assert (
        len(row["input_ids"]) > 280 >= len(short["input_ids"])
        and short["input_ids"][-len(row["input_ids"]) + n_prompt :] == row["input_ids"][n_prompt:]
    )


def test_missing_base_model_says_how_to_get_one(tiny_models, tmp_path):
    from finetune.train import train

    with pytest.raises(ModelNotFoundError, match="hf download"):
        train(_recipe(base_model=str(tmp_path / "no-model")), tmp_path / "a", progress=False)


def test_few_step_run_writes_a_complete_adapter(trained):
    from llmapps.adapters import read_manifest

    out = trained.adapter
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "llmapps-adapter.json"} <= names
    manifest = read_manifest(out)
    assert manifest.method == "lora" and manifest.task == "news-riddle"
    assert manifest.recipe["training"]["max_steps"] == 6 and "peft" in manifest.versions
    assert manifest.metrics["steps"] == 6 and manifest.metrics["eval_perplexity"] > 1
    ckpts = out.with_name(out.name + ".checkpoints")
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-3",
        "checkpoint-6",
    ]
    assert not (ckpts / ".staging").exists()
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_resume_needs_a_checkpoint_and_a_rerun_needs_a_choice(trained, tmp_path):
    from finetune.train import train

    with pytest.raises(ConfigError, match="no checkpoint to continue"):
        train(_recipe(), tmp_path / "fresh", resume=True, progress=False)
    with pytest.raises(ConfigError, match="--resume to continue it or --overwrite"):
        train(_recipe(), trained.adapter, progress=False)
    with pytest.raises(ConfigError, match="different recipe"):
        train(
            _recipe(**{"training.learning_rate": 5e-3}),
            trained.adapter,
            resume=True,
            progress=False,
        )


def _cli(out: Path, *extra: str) -> list[str]:
    sets = [
        f"--set={k}={v}"
        for k, v in {**FAST, "training.max_steps": 12, "training.save_steps": 2}.items()
    ]
    return cli_command(
        "finetune",
        "lora",
        "--recipe",
        "tiny",
        "--out",
        str(out),
        "--quiet",
        *sets,
        *extra,
    )


@pytest.mark.slow  # three subprocess runs: ~60 s alone on 2 cores, minutes when shared
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_models, tmp_path):
    from llmapps.adapters import read_manifest

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    ckpts = killed.with_name("killed.checkpoints")
    proc = subprocess.Popen(
        _cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not (ckpts / "checkpoint-4").exists():  # 12 steps of 4 rows: epoch 1 ends after step 5+
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed.exists()  # no adapter that looks complete
    for ck in ckpts.glob("checkpoint-*"):  # every visible checkpoint is whole
        assert (ck / "trainer_state.json").exists() and (ck / "adapter_model.safetensors").exists()
    resumed = subprocess.run(
        _cli(killed, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = tmp_path / "straight"
    full = subprocess.run(_cli(straight), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    a, b = read_manifest(killed).metrics, read_manifest(straight).metrics
    assert a["resumed_from"] and a["steps"] == b["steps"] == 12
    assert abs(a["eval_loss"] - b["eval_loss"]) / b["eval_loss"] < 0.02


def test_merge_is_loadable_and_matches_base_plus_adapter(trained, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.merge import merge_adapter
    from llmapps.models.local import GenerationParams, LocalModel
    from llmapps.strategies.lora import LoraStrategy

    out = merge_adapter(trained.adapter, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    strategy = LoraStrategy(adapter=str(trained.adapter), device="cpu", dtype="float32")
    adapted = strategy.local_model
    plain = LocalModel(merged.eval(), adapted.tokenizer, name="merged", device="cpu")
    prompts = [
        "[Article]: The harbour reopened. Boats returned.\n[Summary]:",
        "[Article]: Rain fell.\n[Summary]:",
    ]
    params = GenerationParams(max_new_tokens=12)
    assert [o.text for o in plain.generate(prompts, params)] == [
        o.text for o in adapted.generate(prompts, params)
    ]
    with pytest.raises(ConfigError, match="not empty"):
        merge_adapter(trained.adapter, out)


def test_every_batching_mode_gives_the_same_completion_only_loss(tiny_base, tmp_path):
    """Padded without a mask (the default), with one, and padding-free: one training loss, on completions only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from chains.news_data import examples
    from finetune.data import IGNORE, REAL_TOKENS, CompletionCollator, tokenize_example
    from finetune.train import make_trainer_class
    from prompts import load_task

    task = load_task("news_riddle/one_step")
    tok = AutoTokenizer.from_pretrained(tiny_base)
    rows = [tokenize_example(task, ex, tok, 320) for ex in examples("train")[:3]]
    rows[1] = {
        k: v[:-40] if isinstance(v, list) else v for k, v in rows[1].items()
    }  # force padding
    model = AutoModelForCausalLM.from_pretrained(
        tiny_base, dtype=torch.float32
    )  # no dropout: train() is exact
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    # the Trainer turns the model's KV cache off: with one, transformers would not read packed rows' position ids
    trainer = make_trainer_class()(model=model, args=args, processing_class=tok)
    plain = make_trainer_class()(
        model=model, args=args, processing_class=tok, completion_only_logits=False
    )
    losses, full, evaluated = {}, {}, {}
    for training in (True, False):  # evaluation uses the same collator
        model.train(training)
        for name, collator in {
            "no-mask": CompletionCollator(tok.pad_token_id),
            "mask": CompletionCollator(tok.pad_token_id, attention_mask=True),
            "padding-free": CompletionCollator(tok.pad_token_id, padding_free=True),
        }.items():
            batch = collator(rows)
            assert batch[REAL_TOKENS] == sum(len(r["input_ids"]) for r in rows)
            assert ("attention_mask" in batch) == (name == "mask")
            labelled = int((batch["labels"] != IGNORE).sum())
            assert labelled == sum(
                sum(t != IGNORE for t in r["labels"][1:]) for r in rows
            )  # completions only
            with torch.no_grad():
                losses[name, training] = trainer.compute_loss(
                    model, dict(batch)
                ).item()  # completion-only logits
                full[name, training] = plain.compute_loss(
                    model, dict(batch)
                ).item()  # the model's own loss
                loss, out = trainer.compute_loss(
                    model, dict(batch), return_outputs=True
                )  # as evaluate() asks
                evaluated[name, training] = loss.item()
                assert out["logits"].shape == (
                    labelled,
                    model.config.vocab_size,
                )  # only the kept positions
    assert trainer.real_tokens == 6 * sum(
        len(r["input_ids"]) for r in rows
    )  # training batches only
    for key in losses:
        assert losses[key] == pytest.approx(losses["mask", True], rel=1e-4), key
        assert full[key] == pytest.approx(losses["mask", True], rel=1e-4), key
        assert evaluated[key] == pytest.approx(losses["mask", True], rel=1e-4), key
