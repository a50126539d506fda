"""Augmentation (``llmapps data augment``): consistent entity swaps across every field, sentence
variants that keep the references' facts, determinism per seed, the train split only, and the
recipe option that mixes augmented rows in (refusing any row not made from a train row)."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
from pathlib import Path

import pytest

from chains import news_data
from llmapps import apps
from llmapps.apps import get_app
from llmapps.cli import main
from llmapps.data.augment import (
    AugmentFields,
    EntityPool,
    augment_rows,
    entity_swap,
    sentence_drop,
    teacher_rows,
)
from llmapps.data.rows import fields_of
from llmapps.data.swaps import apply_mapping, split_sentences, surviving
from llmapps.errors import InputError
from llmapps.evaluate.text import content_words

FIELDS = ("title", "text", "summary", "riddle", "answer")


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return news_data.examples("train")


@pytest.fixture(scope="module")
def spec() -> AugmentFields:
    return fields_of(get_app("news-riddle"))


def test_fields_come_from_the_app(spec: AugmentFields) -> None:
    assert spec.fields == FIELDS
    assert spec.body == "text" and spec.references == ("summary", "riddle", "answer")


def test_apply_mapping_swaps_whole_words_and_keeps_case() -> None:
    text = "Marrowfield's MARROWFIELD marrowfield Marrowfielder; Ada met Bo."
    out = apply_mapping(text, {"Marrowfield": "Lagos", "Ada": "Bo", "Bo": "Ada"})
    assert out == "Lagos's LAGOS lagos Marrowfielder; Bo met Ada."


def test_entity_swap_is_consistent_across_all_four_fields(train, spec) -> None:
    pool = EntityPool(train, spec)
    swapped_rows = 0
    for row in train:
        found = pool.entities(row)
        out = entity_swap(row, spec, pool, random.Random(0))
        if out is None:
            continue
        swapped_rows += 1
        # a swapped name never survives in any field (article, summary, riddle, answer, title)
        assert surviving(out.values(), found) == [], row["id"]
        # and the text around the names is unchanged: same number of words in every field
        for k in FIELDS:
            assert len(re.findall(r"\w+", out[k])) >= len(re.findall(r"\w+", row[k])) - 6
    assert swapped_rows >= 80  # nearly every bundled article names someone or somewhere


def test_entity_swap_rewrites_a_name_the_reference_uses(train, spec) -> None:
    row = next(r for r in train if r["id"] == "a001")
    out = entity_swap(row, spec, EntityPool(train, spec), random.Random(3))
    assert out is not None
    assert "Marrowfield" in row["summary"] and "Marrowfield" not in out["summary"]
    new_town = re.search(r"The (\w+) mayoral", out["summary"]).group(1)  # type: ignore[union-attr]
    assert new_town in out["text"] and new_town in out["title"]


def test_sentence_drop_keeps_every_fact_the_references_use(train, spec) -> None:
    for row in train[:30]:
        body = sentence_drop(row, spec, random.Random(1), share=0.5)
        if body is None:
            continue
        kept = {s for p in split_sentences(body) for s in p}
        gone = [s for p in split_sentences(row["text"]) for s in p if s not in kept]
        assert gone, row["id"]
        facts = set().union(*(content_words(row[k]) for k in spec.references))
        assert all(not (content_words(s) & facts) for s in gone)


def test_sentence_order_keeps_every_sentence(train, spec) -> None:
    rows = augment_rows(train[:10], spec, transforms=["sentence-order"], seed=4)
    assert rows
    for new in rows:
        old = next(r for r in train if r["id"] == new["source_id"])
        flat = sorted(s for p in split_sentences(new["text"]) for s in p)
        assert flat == sorted(s for p in split_sentences(old["text"]) for s in p)
        assert new["text"] != old["text"]
        assert all(new[k] == old[k] for k in ("summary", "riddle", "answer"))


def test_rows_are_tagged_and_deterministic_per_seed(train, spec) -> None:
    a = augment_rows(train, spec, seed=7, copies=2)
    b = augment_rows(train, spec, seed=7, copies=2)
    c = augment_rows(train, spec, seed=8, copies=2)
    assert a == b and a != c
    assert {r["transform"] for r in a} == {"entity-swap", "sentence-order", "sentence-drop"}
    assert all(r["id"] == f"{r['source_id']}~{r['transform']}~{r['id'][-1]}" for r in a)
    # one row's variants do not depend on which other rows were augmented with it
    alone = augment_rows([train[5]], spec, seed=7, copies=2, transforms=["sentence-drop"])
    assert alone == [r for r in a if r["source_id"] == train[5]["id"] and "drop" in r["id"]]


def test_bad_rows_and_options_are_input_errors(train, spec) -> None:
    with pytest.raises(InputError, match="lacks text in summary"):
        augment_rows([{**train[0], "summary": ""}], spec)
    with pytest.raises(InputError, match="unknown transforms"):
        augment_rows(train[:2], spec, transforms=["back-translate"])


def test_teacher_rows_keep_only_outputs_that_pass_the_checks(train, spec) -> None:
    rows = train[:4]
    outs = [
        {"summary": "s", "riddle": "I swim in no sea, yet I count.", "answer": "x", "valid": True},
        {"summary": "s", "riddle": "r", "answer": "a", "valid": False},
        {"summary": "s", "riddle": rows[2]["text"], "answer": "a", "valid": True},
        {"summary": "s", "riddle": "", "answer": "a", "valid": True},
    ]
    kept, dropped = teacher_rows(
        rows, outs, spec, riddle="riddle", answer="answer", leak=("answer",), copy=("text",)
    )
    assert [r["source_id"] for r in kept] == [rows[0]["id"]]
    assert kept[0]["transform"] == "teacher" and kept[0]["riddle"] == outs[0]["riddle"]
    assert dropped == {"invalid": 1, "empty": 1, "leaks": 0, "copies": 1}


def test_cli_reads_the_train_split_only(tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(Path(news_data.data_dir()), data, ignore=shutil.ignore_patterns("boutique"))
    monkeypatch.setenv("LLMAPPS_DATA_DIR", str(data))
    asked: list[str] = []
    real = news_data.examples

    def spy(split: str = "train") -> list[dict]:
        asked.append(split)
        return real(split)

    spied = dataclasses.replace(get_app("news-riddle"), training_examples=spy)
    monkeypatch.setattr(apps, "get_app", lambda name: spied)
    out = tmp_path / "aug.jsonl"
    code = main(["data", "augment", "news-riddle", "--out", str(out), "--seed", "3"])
    assert code == 0, capsys.readouterr().err
    assert asked == ["train"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    splits = json.loads((data / "splits.json").read_text())
    assert {r["source_id"] for r in rows} <= set(splits["train"])
    assert not {r["source_id"] for r in rows} & set(splits["test"] + splits["validation"])
    summary = json.loads((tmp_path / "aug.jsonl.json").read_text())
    assert summary["split"] == "train" and summary["rows"] == len(rows)
    # rerun with the same seed: the same bytes
    again = tmp_path / "again.jsonl"
    assert main(["data", "augment", "news-riddle", "-o", str(again), "--seed", "3"]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_cli_refuses_a_teacher_without_an_endpoint(tmp_path, capsys) -> None:
    code = main(["data", "augment", "news-riddle", "-o", str(tmp_path / "x.jsonl"),
                 "--transforms", "entity-swap,teacher"])  # fmt: skip
    assert code == 2
    assert "--teacher-url" in capsys.readouterr().err


def test_recipe_mixes_augmented_rows_and_refuses_foreign_ones(train, spec, tmp_path) -> None:
    from finetune.data import mix_augmented, read_train_rows
    from finetune.recipe import load_recipe
    from prompts import load_task

    task = load_task("news_riddle/one_step")
    made = augment_rows(train, spec, seed=0)
    path = tmp_path / "aug.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in made))
    recipe = load_recipe(
        "tiny",
        **{"data.augmented": str(path), "data.augment_transforms": ["entity-swap"],
           "data.augment_per_row": 1},
    )  # fmt: skip
    rows = read_train_rows(recipe.data, task)
    n_swaps = sum(r["transform"] == "entity-swap" for r in made)
    assert len(rows) == len(train) + n_swaps
    assert {r.get("transform") for r in rows[len(train) :]} == {"entity-swap"}
    test_row = news_data.examples("test")[0]
    foreign = [{**test_row, "id": "t~entity-swap~0", "source_id": test_row["id"],
                "transform": "entity-swap"}]  # fmt: skip
    with pytest.raises(InputError, match="not made from a train row"):
        mix_augmented(train, foreign)
    plain = load_recipe("tiny")
    assert len(read_train_rows(plain.data, task)) == len(train)


def test_teacher_rows_come_from_a_real_endpoint_and_pass_the_checks(
    tiny_instruct: str, tmp_path, monkeypatch, capsys
) -> None:
    from pydantic import SecretStr

    from llmapps.models.local import load_local_model
    from llmapps.serving.app import create_app
    from llmapps.serving.server import serve_in_thread
    from llmapps.settings import ServerSettings

    key = "augment-teacher-key-0123456789"
    monkeypatch.setenv("LLMAPPS_SERVICE__API_KEY", key)
    settings = ServerSettings(api_key=SecretStr(key), max_tokens=48, max_concurrent=4)
    app = create_app(load_local_model(tiny_instruct), settings, model_name="tiny-instruct")
    out = tmp_path / "teacher.jsonl"
    with serve_in_thread(app) as url:
        code = main(["data", "augment", "news-riddle", "-o", str(out), "--limit", "3",
                     "--transforms", "teacher", "--teacher-url", f"{url}/v1",
                     "--teacher-model", "tiny-instruct"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "teacher.jsonl.json").read_text())
    kept = summary["by_transform"].get("teacher", 0)
    # every one of the 3 answers was judged: kept, or dropped with its reason
    assert kept + sum(summary["teacher_dropped"].values()) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["transform"] == "teacher" and r["riddle"].strip() for r in rows)
