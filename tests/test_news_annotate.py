"""News-riddle annotation: the checker (every problem listed with its line), two annotators'
agreement, and the merge into a data folder that leaves the test split as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chains import news_annotate, news_data
from llmapps.cli import main
from llmapps.errors import InputError

FIXTURE = Path(__file__).parent / "fixtures" / "news_annotations.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_fixture_is_valid_and_recognised() -> None:
    assert news_annotate.is_news_annotation_file(FIXTURE)
    rows = news_annotate.read_annotations(FIXTURE)
    assert len(rows) == 6 and {r.annotator for r in rows} == {"ann1", "ann2"}


def test_checker_lists_every_problem_with_its_line(tmp_path: Path) -> None:
    rows = _rows()
    bad = [
        {**rows[2], "riddle": "The mayoral recount is what I am."},  # names its answer
        {**rows[3], "answer": "a recount of every single vote in the whole town."},
        {**rows[4], "summary": "Comet. Found."},
        {"id": "a003", "annotator": "ann1", **{k: rows[2][k] for k in news_annotate.FIELDS}},
        {**rows[0], "annotator": "ann3", "text": "too short"},
        {**rows[5], "colour": "blue"},
    ]
    with pytest.raises(InputError) as err:
        news_annotate.read_annotations(_write(tmp_path / "bad.jsonl", bad))
    msg = str(err.value)
    assert "line 1 (a001, ann1): riddle: names its answer (mayoral, recount)" in msg
    assert "line 2 (a001, ann2): answer: 10 words, expected 1-6" in msg
    assert "answer: no full stop" in msg
    assert "line 3 (a002, ann1): summary: write one sentence" in msg
    assert "line 4 (a003, ann1): a003 is a test article" in msg
    assert "line 5 (p900, ann3): new article: text: Value error, text has 2 words" in msg
    assert "line 6: colour: Extra inputs are not permitted" in msg


def test_a_riddle_that_copies_the_article_is_refused(tmp_path: Path) -> None:
    articles, _, _ = news_data.load_bundled()
    row = {**_rows()[2], "riddle": " ".join(articles["a001"].text.split()[:25])}
    with pytest.raises(InputError, match="copies the article"):
        news_annotate.read_annotations(_write(tmp_path / "c.jsonl", [row]))


def test_agreement_of_two_annotators() -> None:
    agree = news_annotate.agreement(news_annotate.read_annotations(FIXTURE))
    assert agree["pairs"] == 3 and agree["shared"] == 3 and agree["annotators"] == ["ann1", "ann2"]
    # "the floating library" = "a floating library" once articles are normalised away
    assert agree["answer_exact"]["mean"] == pytest.approx(1 / 3)
    assert 0 < agree["riddle_rougeL"]["mean"] < agree["summary_rougeL"]["mean"] < 1
    assert agree["answer_f1"]["low"] <= agree["answer_f1"]["mean"] <= agree["answer_f1"]["high"]


def test_format_joins_train_and_keeps_the_test_split(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "data"
    assert main(["annotate", "format", str(FIXTURE), "--out", str(out)]) == 0
    assert "use it with LLMAPPS_DATA_DIR" in capsys.readouterr().out
    _, riddles, before = news_data.load_bundled()
    after = json.loads((out / "splits.json").read_text())
    assert after["test"] == before["test"] and after["validation"] == before["validation"]
    assert after["train"] == [*before["train"], "p900"]
    refs = {json.loads(x)["id"]: json.loads(x) for x in (out / "riddles.jsonl").open()}
    assert refs["p900"]["answer"] == "the floating library"  # the first annotator's
    assert all(refs[i] == riddles[i].model_dump() for i in before["test"])
    monkeypatch.setenv("LLMAPPS_DATA_DIR", str(out))  # the folder loads as the bundled data
    assert [s["id"] for s in news_data.samples("test")] == before["test"]
    assert "p900" in {e["id"] for e in news_data.examples("train")}


def test_cli_agree_guide_and_boutique_files_still_work(capsys) -> None:
    assert main(["annotate", "agree", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "answer_exact: 0.333" in out and "riddle_rougeL" in out
    assert main(["annotate", "guide"]) == 0
    assert "never write any" in capsys.readouterr().out
    dialogues = Path(news_data.data_dir()) / "boutique" / "dialogues.jsonl"
    assert not news_annotate.is_news_annotation_file(dialogues)
    assert main(["annotate", "check", str(dialogues)]) == 0
    assert "dialogues" in capsys.readouterr().out
    assert main(["annotate", "agree", str(dialogues)]) == 2
