"""Preference tuning (finetune/dpo.py, finetune/pairs.py) on the tiny models, for real.

A tiny SFT adapter is trained (6 steps), preference pairs are made from the training split (the
reference reply chosen over one that names its answer in the riddle), and DPO / SimPO run a few
real steps on top. Checked: the loss falls and the policy's chosen-over-rejected log-ratio against
the reference rises (signs, not numbers); the reference stays the SFT policy (its log-probs at
step 1 give exactly ln 2, the SFT folder is untouched, a fresh computation after training agrees);
the manifest names the parent and the pairs' SHA-256; the ``lora`` strategy loads the result; a
SIGKILLed run resumes to the adapter an uninterrupted run writes; AI-feedback sampling is
deterministic per seed and refuses the test split; human ratings become pairs through the CLI.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testkit import FAST_TRAINING as FAST_SFT
from testkit import leaky_pairs

from llmapps.errors import ConfigError, InputError


def _pairs(n: int = 8) -> list:
    return leaky_pairs(n, "It is {answer}. {answer} is the answer.")


@pytest.fixture(scope="module")
def sft(tiny_models, tmp_path_factory) -> Path:
    from finetune.recipe import load_recipe
    from finetune.train import train

    out = tmp_path_factory.mktemp("sft") / "adapter"
    return train(load_recipe("tiny", **FAST_SFT), out, progress=False).adapter


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    from llmapps.evaluate.preferences import write_pairs

    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_pairs(path, _pairs())
    return path


def _logps(adapter: Path, pairs_path: Path) -> tuple[list[float], list[float]]:
    """Summed log-probs of every chosen and rejected reply under ``adapter`` (fresh load)."""
    import torch
    from peft import PeftModel

    from finetune.dpo import PairCollator, _tokenize_pairs, pair_logps
    from llmapps.adapters import read_manifest
    from llmapps.evaluate.preferences import read_pairs
    from llmapps.models.local import load_pretrained, resolve_model_path
    from llmapps.settings import get_settings
    from prompts import load_task

    m = read_manifest(adapter)
    base, tok = load_pretrained(
        resolve_model_path(m.base_model, get_settings()), "cpu", "float32", get_settings()
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    rows = _tokenize_pairs(load_task(m.prompt), read_pairs(pairs_path), tok, 320)
    b = PairCollator(tok.pad_token_id, {})(rows)
    with torch.no_grad():
        sums, _ = pair_logps(model, b["input_ids"], b["labels"])
    k = len(rows)
    return sums[:k].tolist(), sums[k:].tolist()


def _recipe(**extra):
    from finetune.dpo import load_dpo_recipe

    return load_dpo_recipe("dpo-tiny", **{"training.max_steps": 4, **extra})


@pytest.fixture(scope="module")
def dpo_run(sft, pairs_file, tmp_path_factory):
    from finetune.dpo import train_dpo
    from llmapps.hashing import sha256_file

    before = {p.name: sha256_file(p) for p in sft.iterdir() if p.is_file()}
    out = tmp_path_factory.mktemp("dpo") / "adapter"
    result = train_dpo(_recipe(), out, adapter=sft, pairs=pairs_file, progress=False)
    after = {p.name: sha256_file(p) for p in sft.iterdir() if p.is_file()}
    return result, before, after


def test_dpo_lowers_the_loss_and_raises_the_chosen_log_ratio(sft, pairs_file, dpo_run) -> None:
    result, _, _ = dpo_run
    m = result.metrics
    first, last = m["first_logged"], m["last_logged"]
    assert math.isclose(first["loss"], math.log(2), abs_tol=1e-4)  # policy == reference at step 1
    assert last["loss"] < first["loss"]
    assert last["reward_margin"] > 0
    ref_c, ref_r = _logps(sft, pairs_file)
    pol_c, pol_r = _logps(result.adapter, pairs_file)
    ratio = [
        (pc - rc) - (pr - rr) for pc, rc, pr, rr in zip(pol_c, ref_c, pol_r, ref_r, strict=True)
    ]
    assert sum(ratio) / len(ratio) > 0  # chosen gained on rejected, relative to the reference


def test_the_reference_stays_frozen(sft, pairs_file, dpo_run) -> None:
    from finetune.dpo import REFERENCE_FILE, checkpoints_dir

    result, before, after = dpo_run
    assert before == after  # the parent folder is untouched
    saved = json.loads((checkpoints_dir(result.adapter) / REFERENCE_FILE).read_text())
    ref_c, ref_r = _logps(sft, pairs_file)  # recomputed after training, from the parent
    for i, (c, r) in enumerate(zip(ref_c, ref_r, strict=True)):
        sc, sr = saved["logps"][f"p{i}"]
        assert math.isclose(sc, c, rel_tol=1e-4, abs_tol=1e-3)
        assert math.isclose(sr, r, rel_tol=1e-4, abs_tol=1e-3)


def test_manifest_names_parent_and_pairs_and_lora_loads_it(sft, pairs_file, dpo_run) -> None:
    from llmapps.adapters import read_manifest
    from llmapps.apps import load_chain
    from llmapps.evaluate.preferences import pairs_sha256

    result, _, _ = dpo_run
    m = read_manifest(result.adapter)
    parent = read_manifest(sft)
    assert m.method == "lora" and m.base_model_sha256 == parent.base_model_sha256
    assert m.recipe["parent_adapter"]["checksum"] == parent.checksum
    assert m.recipe["parent_adapter"]["path"] == str(sft.resolve())
    assert m.recipe["pairs"]["sha256"] == pairs_sha256(pairs_file)
    assert m.recipe["pairs"]["count"] == 8
    chain = load_chain("news-riddle", "lora", adapter=str(result.adapter), max_new_tokens=16)
    out = chain.invoke({"title": "Bridge reopens", "text": "The old bridge reopened on Monday."})
    assert isinstance(out, dict) and "summary" in out


def test_a_dpo_adapter_can_be_tuned_again(dpo_run, pairs_file, tmp_path) -> None:
    """Iterative DPO: the parent is a DPO adapter; its policy is the new reference (step 1 at
    exactly ln 2) and the manifest keeps the chain back to the SFT recipe."""
    from finetune.dpo import train_dpo
    from llmapps.adapters import read_manifest

    parent = dpo_run[0].adapter
    out = tmp_path / "again"
    result = train_dpo(_recipe(), out, adapter=parent, pairs=pairs_file, progress=False)
    assert math.isclose(result.metrics["first_logged"]["loss"], math.log(2), abs_tol=1e-4)
    assert result.metrics["steps"] == 4
    recipe = read_manifest(out).recipe
    assert recipe["parent_adapter"]["path"] == str(parent)
    assert recipe["parent_recipe"]["kind"] == "preference"
    assert (
        recipe["parent_recipe"]["parent_recipe"]["name"]
        == read_manifest(parent).recipe["parent_recipe"]["name"]
    )


def test_simpo_needs_no_reference_and_learns(sft, pairs_file, tmp_path) -> None:
    from finetune.dpo import REFERENCE_FILE, checkpoints_dir, train_dpo

    out = tmp_path / "simpo"
    rec = _recipe(**{"training.loss": "simpo", "training.beta": 2.0, "training.gamma": 0.5})
    result = train_dpo(rec, out, adapter=sft, pairs=pairs_file, progress=False)
    first, last = result.metrics["first_logged"], result.metrics["last_logged"]
    assert last["loss"] < first["loss"] and last["reward_margin"] > first["reward_margin"]
    assert not (checkpoints_dir(out) / REFERENCE_FILE).exists()


def test_rpo_alpha_adds_the_chosen_nll_and_keeps_chosen_likely(sft, pairs_file, tmp_path) -> None:
    import torch

    from finetune.dpo import DpoTraining, preference_loss, train_dpo

    c, r = torch.tensor([-12.0, -30.0]), torch.tensor([-15.0, -20.0])
    nc, nr = torch.tensor([4.0, 10.0]), torch.tensor([5.0, 8.0])
    rc, rr = torch.tensor([-13.0, -29.0]), torch.tensor([-14.0, -21.0])
    plain, stats = preference_loss(DpoTraining(beta=0.1), c, r, nc, nr, rc, rr)
    rpo, _ = preference_loss(DpoTraining(beta=0.1, rpo_alpha=0.5), c, r, nc, nr, rc, rr)
    assert stats["nll_chosen"] == pytest.approx((12 / 4 + 30 / 10) / 2)
    assert float(rpo - plain) == pytest.approx(0.5 * stats["nll_chosen"])

    rec = _recipe(**{"training.rpo_alpha": 1.0})
    result = train_dpo(rec, tmp_path / "rpo", adapter=sft, pairs=pairs_file, progress=False)
    first, last = result.metrics["first_logged"], result.metrics["last_logged"]
    assert last["nll_chosen"] < first["nll_chosen"]
    assert last["reward_margin"] > first["reward_margin"]


def test_bad_inputs_are_one_line_errors(sft, pairs_file, tmp_path) -> None:
    from finetune.dpo import load_dpo_recipe, train_dpo
    from llmapps.errors import InputError

    with pytest.raises(ConfigError, match="no DPO recipe"):
        load_dpo_recipe("nope")
    with pytest.raises(ConfigError, match=r"training\.loss"):
        load_dpo_recipe("dpo-tiny", **{"training.loss": "ppo"})
    with pytest.raises(ConfigError, match="no parent adapter"):
        train_dpo(_recipe(), tmp_path / "x", pairs=pairs_file)
    with pytest.raises(InputError, match="does not exist"):
        train_dpo(_recipe(), tmp_path / "x", adapter=sft, pairs=tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="does not exist"):
        train_dpo(_recipe(), tmp_path / "x", adapter=tmp_path / "nowhere", pairs=pairs_file)


def _cli(out: Path, sft: Path, pairs: Path, *extra: str) -> list[str]:
    sets = ["training.max_steps=12", "training.save_steps=2", "training.batch_size=2"]
    return [
        sys.executable, "-m", "llmapps.cli", "finetune", "dpo", "--recipe", "dpo-tiny",
        "--adapter", str(sft), "--pairs", str(pairs), "--out", str(out), "--quiet",
        *[x for s in sets for x in ("--set", s)], *extra,
    ]  # fmt: skip


@pytest.mark.slow  # three subprocess runs of the tiny model
def test_sigkill_then_resume_matches_an_uninterrupted_run(sft, pairs_file, tmp_path) -> None:
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    ckpts = killed.with_name("killed.checkpoints")
    proc = subprocess.Popen(
        _cli(killed, sft, pairs_file), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not (ckpts / "checkpoint-4").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed.exists()  # no adapter that looks complete
    resumed = subprocess.run(
        _cli(killed, sft, pairs_file, "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = tmp_path / "straight"
    full = subprocess.run(
        _cli(straight, sft, pairs_file), env=env, capture_output=True, text=True, timeout=300
    )
    assert full.returncode == 0, full.stderr[-2000:]
    from llmapps.adapters import read_manifest

    a, b = read_manifest(killed).metrics, read_manifest(straight).metrics
    assert a["resumed_from"] and a["steps"] == b["steps"] == 12
    wa = load_file(str(killed / "adapter_model.safetensors"))
    wb = load_file(str(straight / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() <= 1e-5 + 1e-4 * wb[
            name
        ].abs().max().item(), name


def test_dpo_turns_the_parents_lora_dropout_off(tiny_models, pairs_file, tmp_path) -> None:
    """An SFT adapter trained with LoRA dropout (the full Gemma recipe has 0.05): the policy runs
    without it, as TRL's disable_dropout does, so step 1 still starts at exactly ln 2."""
    from finetune.dpo import train_dpo
    from finetune.recipe import load_recipe
    from finetune.train import train

    sft = train(
        load_recipe("tiny", **{**FAST_SFT, "lora.dropout": 0.3}), tmp_path / "sft", progress=False
    ).adapter
    result = train_dpo(
        _recipe(**{"training.max_steps": 1}), tmp_path / "dpo", adapter=sft, pairs=pairs_file,
        progress=False,
    )  # fmt: skip
    assert math.isclose(result.metrics["first_logged"]["loss"], math.log(2), abs_tol=1e-4)


