"""Campaign lists: the condition grammar, and injection attempts that must change nothing."""

from __future__ import annotations

import datetime as dt

import pytest

from segml.publish import create_engine, publish_assignments, read_current
from segml.targeting import Comparison, ConditionError, UnknownSegmentError, parse_condition, select_customers
from test_publish import CATALOGUE, assignments


def test_conditions_parse_into_comparisons():
    assert parse_condition("recency_days between 60 and 180 and monetary > 200") == [
        Comparison("recency_days", ">=", 60.0), Comparison("recency_days", "<=", 180.0),
        Comparison("monetary", ">", 200.0)]
    assert parse_condition("as_of >= 2024-01-01") == [Comparison("as_of", ">=", dt.date(2024, 1, 1))]
    assert parse_condition("  FREQUENCY != 3 ") == [Comparison("frequency", "!=", 3.0)]


INJECTIONS = [
    ("monetary > 0; DROP TABLE segml_assignments", "unexpected ';'"),
    ("monetary > 0 -- and more", "unexpected '-'"),
    ("monetary > 0 /* x */", "unexpected '/'"),
    ("segment_name = 'x' OR 1=1", "'segment_name' is not a column that can be compared"),
    ("segment_name = 5", "'segment_name' is not a column that can be compared"),
    ("monetary > '0'", "monetary takes a number, not \"'0'\""),
    ("__import__('os').system('rm -rf /')", "unexpected '\\.'"),
    ("__import__ > 1", "'__import__' is not a column"),
    ("monetary > 1 or 1 = 1", "expected 'and' before 'or'"),
    ("monetary > 0 and", "a comparison is missing after 'and'"),
    ("recency_days between 1 180", "between needs 'and'"),
    ("as_of > 100", "as_of takes a date"),
    ("monetary > 2024-01-01", "monetary takes a number"),
    ("as_of > 2024-02-30", "is not a calendar date"),
    ("customer_id = 5", "'customer_id' is not a column"),
]


@pytest.mark.parametrize("condition, message", INJECTIONS, ids=[c for c, _ in INJECTIONS])
def test_anything_outside_the_grammar_is_refused_with_a_pointer(condition, message):
    with pytest.raises(ConditionError, match=message) as info:
        parse_condition(condition)
    assert "^" in str(info.value) or "missing" in str(info.value)


def test_the_pointer_sits_under_the_offending_part():
    with pytest.raises(ConditionError) as info:
        parse_condition("monetary > 0; DROP TABLE x")
    _, text, caret = str(info.value).split("\n")
    assert text.strip() == "monetary > 0; DROP TABLE x"
    assert caret.index("^") - 2 == text.index(";") - 2


@pytest.fixture
def published(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    frame = assignments(6)
    frame["recency_days"] = [10, 70, 120, 200, 90, 150]
    frame["monetary"] = [500.0, 250.0, 150.0, 900.0, 300.0, 210.0]
    frame["segment_id"] = ["S1", "S1", "S2", "S2", "S1", "S2"]
    frame["segment_name"] = ["Champions", "Champions", "Lost", "Lost", "Champions", "Lost"]
    publish_assignments(engine, "shop", dt.date(2024, 1, 1), frame, CATALOGUE, "run-1", 1)
    yield engine
    engine.dispose()


def test_selection_by_segment_and_conditions(published):
    chosen = select_customers(published, "shop", [], ["recency_days between 60 and 180 and monetary > 200"])
    assert chosen["customer_id"].tolist() == ["c0000001", "c0000004", "c0000005"]
    by_name = select_customers(published, "shop", ["Lost"], ["monetary > 200"])
    assert by_name["customer_id"].tolist() == ["c0000003", "c0000005"]
    by_id = select_customers(published, "shop", ["S1"], [])
    assert len(by_id) == 3


def test_injection_attempts_change_nothing(published):
    before = read_current(published, "shop")
    for condition, _ in INJECTIONS:
        with pytest.raises(ConditionError):
            select_customers(published, "shop", [], [condition])
    # Segment names are bound parameters too: a name that looks like SQL is an unknown segment.
    with pytest.raises(UnknownSegmentError):
        select_customers(published, "shop", ["x' OR '1'='1"], [])
    assert read_current(published, "shop").equals(before)


def test_a_misspelt_segment_is_an_error_listing_the_segments(published):
    with pytest.raises(UnknownSegmentError, match=r"'Champion' is not a segment id or name of the current 'shop' "
                                                  r"segmentation; its segments are S1 \(Champions\), S2 \(Lost\)"):
        select_customers(published, "shop", ["Champion", "S2"], [])


def test_the_list_keeps_the_published_types(published):
    chosen = select_customers(published, "shop", ["S1"], [])
    assert str(chosen["segment_changed"].dtype) == "boolean"
    assert chosen["as_of"].tolist() == [dt.date(2024, 1, 1)] * 3


def test_a_wrong_case_or_a_typo_gets_a_suggestion(published):
    with pytest.raises(UnknownSegmentError, match=r"did you mean 'champions' → 'Champions'; 'Lots' → 'Lost'"):
        select_customers(published, "shop", ["champions", "Lots"], [])


def test_nothing_published_yet_says_what_to_do(tmp_path):
    from segml.errors import SegmlError

    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(SegmlError, match="nothing is published for 'shop' yet"):
            select_customers(engine, "shop", [], [])
    finally:
        engine.dispose()
