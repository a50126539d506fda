"""Evaluation metrics on their own: reference scores, embeddings, riddle metrics, perplexity,
file scoring, the judge app's parser and the human-evaluation round trip."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from chains.news_riddle_metrics import leakage
from llmapps.errors import InputError
from llmapps.evaluate.reference import corpus_bleu, rouge, sentence_bleu
from llmapps.evaluate.text import content_words, format_valid, word_count


def test_rouge_and_bleu_rank_a_copy_over_a_paraphrase_over_nothing() -> None:
    ref = "The city council voted to close the old harbour bridge for repairs."
    para = "The council closed the harbour bridge so it can be repaired."
    assert rouge(ref, ref) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert 0 < rouge(para, ref)["rougeL"] < 1
    assert rouge("", ref) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert sentence_bleu(ref, ref) == pytest.approx(1.0)
    assert 0 < sentence_bleu(para, ref) < sentence_bleu(ref, ref)
    assert sentence_bleu("", ref) == 0.0
    assert corpus_bleu([ref, para], [ref, ref]) < 1.0
    with pytest.raises(InputError, match="must align"):
        corpus_bleu([ref], [ref, ref])


def test_leakage_counts_content_words_of_answer_and_title_said_in_the_riddle() -> None:
    assert content_words("The Harbour Bridge of the city") == {"harbour", "bridge", "city"}
    # answer "harbour bridge" + title "Council closes bridge": words harbour, bridge, council, closes
    riddle = "I span the water and the council shut me"
    assert leakage(riddle, ["harbour bridge", "Council closes bridge"]) == pytest.approx(0.25)
    assert leakage("I am never named", ["harbour bridge"]) == 0.0
    assert leakage("", ["harbour bridge"]) is None  # no riddle: format validity counts that
    assert leakage("anything", ["the of a"]) is None  # nothing that could leak


def test_answer_f1_and_exact_match_normalise_case_punctuation_and_articles() -> None:
    from llmapps.evaluate.reference import exact_match, token_f1

    assert exact_match("The Marathon Record!", "marathon record") == 1.0
    assert exact_match("a marathon", "the marathon record") == 0.0
    assert token_f1("the marathon", "the marathon record") == pytest.approx(2 / 3, abs=1e-6)
    assert token_f1("record marathon", "marathon record") == 1.0  # a bag of words
    assert token_f1("a bridge", "the harbour") == 0.0
    assert token_f1("", "x") == 0.0 and exact_match("", "") == 0.0  # no reference: nothing to match


def test_copying_flags_a_riddle_that_repeats_its_summary_article_or_an_example() -> None:
    from chains.news_riddle_metrics import copied, copy_overlap

    summary = "Local runner Elias Mbarro set a course record at the Kestrel Bay Marathon."
    riddle = (
        "Forty-two thousand metres by the sea, the wind pushed back, yet the clock set him free."
    )
    assert copied(summary, [summary]) == (1.0, 1.0)  # the riddle is its summary
    assert copied(summary.upper() + "!", ["x", summary]) == (1.0, 1.0)  # case and punctuation aside
    assert copied(riddle, [summary]) == (0.0, 0.0)  # a real riddle
    # reusing a phrase of the source is not copying
    loose = "A runner set a record by the bay, yet nobody knew his name."
    assert 0 < copy_overlap(loose, summary + " The runner set a record.") < 0.8
    assert copied("", [summary]) is None and copied(riddle, []) is None
    assert copy_overlap("two words", "two words and more") == 1.0  # shorter than a trigram


def test_scorer_adds_answer_f1_and_copying_from_the_configured_fields(
    articles: list[dict],
) -> None:
    from llmapps.apps import get_app
    from llmapps.evaluate.scoring import MetricsConfig, Scorer, aggregate

    app_fields = get_app("news-riddle").metric_fields  # the app names its fields, not the core
    config = MetricsConfig.for_fields(
        ["summary", "riddle", "answer"], app_fields=app_fields, semantic=False
    )
    assert config.answer_field == "answer" and config.copy_fields == ["summary", "text"]
    bare = MetricsConfig.for_fields(["summary", "riddle", "answer"], semantic=False)
    assert (bare.riddle_field, bare.answer_field, bare.leak_fields) == (None, None, [])
    from llmapps.settings import load_settings

    chosen = load_settings(bench={"leak_fields": ["title"]})  # a settings file overrides the app
    over = MetricsConfig.for_fields(["riddle"], chosen, app_fields, semantic=False)
    assert over.leak_fields == ["title"] and over.riddle_field == "riddle"
    a, b = articles[:2]
    rows = [
        {
            "id": a["id"],
            "summary": "A summary.",
            "riddle": "A summary.",
            "answer": a["reference_answer"],
        },
        {
            "id": b["id"],
            "summary": "S",
            "riddle": b["reference_riddle"],
            "answer": "nothing like it",
        },
    ]
    scorer = Scorer(articles[:2], config.model_copy(update={"source_fields": []}))
    got = scorer.score(rows, copy_texts=[b["reference_riddle"]])
    assert got[0]["answer_em"] == 1.0 and got[0]["answer_f1"] == 1.0 and got[0]["copying"] == 1.0
    assert got[1]["answer_em"] == 0.0 and got[1]["copying"] == 1.0  # lifted from a worked example
    assert scorer.score(rows[1:])[0]["copying"] == 0.0  # without that example it is its own
    summary = aggregate([{**r, "metrics": m} for r, m in zip(rows, got, strict=True)], config)
    assert summary["copying"] == 1.0 and summary["answer_em"] == 0.5


def test_format_validity_and_length() -> None:
    assert format_valid({"riddle": "r", "answer": "a"}, ["riddle", "answer"])
    assert not format_valid({"riddle": "r", "answer": "  "}, ["riddle", "answer"])
    assert not format_valid({"riddle": "r"}, ["riddle", "answer"])
    assert word_count(" two  words ") == 2


@pytest.fixture(scope="module")
def articles(test_articles: list[dict]) -> list[dict]:
    return test_articles[:8]


def test_solvability_finds_the_source_of_a_telling_riddle_and_not_of_an_empty_one(
    articles: list[dict],
) -> None:
    from chains.news_riddle_metrics import solvability_at_k
    from llmapps.evaluate.embedding import NearestIndex, cosine_similarities

    index = NearestIndex(
        [a["id"] for a in articles], [f"{a['title']}\n{a['text']}" for a in articles]
    )
    # a riddle that is the article's own summary points at the article; an empty one at nothing
    riddles = [articles[0]["reference_summary"], "", articles[1]["reference_summary"]]
    ids = [articles[0]["id"], articles[0]["id"], articles[1]["id"]]
    solved = solvability_at_k(riddles, ids, index, ks=(1, 3))
    assert solved[0]["solvability@3"] == 1.0 and solved[0]["source_rank"] is not None
    assert solved[1] == {"solvability@1": 0.0, "solvability@3": 0.0, "source_rank": None}
    assert solved[2]["solvability@3"] == 1.0
    sims = cosine_similarities(
        [articles[0]["reference_riddle"], ""], [articles[0]["reference_riddle"]] * 2
    )
    assert sims[0] == pytest.approx(1.0, abs=1e-4) and sims[1] == 0.0
    with pytest.raises(InputError, match="unique"):
        NearestIndex(["a", "a"], ["x", "y"])


def test_perplexity_is_lower_for_text_like_the_training_corpus(
    tiny_base: str, articles: list[dict]
) -> None:
    from llmapps.evaluate.perplexity import perplexities, perplexity, token_nll
    from llmapps.models.local import load_local_model

    lm = load_local_model(tiny_base)
    news = articles[0]["text"][:300]
    noise = "zq xv qqj vvk zzx jjq xqz kkv qzx vjq"
    ppl = perplexities(lm, [news, noise, ""])
    assert ppl[0] is not None and ppl[1] is not None and ppl[0] < ppl[1]
    assert ppl[2] is None
    # batching and padding must not change the figures
    one = token_nll(lm, [news])[0]
    both = token_nll(lm, [news, noise])[0]
    assert one[1] == both[1] and one[0] == pytest.approx(both[0], rel=1e-4)
    assert perplexity(*one) == pytest.approx(math.exp(one[0] / one[1]))
    assert perplexity(0.0, 0) is None


def test_continuation_perplexity_scores_only_the_reply_after_the_prompt(
    tiny_base: str, articles: list[dict]
) -> None:
    import torch

    from llmapps.evaluate.perplexity import continuation_nll
    from llmapps.models.local import load_local_model

    lm = load_local_model(tiny_base)
    prompt, reply = (
        f"[Article]: {articles[0]['text'][:200]}\n[Summary]:",
        " " + articles[0]["reference_summary"],
    )
    (nll, n), (zero, none) = continuation_nll(lm, [prompt, prompt], [reply, " "])
    ids = lm.tokenizer(prompt)["input_ids"]
    c_ids = lm.tokenizer(reply, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # the same figure from full logits
        logp = torch.log_softmax(
            lm.model(input_ids=torch.tensor([ids + c_ids])).logits[0].float(), -1
        )
    full = -sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(c_ids))
    assert n == len(c_ids) and nll == pytest.approx(full, rel=1e-4)
    assert (zero, none) == (0.0, 0)
    # the right article in the prompt makes its summary more likely than an unrelated prompt does
    other = continuation_nll(lm, ["[Article]: zq xv qqj vvk\n[Summary]:"], [reply])[0]
    assert other[1] == n and other[0] > nll
    with pytest.raises(InputError, match="must align"):
        continuation_nll(lm, [prompt], [])


def test_a_task_writes_the_reference_reply_in_each_prompt_layout() -> None:
    from prompts import load_task

    task = load_task("news_riddle/one_step")
    values = {"title": "T", "text": "X", "summary": "S", "riddle": "R", "answer": "A"}
    assert task.reference_reply(values, chat=False) == " S\n[Riddle]: R\n[Answer]: A"
    assert task.reference_reply(values, chat=True) == "Summary: S\nRiddle: R\nAnswer: A"
    assert task.reference_reply({"title": "T"}, chat=False) is None  # missing values


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_files_groups_by_strategy_and_scores_a_copy_best(
    tmp_path: Path, articles: list[dict]
) -> None:
    from llmapps.evaluate.files import evaluate_files

    refs = _write_jsonl(tmp_path / "refs.jsonl", articles[:4])
    preds = [
        {
            "id": a["id"],
            "strategy": "copy",
            "summary": a["reference_summary"],
            "riddle": a["reference_riddle"],
            "answer": a["reference_answer"],
        }
        for a in articles[:4]
    ]
    preds += [
        {"id": a["id"], "strategy": "empty", "summary": "", "riddle": "", "answer": ""}
        for a in articles[:4]
    ]
    groups, scored, config = evaluate_files(
        _write_jsonl(tmp_path / "p.jsonl", preds), refs, app="news-riddle"
    )
    assert config.fields == ["answer", "riddle", "summary"] and config.primary_field == "riddle"
    assert groups["copy"]["rougeL_riddle"] == 1.0 and groups["copy"][
        "bleu_riddle"
    ] == pytest.approx(1.0)
    assert groups["copy"]["format_valid"] == 1.0 and groups["empty"]["format_valid"] == 0.0
    assert groups["empty"]["rougeL_riddle"] == 0.0 and groups["empty"]["solvability@1"] == 0.0
    assert groups["copy"]["semsim_riddle"] > 0.99
    assert len(scored) == 8 and all("metrics" in r for r in scored)


def test_evaluate_files_reports_bad_input(tmp_path: Path, articles: list[dict]) -> None:
    from llmapps.evaluate.files import evaluate_files

    refs = _write_jsonl(tmp_path / "refs.jsonl", articles[:2])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\nnot json\n{"no_id": 1}\n')
    with pytest.raises(InputError, match=r"2 bad line\(s\)"):
        evaluate_files(bad, refs)
    unknown = _write_jsonl(tmp_path / "u.jsonl", [{"id": "nope", "riddle": "r"}])
    with pytest.raises(InputError, match="no reference for id"):
        evaluate_files(unknown, refs, semantic=False)
    plain = _write_jsonl(tmp_path / "plain.jsonl", [{"id": "1", "riddle": "r"}])
    with pytest.raises(InputError, match="--fields"):
        evaluate_files(plain, plain)
    groups, _, _ = evaluate_files(plain, plain, fields=["riddle"], semantic=False)
    assert groups["predictions"]["rougeL_riddle"] == 1.0


def test_judge_grades_are_parsed_from_labels_json_or_nothing() -> None:
    from chains.judge import parse_grade

    assert parse_grade("4\nReason: fair and fun")["score"] == 4
    assert parse_grade("Score: 2\nReason: names it") == {
        "score": 2,
        "reason": "names it",
        "valid": True,
        "raw": "Score: 2\nReason: names it",
    }
    assert parse_grade('{"score": 5, "reason": "great"}')["score"] == 5
    assert parse_grade("no grade here")["score"] is None
    # constrained: a grade is labelled, out of five, or leads the reply; never a number in passing
    for text, score in (
        ("**4** - fair", 4),
        ("I give it 3/5.", 3),
        ("[Score 1-5]: 2", 2),
        ("Rating = 5", 5),
        ("The article names 3 towns.", None),
        ("2019 was dry", None),
        ("3.5 stars", None),
    ):
        assert parse_grade(text)["score"] == score, text


def test_the_judge_asks_again_strictly_when_a_reply_holds_no_grade() -> None:
    """Wiring only (fake models stand in for a model that ignores the format)."""
    from langchain_core.language_models import FakeListLLM
    from langchain_core.runnables import RunnableLambda

    from chains.judge import GradeWithRetry

    def fake(*replies: str):
        return RunnableLambda(lambda x: x["riddle"]) | FakeListLLM(responses=list(replies))

    first = fake("Score: 4\nReason: fair", "What a lovely riddle", "Hmm")
    item = {"title": "T", "text": "X", "riddle": "R", "answer": "A"}
    got = GradeWithRetry(first, fake("2", "no idea")).batch([item] * 3)
    assert [g["score"] for g in got] == [4, 2, None] and [g["attempts"] for g in got] == [1, 2, 2]
    assert got[2]["raw"] == "Hmm"  # nothing graded: the first reply is kept
    assert GradeWithRetry(fake("5"), fake("1")).invoke(item)["score"] == 5


def test_the_judge_decodes_a_grade_under_constraint_when_no_reply_holds_one(tiny_base: str) -> None:
    """Both replies gradeless (fakes), then the real local model picks the likeliest digit."""
    import torch
    from langchain_core.language_models import FakeListLLM
    from langchain_core.runnables import RunnableLambda

    from chains.judge import GradeWithRetry, constrained_grade
    from llmapps.models.local import load_local_model

    lm = load_local_model(tiny_base)
    prompt = "[Riddle]: I span the water.\n[Score 1-5]:"
    strict = RunnableLambda(lambda x: prompt) | FakeListLLM(responses=["no idea"])
    first = RunnableLambda(lambda x: x["riddle"]) | FakeListLLM(responses=["Hmm"])
    got = GradeWithRetry(first, strict, lm).invoke({"riddle": "R"})
    assert got["constrained"] and got["attempts"] == 3 and got["valid"]
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([lm.tokenizer(prompt)["input_ids"]])).logits[0, -1]
    digits = {
        d: max(
            float(logits[t[0]])
            for f in (str(d), f" {d}")
            if len(t := lm.tokenizer(f, add_special_tokens=False)["input_ids"]) == 1
        )
        for d in range(1, 6)
    }
    assert got["score"] == constrained_grade(lm, prompt) == max(digits, key=digits.get)


def test_judge_rows_on_a_real_strategy_skips_failed_rows(
    tiny_instruct: str, articles: list[dict]
) -> None:
    from llmapps.apps import load_chain
    from llmapps.evaluate.judge import judge_rows

    judge = load_chain("riddle-judge", "zero-shot", instruct_model=tiny_instruct, max_new_tokens=8)
    rows = [
        {"riddle": articles[0]["reference_riddle"], "answer": articles[0]["reference_answer"]},
        {"error": "BackendError: down"},
    ]
    verdicts = judge_rows(judge, articles[:2], rows)
    assert verdicts[1] == {"judge_score": None}
    assert "judge_reason" in verdicts[0]  # a tiny model rarely grades; the row is still judged
    assert verdicts[0]["judge_score"] is None or 1 <= verdicts[0]["judge_score"] <= 5


def test_human_sheet_round_trip_unblinds_win_rates_and_agreement(
    tmp_path: Path, articles: list[dict]
) -> None:
    from llmapps.evaluate.human import cohen_kappa, export_sheet, import_ratings

    outputs = {
        name: {a["id"]: {"riddle": f"riddle {n} of {a['id']}", "answer": "x"} for a in articles[:4]}
        for n, name in enumerate(("zzgood", "zzbad"))
    }
    paths = export_sheet(
        outputs, articles[:4], tmp_path / "sheet", fields=["riddle", "answer"], seed=1
    )
    assert "riddle 0 of" in paths["html"].read_text() and "riddle 1 of" in paths["html"].read_text()
    sheet = paths["csv"].read_text()
    assert "zzgood" not in sheet and "zzbad" not in sheet  # blinded: names only in the key
    key = json.loads(paths["key"].read_text())["items"]
    sides = {key[i]["A"] for i in key}
    assert sides == {"zzgood", "zzbad"}  # the shuffle shows each strategy on both sides
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["preference"] == "" for r in rows)
    # two raters prefer "zzgood"; the second calls one item a tie
    for rater, tie_at in (("ann", None), ("bob", rows[0]["item"])):
        filled = []
        for r in rows:
            good_side = "A" if key[r["item"]]["A"] == "zzgood" else "B"
            filled.append(
                {**r, "preference": "tie" if r["item"] == tie_at else good_side, "rater": rater}
            )
        with (tmp_path / f"{rater}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(filled)
    report = import_ratings([tmp_path / "ann.csv", tmp_path / "bob.csv"], paths["key"])
    assert report["ratings"] == 8 and report["raters"] == ["ann", "bob"]
    assert report["win_rate"]["zzgood"] == pytest.approx(7.5 / 8)
    assert report["agreement"]["percent"] == pytest.approx(0.75)
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    bad = tmp_path / "bad.csv"
    bad.write_text("item,preference,rater\nq0001,maybe,ann\n")
    with pytest.raises(InputError, match="not A, B or tie"):
        import_ratings([bad], paths["key"])
    with pytest.raises(InputError, match="two strategies or more"):
        export_sheet({"one": {}}, articles[:1], tmp_path / "x", fields=["riddle"])


def test_the_core_evaluation_and_bench_import_no_app_code() -> None:
    root = Path(__file__).resolve().parent.parent / "llmapps"
    for folder in ("evaluate", "bench"):
        for path in (root / folder).glob("*.py"):
            text = path.read_text()
            for banned in (
                "import chains",
                "from chains",
                "import prompts",
                "from prompts",
                "finetune",
            ):
                assert banned not in text, f"{path} mentions {banned!r}"
