"""The output audits: privacy (carried personal data, verbatim copying) and counterfactual fairness
(twins that differ only in swapped terms, the per-attribute report)."""

from __future__ import annotations

import pytest

from llmapps.audit.privacy import carried_pii, check_output, copied_spans, publishable

ARTICLE = (
    "Residents can write to Jane Doe at jane.doe@example.org or call +44 20 7946 0958. "
    "The office is at 221B Baker Street in London. The council voted on Tuesday to close "
    "the old library on the high street after years of debate about its costs."
)


def test_privacy_flags_an_email_the_article_carried() -> None:
    found = carried_pii(ARTICLE, "Who answers at JANE.DOE@example.org? The council's clerk.")
    assert [(f.kind, f.value) for f in found] == [("email", "JANE.DOE@example.org")]


def test_privacy_matches_phones_and_addresses_in_another_format() -> None:
    found = carried_pii(ARTICLE, "Ring +44-20-7946-0958 or visit 221b baker street.", "riddle")
    assert {f.kind for f in found} == {"phone", "address"}
    assert all(f.field == "riddle" for f in found)


def test_privacy_ignores_data_the_article_did_not_carry() -> None:
    assert carried_pii(ARTICLE, "Mail bob@example.com or call 020 1234 5678 at 9 Elm Street") == []
    assert carried_pii(ARTICLE, "I have no contact details at all.") == []


def test_copied_spans_finds_one_maximal_run() -> None:
    out = "They say: the council voted on Tuesday to close the old library on the high street!"
    (span,) = copied_spans(ARTICLE, out, min_words=12)
    assert span.kind == "copy" and span.words == 14
    assert span.value.startswith("the council voted") and span.value.endswith("high street")
    assert copied_spans(ARTICLE, out, min_words=15) == []
    with pytest.raises(ValueError, match="min_words"):
        copied_spans(ARTICLE, out, min_words=0)


def test_publishable_says_why_not() -> None:
    ok, reasons = publishable(ARTICLE, {"riddle": "I hold books but no more.", "answer": "library"})
    assert ok and reasons == []
    ok, reasons = publishable(ARTICLE, {"riddle": "Mail jane.doe@example.org", "valid": True})
    assert not ok and "email" in reasons[0] and "riddle" in reasons[0]
    assert check_output(ARTICLE, {"riddle": None, "answer": ""}) == []


# ----------------------------------------------------------------------------- fairness


@pytest.fixture(scope="module")
def words():
    from llmapps.audit.fairness import load_words

    return load_words()


@pytest.fixture(scope="module")
def twins(words):
    from chains import news_data
    from llmapps.apps import get_app
    from llmapps.audit.run import twins_for

    spec = get_app("news-riddle")
    return twins_for(spec, news_data.samples("test"), common_rows=news_data.examples("train"))


def _side_vocab(words, attribute: str, side: int) -> set[str]:
    w = words[attribute]
    return {p[side].lower() for group in (w.pairs, w.names, w.places) for p in group}


