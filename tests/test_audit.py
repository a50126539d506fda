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
