"""Campaign lists: the condition grammar, and injection attempts that must change nothing."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from segml.publish import create_engine, publish_assignments, read_current
from segml.targeting import Comparison, ConditionError, UnknownSegmentError, parse_condition, select_customers
from test_publish import CATALOGUE, assignments, engine  # noqa: F401 - SQLite and PostgreSQL


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


# Customer attributes: published as typed columns and targeted with text values bound as parameters.
ATTRIBUTES = {"country": "category", "age": "date"}
COUNTRIES = ["Germany", "France", "Belgium", "O'Brien Isle", "Deutschland", None]
AGES = [25, 34, 35, 40, 24, None]


@pytest.fixture
def with_attributes(engine):  # noqa: F811
    frame = assignments(6).assign(country=COUNTRIES, age=pd.array(AGES, dtype="Int64"))
    publish_assignments(engine, "shop", dt.date(2024, 1, 1), frame, CATALOGUE, "run-1", 1, attributes=ATTRIBUTES)
    return engine


def test_attributes_are_published_as_typed_columns_and_read_back(with_attributes):
    import sqlalchemy as sa

    columns = {c["name"]: c["type"] for c in sa.inspect(with_attributes).get_columns("segml_assignments")}
    assert isinstance(columns["country"], sa.String) and columns["country"].length == 200
    assert isinstance(columns["age"], sa.Integer)
    current = read_current(with_attributes, "shop")
    assert current["country"].tolist()[:5] == COUNTRIES[:5] and current["country"].isna().iloc[5]
    assert current["age"].tolist()[:5] == AGES[:5]


def test_a_later_publication_without_the_attributes_leaves_them_empty(with_attributes):
    later = dt.date(2024, 2, 1)
    publish_assignments(with_attributes, "shop", later, assignments(2, later), CATALOGUE, "run-2", 2)
    assert read_current(with_attributes, "shop")["country"].isna().all()


def test_an_attribute_published_with_another_type_is_refused(with_attributes):
    from segml.errors import SegmlError

    frame = assignments(1).assign(age=["young"])
    with pytest.raises(SegmlError, match="'age' is published as a date column, now declared as category"):
        publish_assignments(with_attributes, "shop", dt.date(2024, 2, 1), frame, CATALOGUE, "run-2", 2,
                            attributes={"age": "category"})


@pytest.mark.parametrize("condition, expected", [
    ("country = 'Germany'", ["c0000000"]),
    ("country in ('France', 'Belgium')", ["c0000001", "c0000002"]),
    ("country not in ('France', 'Belgium')", ["c0000000", "c0000003", "c0000004"]),  # NULL is in no list
    ("country = 'O''Brien Isle'", ["c0000003"]),
    ("age between 25 and 34", ["c0000000", "c0000001"]),
    ("country != 'Germany' and age >= 35", ["c0000002", "c0000003"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_targeting_by_text_and_numeric_attributes(with_attributes, condition, expected):
    chosen = select_customers(with_attributes, "shop", [], [condition], ATTRIBUTES)
    assert chosen["customer_id"].tolist() == expected


def test_text_values_are_bound_parameters_never_sql(with_attributes):
    import sqlalchemy as sa

    statements = []
    sa.event.listen(with_attributes, "before_cursor_execute",
                    lambda conn, cursor, statement, parameters, context, many: statements.append(
                        (statement, parameters)))
    value = "x' OR '1'='1"
    chosen = select_customers(with_attributes, "shop", [], [f"country = '{value.replace(chr(39), chr(39) * 2)}'"],
                              ATTRIBUTES)
    assert chosen.empty  # the whole text is one value, compared as it is
    statement, parameters = next((s, p) for s, p in statements if "segml_current_assignments" in s and "country" in s)
    assert "'1'" not in statement and value in (parameters.values() if isinstance(parameters, dict) else parameters)


TEXT_INJECTIONS = [
    ("country = 'Germany'; DROP TABLE segml_assignments", "unexpected ';'"),
    ("country = 'Germany' OR '1'='1'", "expected 'and' before 'OR'"),
    ("country = 'Germany\\' OR 1=1 --'", "unexpected '-'"),          # a backslash escapes nothing
    ("country = 'Germany", "this text value has no closing quote"),
    ("country = \u2019Germany\u2019", "unexpected '\u2019'"),       # typographic quotes are not quotes
    ("country = \uff07Germany\uff07", "unexpected '\uff07'"),       # nor are full-width ones
    ("c\u043euntry = 'Germany'", "unexpected '\u043e'"),            # a Cyrillic o in the column name
    ("country = 'Ger\u200bmany'", "invisible or control character U\\+200B"),
    ("country = 'Ger\x00many'", "invisible or control character U\\+0000"),
    ("country = '" + "G" * 10_000 + "'", "this text value has 10,000 characters; attribute values have at most 200"),
    ("country > 'Germany'", "country holds text: compare it with =, != or in"),
    ("country in ('France' 'Belgium')", "expected '\\)' to close the list"),
    ("age = '34'", "age takes a number, not \"'34'\""),
    ("country = Germany", "country takes a text in single quotes"),
]


@pytest.mark.parametrize("condition, message", TEXT_INJECTIONS, ids=[c[:40] for c, _ in TEXT_INJECTIONS])
def test_text_values_outside_the_grammar_are_refused_and_change_nothing(with_attributes, condition, message):
    before = read_current(with_attributes, "shop")
    with pytest.raises(ConditionError, match=message):
        select_customers(with_attributes, "shop", [], [condition], ATTRIBUTES)
    assert read_current(with_attributes, "shop").equals(before)


def test_attribute_columns_join_a_published_table_whose_view_a_crm_reads(engine):  # noqa: F811
    publish_assignments(engine, "shop", dt.date(2024, 1, 1), assignments(3), CATALOGUE, "run-1", 1)
    with engine.begin() as connection:  # a CRM's own view on segml's current view
        connection.exec_driver_sql("CREATE VIEW crm_feed AS SELECT customer_id, segment_id "
                                   "FROM segml_current_assignments")
    later = dt.date(2024, 2, 1)
    frame = assignments(4, later).assign(country=["DE", "FR", None, "BE"], age=pd.array([30, None, 40, 50], "Int64"))
    publish_assignments(engine, "shop", later, frame, CATALOGUE, "run-2", 2, attributes=ATTRIBUTES)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM crm_feed").scalar_one() == 4
        assert connection.exec_driver_sql("SELECT count(*) FROM segml_current_assignments "
                                          "WHERE country = 'FR'").scalar_one() == 1