def test_ai_feedback_is_deterministic_per_seed_and_never_samples_test(sft, tmp_path) -> None:
    from finetune.pairs import ai_feedback_pairs

    # source_rank: where the reply ranks its own article among the split's (differs between two
    # 12-token replies of a tiny model, where ROUGE is often 0 for both)
    kw = dict(k=2, max_new_tokens=12, progress=False, weights={"source_rank": 1.0}, margin=0.0)
    with pytest.raises(ConfigError, match="test split is for reporting"):
        ai_feedback_pairs("news-riddle", sft, tmp_path / "t.jsonl", splits=["test"], **kw)  # type: ignore[arg-type]
    # seed 0 in one go, and again in two sittings (the second continues the file)
    p1, c1 = ai_feedback_pairs("news-riddle", sft, tmp_path / "a.jsonl", limit=2, **kw)  # type: ignore[arg-type]
    ai_feedback_pairs("news-riddle", sft, tmp_path / "b.jsonl", limit=1, **kw)  # type: ignore[arg-type]
    p2, c2 = ai_feedback_pairs("news-riddle", sft, tmp_path / "b.jsonl", limit=2, **kw)  # type: ignore[arg-type]
    assert c1 == c2 and c1["articles"] == 2 and c1["replies"] == 4
    assert [p.model_dump() for p in p1] == [p.model_dump() for p in p2]
    rows_a = [json.loads(x)["replies"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x)["replies"] for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert rows_a == rows_b
    # other weights re-pair the stored replies (nothing sampled again): the ranking turns over
    kw["weights"] = {"source_rank": -1.0}
    p3, c3 = ai_feedback_pairs("news-riddle", sft, tmp_path / "a.jsonl", limit=2, **kw)  # type: ignore[arg-type]
    assert c3 == c1 and (tmp_path / "a.jsonl").read_text().count("\n") == 2
    flipped = {p.sample_id: p for p in p3}
    assert any(p.provenance["margin"] > 0 for p in p1)
    for p in p1:
        if p.provenance["margin"] > 0:
            assert flipped[p.sample_id].chosen == p.rejected
            assert flipped[p.sample_id].provenance["margin"] == p.provenance["margin"]
    ai_feedback_pairs(
        "news-riddle",
        sft,
        tmp_path / "c.jsonl",
        limit=1,
        seed=1,
        **kw,  # type: ignore[arg-type]
    )
    rows_c = [json.loads(x)["replies"] for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["summary"] for r in rows_c[0]] != [r["summary"] for r in rows_a[0]]
    for p in p1:  # provenance: the reward terms and who sampled it
        assert p.provenance["split"] == "train" and p.provenance["k"] == 2
        assert p.provenance["chosen"]["reward"] >= p.provenance["rejected"]["reward"]


def test_every_pair_pairing_keeps_each_gap_over_the_margin(sft, tmp_path) -> None:
    """``pairing="all"``: every two replies of an article whose rewards differ by the margin, the
    widest first, each with its own id; ``best-worst`` is the first of them. Replies come from a
    samples file written here (pairing reads it; nothing is sampled)."""
    from finetune.pairs import ai_feedback_pairs
    from llmapps.apps import get_app

    ids = [str(r["id"]) for r in get_app("news-riddle").samples("train")[:2]]  # type: ignore[misc]
    leaks = {ids[0]: [0.1, 0.0, 0.5], ids[1]: [0.2, 0.2, 0.2]}
    rows = [
        {"id": sid, "split": "train", "seed": 0, "replies": [
            {"k": k, "summary": f"s{k}", "riddle": f"r{k}", "answer": "a", "valid": True,
             "error": None, "metrics": {"leakage": leak}}
            for k, leak in enumerate(leaks[sid])
        ]}
        for sid in ids
    ]  # fmt: skip
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(k=3, limit=2, progress=False, weights={"leakage": -1.0}, margin=0.05)
    every, c_all = ai_feedback_pairs("news-riddle", sft, samples, pairing="all", **kw)  # type: ignore[arg-type]
    one, c_one = ai_feedback_pairs("news-riddle", sft, samples, **kw)  # type: ignore[arg-type]
    gaps = [(p.provenance["chosen"]["k"], p.provenance["rejected"]["k"]) for p in every]
    assert gaps == [(1, 2), (0, 2), (1, 0)]  # gaps 0.5, 0.4, 0.1: the widest first
    assert len({p.id for p in every}) == 3 and all(p.sample_id == ids[0] for p in every)
    assert [p.model_dump(exclude={"id", "provenance"}) for p in one] == [
        every[0].model_dump(exclude={"id", "provenance"})
    ]
    assert c_all["pairs"] == 3 and c_all["articles_paired"] == c_one["articles_paired"] == 1
    assert c_all["below_margin"] == 3 and c_one["below_margin"] == 1  # the flat article's pairs
    with pytest.raises(ConfigError, match="--pairing some"):
        ai_feedback_pairs("news-riddle", sft, samples, pairing="some", **kw)  # type: ignore[arg-type]
    assert samples.read_text().count("\n") == 2  # nothing sampled


def test_ai_feedback_samples_an_articles_file_and_refuses_test_derived_rows(sft, tmp_path) -> None:
    """``articles=``: rows without references are sampled and scored by what needs none
    (leakage, copying, solvability among the file's rows); a row derived from a test article
    is refused before anything loads."""
    from finetune.pairs import ai_feedback_pairs
    from llmapps.apps import get_app

    spec = get_app("news-riddle")
    train = spec.samples("train")[:2]  # type: ignore[misc]
    test_id = str(spec.samples("test")[0]["id"])  # type: ignore[misc]
    rows = [
        {"id": f"{r['id']}~new", "title": r["title"] + " Again", "text": r["text"]} for r in train
    ]
    path = tmp_path / "articles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(k=2, max_new_tokens=12, progress=False, margin=0.0)
    pairs, counts = ai_feedback_pairs("news-riddle", sft, tmp_path / "s.jsonl", articles=path, **kw)  # type: ignore[arg-type]
    assert counts["articles"] == 2 and counts["replies"] == 4
    stored = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["id"] for r in stored] == [r["id"] for r in rows]
    assert {r["split"] for r in stored} == {"file:articles.jsonl"}
    for reply in (r for row in stored for r in row["replies"]):
        assert "answer_f1" not in reply["metrics"]  # no reference: not scored
        assert reply["valid"] is False or "source_rank" in reply["metrics"]
    assert all(p.provenance["split"] == "file:articles.jsonl" for p in pairs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "id": "x1", "source_id": test_id}) + "\n")
    with pytest.raises(ConfigError, match=f"{test_id} is a test article or derives from one"):
        ai_feedback_pairs("news-riddle", sft, tmp_path / "b.jsonl", articles=bad, **kw)  # type: ignore[arg-type]
    bad.write_text(json.dumps({"id": "x2", "title": "t"}) + "\n")
    with pytest.raises(InputError, match="no text"):
        ai_feedback_pairs("news-riddle", sft, tmp_path / "b.jsonl", articles=bad, **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "b.jsonl").exists()


