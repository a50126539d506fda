"""The Rate tab's logic without a browser (``llmapps.ui.rating``): what is asked next, skip and
undo from the journal, pairs with both sides invalid never asked, win rates with intervals and a
Bradley–Terry ranking. The sheets are real exported files; the outputs are written rows."""

from __future__ import annotations

import pytest

from llmapps.errors import InputError
from llmapps.evaluate.human import RatingStore, export_sheet
from llmapps.ui.rating import MIN_RATINGS, RatingFlow, bradley_terry, win_table


def _row(riddle: str, valid: bool = True) -> dict:
    return {"riddle": riddle, "answer": "x" if riddle else "", "valid": valid}


@pytest.fixture
def flow(tmp_path):
    samples = [{"id": f"s{i}", "title": f"T{i}", "text": "word " * 300} for i in range(4)]
    outputs = {
        "good": {s["id"]: _row(f"good riddle {s['id']}") for s in samples},
        "bad": {s["id"]: _row("", valid=False) for s in samples},
        "worse": {s["id"]: {"error": "endpoint refused"} for s in samples},
    }
    export_sheet(outputs, samples, tmp_path, fields=("riddle", "answer"))
    store = RatingStore(tmp_path)
    flow = RatingFlow(store, outputs, {s["id"]: s for s in samples}, ("riddle", "answer"))
    flow.outputs = outputs  # for a test that reopens it
    return flow


def test_pairs_with_both_sides_invalid_are_recorded_and_never_asked(flow):
    # bad vs worse on 4 samples: neither side has anything to rate
    assert len(flow.both_invalid) == 4 and len(flow.store.items) == 12
    journal = flow.path.read_text().splitlines()
    assert len(journal) == 4 and all('"both-invalid"' in line for line in journal)
    again = RatingFlow(flow.store, flow.outputs, {}, ("riddle",))  # reopened: not recorded twice
    assert len(again.path.read_text().splitlines()) == 4
    asked = []
    while (item := flow.next_item("ann")) is not None:
        asked.append(item["item"])
        flow.act("ann", item["item"], "A")
    assert len(asked) == 8 and not set(asked) & flow.both_invalid
    assert flow.counts("ann") == {"pairs": 12, "rated": 8, "skipped": 0, "both_invalid": 4}


def test_skip_undo_and_both_bad(flow):
    first = flow.next_item("ann")["item"]
    assert flow.act("ann", first, "skip") == f"saved {first}: skip"
    second = flow.next_item("ann")["item"]
    assert second != first and flow.counts("ann")["skipped"] == 1
    assert flow.act("ann", None, "undo") == f"undid skip on {first}"
    assert flow.next_item("ann")["item"] == first
    flow.act("ann", first, "both-bad", "empty riddles")
    (rating,) = flow.store.ratings()
    assert rating["preference"] == "tie" and rating["item"] == first
    assert "both bad; empty riddles" in flow.store.path.read_text()
    flow.act("ann", second, "B")
    assert flow.act("ann", None, "undo") == f"undid B on {second}"
    assert [r["item"] for r in flow.store.ratings()] == [first]  # B withdrawn from the store
    assert flow.next_item("ann")["item"] == second
    with pytest.raises(InputError, match="type your name"):
        flow.act(" ", first, "A")
    with pytest.raises(InputError, match="is not a rating"):
        flow.act("ann", first, "maybe")
    with pytest.raises(InputError, match="nothing to undo"):
        flow.act("bob", None, "undo")


def test_the_full_article_is_offered_not_the_excerpt(flow):
    item = flow.next_item("ann")
    assert len(flow.article(item["item"])) > len(item["context"])


def test_win_rates_carry_intervals_a_small_sample_note_and_a_ranking(flow):
    assert win_table(flow.store) == ([], "no ratings yet")
    while (item := flow.next_item("ann")) is not None:
        key = flow.store.key[item["item"]]
        side = "A" if key["A"] == "good" else "B"  # ann always prefers "good"
        flow.act("ann", item["item"], side)
    rows, note = win_table(flow.store)
    by = {r[1]: r for r in rows}
    assert rows[0][1] == "good" and by["good"][2] == "1.00" and by["good"][4] == 8
    assert by["good"][6] == f"too few ratings (under {MIN_RATINGS})"
    assert by["bad"][2] == "0.00" and by["bad"][3] == "0.00 – 0.00"
    assert "95% bootstrap" in note and "Bradley–Terry" in note


def test_bradley_terry_orders_a_chain_of_wins():
    results = [("a", "b", 1.0)] * 3 + [("b", "c", 1.0)] * 3 + [("a", "c", 0.5)]
    s = bradley_terry(results)
    assert s["a"] > s["b"] > s["c"]
    assert sum(s.values()) == pytest.approx(3.0, abs=1e-3)
    assert bradley_terry([]) == {}