def test_twins_differ_only_in_the_swapped_terms(twins, words) -> None:
    import re

    assert {t.attribute for t in twins} == {"gender", "origin"}
    assert sum(t.attribute == "gender" for t in twins) >= 15  # most test articles have a person
    for twin in twins:
        vocab = [_side_vocab(words, twin.attribute, s) for s in (0, 1)]
        for key in ("title", "text"):
            wa = re.findall(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?", twin.a[key])
            wb = re.findall(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?", twin.b[key])
            assert len(wa) == len(wb), (twin.id, key)
            for x, y in zip(wa, wb, strict=True):
                if x != y:  # every difference is a side-a term facing its side-b term
                    bx, by = x.lower().split("'")[0], y.lower().split("'")[0]
                    assert bx in vocab[0] and by in vocab[1], (twin.id, x, y)
        assert twin.swaps and twin.a["id"] == twin.b["id"] == twin.id


def test_gender_twins_pick_his_or_him_for_her(words) -> None:
    from llmapps.audit.fairness import make_twin

    row = {"id": "x", "text": "She lost her keys, so we thanked her. Her bag was found by Mr Day."}
    twin = make_twin(row, ("text",), "gender", words["gender"])
    assert twin is not None
    assert twin.a["text"] == "He lost his keys, so we thanked him. His bag was found by Mr Day."
    assert twin.b["text"] == "She lost her keys, so we thanked her. Her bag was found by Ms Day."
    assert make_twin({"id": "y", "text": "The tide came in."}, ("text",), "gender",
                     words["gender"]) is None  # fmt: skip


def test_people_and_places_get_the_sides_names(words) -> None:
    from llmapps.audit.fairness import make_twin

    text = (
        "Runner Delia Fenwright won in Kestrelmouth on Sunday. Fenwright said she trained in "
        "Kestrelmouth for years."
    )
    row = {"id": "r", "text": text}
    g = make_twin(row, ("text",), "gender", words["gender"])
    o = make_twin(row, ("text",), "origin", words["origin"])
    assert g is not None and o is not None
    assert "James Fenwright" in g.a["text"] and " he " in g.a["text"]
    assert "Mary Fenwright" in g.b["text"] and " she " in g.b["text"]
    assert o.a["text"].count("Manchester") == 2 and o.b["text"].count("Lagos") == 2
    assert "Delia" in o.a["text"]  # origin leaves people alone


def test_compare_sees_only_changes_beyond_the_swapped_terms(words) -> None:
    from llmapps.audit.fairness import OutputFields, compare, make_twin, summarise

    twin = make_twin({"id": "t", "text": "He said his team won."}, ("text",), "gender",
                     words["gender"])  # fmt: skip
    assert twin is not None
    f = OutputFields(riddle="riddle", answer="answer", leak=("answer",))
    same = compare(
        twin,
        {"riddle": "He leads his team to glory", "answer": "a win", "valid": True},
        {"riddle": "She leads her team to glory", "answer": "a win", "valid": True},
        f,
    )
    assert same["wording_changed"] == 0.0 and same["answer_changed"] == 0.0
    assert same["valid_changed"] == 0.0 and same["polarity_a"] == same["polarity_b"]
    moved = compare(
        twin,
        {"riddle": "He leads his team to glory", "answer": "a win", "valid": True},
        {"riddle": "She weeps over a terrible loss", "answer": "a loss", "valid": False},
        f,
    )
    assert moved["wording_changed"] == 1.0 and moved["answer_changed"] == 1.0
    assert moved["valid_changed"] == 1.0 and moved["polarity_b"] < 0 < moved["polarity_a"]
    s = summarise([same, moved])
    assert s["pairs"] == 2 and s["wording_changed"]["mean"] == 0.5
    assert s["valid_shift"]["mean"] == -0.5 and s["polarity_shift"]["mean"] < 0


def test_bad_words_file_and_options_are_config_errors(tmp_path) -> None:
    from llmapps.audit.fairness import load_words
    from llmapps.cli.audit import parse_options
    from llmapps.errors import ConfigError

    bad = tmp_path / "w.yaml"
    bad.write_text("gender:\n  pairs: [[he]]\n")
    with pytest.raises(ConfigError, match=r"w\.yaml"):
        load_words(bad)
    with pytest.raises(ConfigError, match=r"STRATEGY\.KEY=VALUE"):
        parse_options(["adapter=/x"], ["lora"])
    with pytest.raises(ConfigError, match="not among --strategies"):
        parse_options(["lora.adapter=/x"], ["few-shot"])
    assert parse_options(["few-shot.max_new_tokens=8"], ["few-shot"]) == {
        "few-shot": {"max_new_tokens": 8}
    }


def test_audit_cli_runs_both_twins_resumes_and_reports(tiny_models, tmp_path, capsys) -> None:
    import json

    from llmapps.cli import main

    out = tmp_path / "audit"
    args = ["audit", "fairness", "news-riddle", "--out", str(out), "--limit", "2",
            "--strategies", "few-shot,zero-shot", "--opt", "few-shot.max_new_tokens=12",
            "--opt", "zero-shot.max_new_tokens=12", "--batch-size", "4"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "few-shot.jsonl").read_text().splitlines()]
    sides = {r["id"].rsplit("|", 1)[1] for r in rows}
    assert sides == {"a", "b"} and len(rows) % 2 == 0 and rows
    report = json.loads((out / "report.json").read_text())
    fair = report["strategies"]["zero-shot"]["fairness"]
    assert "gender" in fair and fair["gender"]["pairs"] >= 1
    assert {"valid_changed", "wording_changed", "polarity_shift"} <= set(fair["gender"])
    assert report["strategies"]["few-shot"]["privacy"]["outputs"] == len(rows)
    assert "| few-shot | gender |" in first and "flagged (privacy)" in first
    assert main(args) == 0  # resumed: nothing left to run
    assert "few-shot: 0 outputs" in capsys.readouterr().out
