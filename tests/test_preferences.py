"""Preference pairs from blinded A/B ratings: ties, conflicting raters, unknown items, a torn last
line and re-ratings are counted and reported, never dropped silently; the pairs file round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmapps.errors import InputError
from llmapps.evaluate.preferences import (
    COUNT_KEYS,
    PreferencePair,
    pairs_sha256,
    ratings_to_pairs,
    read_pairs,
    read_rating_files,
    write_pairs,
)

IN, OUT = ("title", "text"), ("summary", "body")
SAMPLES = [{"id": f"s{i}", "title": f"T{i}", "text": f"article {i}"} for i in range(6)]
OUTPUTS = {
    "sft": {
        f"s{i}": {"id": f"s{i}", "summary": f"sft {i}", "body": "b", "valid": True}
        for i in range(6)
    },
    "dpo": {
        f"s{i}": {"id": f"s{i}", "summary": f"dpo {i}", "body": "b", "valid": True}
        for i in range(6)
    },
}
# s4's dpo reply equals sft's; s5's dpo reply failed
OUTPUTS["dpo"]["s4"] = dict(OUTPUTS["sft"]["s4"])
OUTPUTS["dpo"]["s5"] = {"id": "s5", "error": "timeout"}
KEY = {
    "q0001": {"id": "s0", "A": "sft", "B": "dpo"},  # A wins, two raters agree
    "q0002": {"id": "s1", "A": "dpo", "B": "sft"},  # tie only
    "q0003": {"id": "s2", "A": "sft", "B": "dpo"},  # one A, one B: conflict
    "q0004": {"id": "s3", "A": "dpo", "B": "sft"},  # 2 A vs 1 B: majority with dissent
    "q0005": {"id": "s4", "A": "sft", "B": "dpo"},  # identical replies
    "q0006": {"id": "s5", "A": "sft", "B": "dpo"},  # failed reply
    "q0007": {"id": "s9", "A": "sft", "B": "dpo"},  # sample not in the outputs
}


def _ratings_file(tmp_path: Path) -> Path:
    rows = [
        {"item": "q0001", "preference": "B", "rater": "ann"},  # re-rated below
        {"item": "q0001", "preference": "A", "rater": "ann"},
        {"item": "q0001", "preference": "a", "rater": "bob"},
        {"item": "q0002", "preference": "tie", "rater": "ann"},
        {"item": "q0003", "preference": "A", "rater": "ann"},
        {"item": "q0003", "preference": "B", "rater": "bob"},
        {"item": "q0004", "preference": "A", "rater": "ann"},
        {"item": "q0004", "preference": "A", "rater": "cy"},
        {"item": "q0004", "preference": "B", "rater": "bob"},
        {"item": "q0005", "preference": "A", "rater": "ann"},
        {"item": "q0006", "preference": "A", "rater": "ann"},
        {"item": "q0007", "preference": "B", "rater": "ann"},
        {"item": "q9999", "preference": "A", "rater": "ann"},  # not in the key
        {"item": "q0001", "preference": "maybe", "rater": "cy"},  # bad choice
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + "not json\n"
    text += '{"item": "q0002", "preference": "A", "ra'  # torn by a kill mid-write
    path = tmp_path / "ratings.jsonl"
    path.write_text(text)
    return path


def test_ratings_to_pairs_counts_every_case(tmp_path: Path) -> None:
    read = read_rating_files([_ratings_file(tmp_path)])
    assert read.superseded == 1 and read.bad_lines == 2 and read.torn_last_line == 1
    report = ratings_to_pairs(
        read.ratings,
        KEY,
        OUTPUTS,
        SAMPLES,
        input_fields=IN,
        output_fields=OUT,
        producers={"sft": {"adapter": "/a/sft", "seed": 0}},
        read=read,
    )
    c = report.counts
    assert set(COUNT_KEYS) <= set(c)
    assert c["ties"] == 1 and c["conflicts"] == 1 and c["majority_with_dissent"] == 1
    assert c["unknown_items"] == 1 and c["identical_replies"] == 1
    assert c["failed_outputs"] == 1 and c["missing_outputs"] == 1
    assert c["torn_last_line"] == 1 and c["bad_lines"] == 2 and c["superseded"] == 1
    assert c["pairs"] == 2 and c["ratings"] == 12 and c["items_rated"] == 7
    by_item = {p.provenance["item"]: p for p in report.pairs}
    p1 = by_item["q0001"]
    assert p1.chosen["summary"] == "sft 0" and p1.rejected["summary"] == "dpo 0"
    assert p1.prompt == {"title": "T0", "text": "article 0"}
    assert p1.provenance["raters_for"] == ["ann", "bob"]
    assert p1.provenance["chosen_by"] == {"strategy": "sft", "adapter": "/a/sft", "seed": 0}
    p4 = by_item["q0004"]  # A (dpo) won 2 to 1
    assert p4.chosen["summary"] == "dpo 3" and p4.provenance["margin"] == 1
    assert p4.provenance["raters_against"] == ["bob"]
    line = report.summary()
    assert "2 pairs" in line and "1 ties" in line and "1 conflicts" in line and "torn" in line


def test_pairs_file_round_trip_and_hash(tmp_path: Path) -> None:
    read = read_rating_files([_ratings_file(tmp_path)])
    report = ratings_to_pairs(
        read.ratings, KEY, OUTPUTS, SAMPLES, input_fields=IN, output_fields=OUT
    )
    path = tmp_path / "pairs.jsonl"
    digest = write_pairs(path, report.pairs)
    assert digest == pairs_sha256(path)
    back = read_pairs(path)
    assert back == report.pairs
    assert all(isinstance(p, PreferencePair) for p in back)


def test_read_pairs_names_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    good = PreferencePair(
        id="x",
        sample_id="s",
        source="ai",
        prompt={"t": "p"},
        chosen={"o": "a"},
        rejected={"o": "b"},
    )
    path.write_text(good.model_dump_json() + "\n" + '{"id": "y", "extra": 1}\n')
    with pytest.raises(InputError, match=r"pairs.jsonl:2"):
        read_pairs(path)
    path.write_text(good.model_dump_json() + "\n" + good.model_dump_json() + "\n")
    with pytest.raises(InputError, match="twice"):
        read_pairs(path)
    path.write_text("")
    with pytest.raises(InputError, match="no preference pairs"):
        read_pairs(path)
    with pytest.raises(InputError, match="does not exist"):
        read_rating_files([tmp_path / "nope.jsonl"])


def test_sheet_csv_ratings_are_read_too(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "item,context,A,B,preference,rater\n"
        "q0001,c,x,y,A,\n"  # rater defaults to the file's stem
        "q0002,c,x,y,,\n"  # not rated yet: not counted
        "q0003,c,x,y,B,zed\n"
    )
    read = read_rating_files([sheet])
    assert sorted((r["item"], r["rater"]) for r in read.ratings) == [
        ("q0001", "sheet"),
        ("q0003", "zed"),
    ]
    report = ratings_to_pairs(
        read.ratings, KEY, OUTPUTS, SAMPLES, input_fields=IN, output_fields=OUT
    )
    assert report.counts["pairs"] == 2
    assert {p.chosen["summary"] for p in report.pairs} == {"sft 0", "dpo 2"}