def test_ai_feedback_passes_strategy_options_and_refuses_its_own(sft, tmp_path) -> None:
    """``--set structured=off`` reaches the sampling chain; a knob the builder owns is refused."""
    from finetune.pairs import ai_feedback_pairs

    kw = dict(k=2, max_new_tokens=12, progress=False, margin=0.0, limit=1)
    with pytest.raises(ConfigError, match="--set temperature: set by the pairs builder"):
        ai_feedback_pairs(
            "news-riddle", sft, tmp_path / "x.jsonl", chain_options={"temperature": 0.1}, **kw
        )  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="structured"):
        ai_feedback_pairs(
            "news-riddle", sft, tmp_path / "y.jsonl", chain_options={"structured": "sideways"}, **kw
        )  # type: ignore[arg-type]
    _pairs, counts = ai_feedback_pairs(
        "news-riddle", sft, tmp_path / "z.jsonl", chain_options={"structured": "off"}, **kw
    )  # type: ignore[arg-type]
    assert counts["articles"] == 1 and counts["replies"] == 2


def test_reward_flag_takes_metric_names_verbatim(sft, tmp_path, capsys) -> None:
    """``--reward solvability@1=0`` (the bench's column name, ``@`` and all) reaches the reward;
    a weight that is not a number is a one-line error naming the flag."""
    from llmapps.cli import main
    from llmapps.evaluate.preferences import read_pairs

    out = tmp_path / "p.jsonl"
    argv = ["finetune", "pairs", "--sample", "2", "--adapter", str(sft), "--limit", "2",
            "--max-new-tokens", "12", "--margin", "0", "-q", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--reward", "solvability@1=0", "--reward", "leakage=-4"]) in (0, 1)
    pairs = read_pairs(out)
    assert pairs and all(
        p.provenance["reward_weights"]["solvability@1"] == 0.0
        and p.provenance["reward_weights"]["leakage"] == -4.0
        for p in pairs
    )
    capsys.readouterr()
    assert main([*argv, "--reward", "leakage=lots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reward 'leakage=lots'" in err[0]


def test_human_ratings_become_pairs_through_the_cli(tmp_path, capsys) -> None:
    """A bench run folder as `llmapps bench` writes it, a sheet exported from it, ratings."""
    from llmapps.cli import main
    from llmapps.evaluate.human import export_sheet, read_key
    from llmapps.evaluate.preferences import read_pairs

    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    refs = [
        {"id": f"a{i}", "title": f"T{i}", "text": f"text {i}", "reference_riddle": "r"}
        for i in range(3)
    ]
    (run / "references.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    outputs = {
        name: {
            r["id"]: {
                "id": r["id"],
                "strategy": name,
                "summary": f"{name} s",
                "riddle": f"{name} {r['id']}",
                "answer": "x",
                "valid": True,
            }
            for r in refs
        }
        for name in ("lora", "lora-dpo")
    }
    for name, rows in outputs.items():
        (run / "samples" / f"{name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows.values())
        )
    (run / "config.json").write_text(
        json.dumps(
            {
                "bench": {"app": "news-riddle"},
                "metrics": {"fields": ["summary", "riddle", "answer"]},
            }
        )
    )
    (run / "strategies.json").write_text(
        json.dumps({"lora": {"config": {"kind": "lora", "adapter": "/sft", "temperature": 0.0}}})
    )
    folder = run / "human-eval"
    export_sheet(outputs, refs, folder, fields=["riddle"])
    items, _ = read_key(folder / "key.json")
    rows = []
    for iid, it in sorted(items.items()):
        pick = "A" if it["A"] == "lora-dpo" else "B"  # ann prefers the DPO reply every time
        rows.append({"item": iid, "preference": pick, "rater": "ann"})
    rows.append({"item": sorted(items)[0], "preference": "tie", "rater": "bob"})
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"item": "q0001", "pref'
    (folder / "ratings.jsonl").write_text(text)
    out = tmp_path / "pairs.jsonl"
    code = main(
        [
            "finetune",
            "pairs",
            "--ratings",
            str(folder / "ratings.jsonl"),
            "--key",
            str(folder / "key.json"),
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 pairs from 3 rated items" in printed and "1 torn last line" in printed
    pairs = read_pairs(out)
    assert all(p.chosen["riddle"].startswith("lora-dpo") for p in pairs)
    assert all(p.prompt["title"].startswith("T") for p in pairs)
    by_strategy = {p.provenance["rejected_by"]["strategy"]: p for p in pairs}
    assert by_strategy["lora"].provenance["rejected_by"]["adapter"] == "/sft"
