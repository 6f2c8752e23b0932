"""Customer attributes: the customers source and the purchase lines, their contract, profiles and model use."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from conftest import hand_config, hand_frame
from segml.config import AttributeSpec
from segml.errors import ConfigError, InputDataError
from segml.profiles import attribute_profiles
from segml.segmentation import prepare_purchases

# The hand-worked purchases have customers A, B, C (segmented), D (only a return) and E (net
# spend below zero): all five are customers of the purchases.
CUSTOMERS_CSV = """id;country;born;household
A;Germany;1990-03-01;2
B; France ;1990-03-02;2,5
C;NULL;31/02/1990;3
;Spain;1980-01-01;1
B;Italy;1970-01-01;4
Z;Italy;1970-01-01;4
D;{long};2030-01-01;
"""

CUSTOMER_ATTRIBUTES = {"country": {"column": "country"},
                       "age": {"column": "born", "type": "date"},
                       "household": {"column": "household", "type": "number"}}


def customers_config(path, **extra):
    return hand_config(customers={"path": str(path), "id": "id", "csv": {"delimiter": ";"},
                                  "attributes": CUSTOMER_ATTRIBUTES, **extra})


def test_attributes_from_a_customers_file_keep_good_values_and_count_bad_ones_by_reason(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text(CUSTOMERS_CSV.format(long="x" * 201))
    found = prepare_purchases(customers_config(path), frame=hand_frame()).attributes

    values = found.values
    assert values.index.tolist() == ["A", "B", "C", "D", "E"]
    assert values["country"].tolist()[:2] == ["Germany", "France"]  # trimmed; the first row of B is used
    assert values["age"].tolist()[:2] == [34, 33]  # born 1 March 1990: 34 on 1 March 2024; a day later: 33
    assert values["household"].iloc[0] == 2.0
    assert values.loc[["C", "D", "E"], "country"].isna().all() and values.loc[["C", "D", "E"], "age"].isna().all()

    counts = {(r.attribute, r.reason): r.customers for r in found.counts.itertuples()}
    assert counts == {
        ("*", "missing_customer_id"): 1, ("*", "duplicate_customer_id"): 1, ("*", "unknown_customer_id"): 1,
        ("*", "no_customer_row"): 1,                                     # E has no row
        ("country", "ok"): 2, ("country", "missing_value"): 1,           # C: NULL
        ("country", "value_too_long"): 1,                                # D: 201 characters
        ("age", "ok"): 2, ("age", "unparseable_date"): 1,                # C: 31/02/1990
        ("age", "implausible_date"): 1,                                  # D: born after the as-of date
        ("household", "ok"): 2, ("household", "missing_value"): 1,       # D: empty
        ("household", "non_numeric_value"): 1,                           # B: 2,5 with decimal '.'
    }
    problems = found.problems.set_index(["attribute", "reason"])
    assert problems.loc[("age", "unparseable_date"), "value"] == "31/02/1990"
    assert problems.loc[("*", "unknown_customer_id"), "customer_id"] == "Z"


def test_a_decimal_comma_and_a_date_format_are_honoured(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("id;country;born;household\nA;DE;01.03.1990;2,5\n")
    found = prepare_purchases(customers_config(path, decimal=",", date_format="%d.%m.%Y"),
                              frame=hand_frame()).attributes
    assert found.values.loc["A", "household"] == 2.5 and found.values.loc["A", "age"] == 34


def test_a_missing_column_of_the_customers_source_names_it_and_the_key(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("id;land;born;household\nA;DE;1990-01-01;1\n")
    with pytest.raises(InputDataError, match=r"column 'country' not found \(set customers.attributes.country."
                                             r"column\); its columns are \['id', 'land', 'born', 'household'\]"):
        prepare_purchases(customers_config(path), frame=hand_frame())


def hand_lines_with_country() -> pd.DataFrame:
    lines = hand_frame()
    lines["Country"] = ["Germany", "Germany", "Spain", "Portugal",  # A: O2 (15 Feb) is its latest purchase;
                        "France", "Belgium",                           # B: O4 is on the as-of date, outside
                        "", "NULL",                                    # C: no value on any line
                        "Denmark", "Norway", "Norway",                 # D: a return is a used line; E
                        "Italy", "Italy", "Italy", "Italy", "Italy", "Italy", "Italy", "Italy",  # rejected lines
                        "France"]                                      # the duplicate of B's O3
    lines["Age"] = ["40", "40", "abc", "40", "41", "41", None, None, "x", "30", "30", *["50"] * 8, "41"]
    return lines


def test_attributes_from_purchase_lines_take_the_latest_used_line_and_count_missing_ones():
    config = hand_config(data__attributes={"country": "Country", "age": {"column": "Age", "type": "number"}})
    found = prepare_purchases(config, frame=hand_lines_with_country()).attributes
    # A's latest used line is O2 (2024-02-15); its cancellation CO1 (5 Jan) and rejected lines (Italy) do not count.
    assert found.values["country"].dropna().to_dict() == {"A": "Spain", "B": "France", "D": "Denmark",
                                                          "E": "Norway"}
    assert pd.isna(found.values.loc["C", "country"])
    assert np.isnan(found.values.loc["A", "age"]) and found.values.loc["B", "age"] == 41.0
    counts = {(r.attribute, r.reason): r.customers for r in found.counts.itertuples()}
    assert counts == {("country", "ok"): 4, ("country", "missing_value"): 1,
                      ("age", "ok"): 2, ("age", "missing_value"): 1, ("age", "non_numeric_value"): 2}
    assert set(found.counts["source"]) == {"purchase lines"}


def test_a_purchase_line_attribute_column_that_is_missing_is_named():
    config = hand_config(data__attributes={"country": "Land"})
    with pytest.raises(InputDataError, match=r"column 'Land' not found \(set data.attributes.country.column\)"):
        prepare_purchases(config, frame=hand_frame())


def test_ages_and_months_are_whole_units_before_the_as_of_date():
    from segml.attributes import type_attributes

    raw = pd.DataFrame({"id": ["a", "b", "c", "d"],
                        "d": ["2000-03-01", "2000-03-02", "2023-12-31", "2024-02-29"]})
    specs = {"years": AttributeSpec(column="d", type="date"), "months": AttributeSpec(column="d", type="date",
                                                                                     unit="months")}
    values = type_attributes(raw, specs, dt.date(2024, 3, 1), pd.Index(["a", "b", "c", "d"]), id_column="id").values
    assert values["years"].tolist() == [24, 23, 0, 0]
    assert values["months"].tolist() == [288, 287, 2, 0]  # 31 Dec to 1 Mar: two whole months (Jan, Feb)


# Profiles, worked out by hand: S1 has 4 customers (DE, DE, FR, none), S2 has 6 (FR, FR, FR, BE, DE,
# IT); the whole base of 10 holds DE 3, FR 4, BE 1, IT 1 and one without a country.
PROFILE_FRAME = pd.DataFrame({
    "segment_id": ["S1"] * 4 + ["S2"] * 6, "segment_name": ["Loyal"] * 4 + ["Lost"] * 6,
    "country": ["DE", "DE", "FR", None, "FR", "FR", "FR", "BE", "DE", "IT"],
    "age": [20, 30, 40, None, 50, 60, 70, 80, 90, 100],
})


def test_profile_shares_and_indices_worked_out_by_hand():
    table = attribute_profiles(PROFILE_FRAME, {"country": "category", "age": "date"}, top=2)
    country = table[table["attribute"] == "country"].set_index(["segment_id", "category"])
    # S1: DE 2 of 4 = 0.5 against 3 of 10 = 0.3 in the base -> index 100 x 0.5 / 0.3 = 166.7.
    assert country.loc[("S1", "DE"), ["customers", "share", "base_share"]].tolist() == [2, 0.5, 0.3]
    assert country.loc[("S1", "DE"), "index"] == pytest.approx(166.667, abs=1e-3)
    assert country.loc[("S1", "FR"), "share"] == 0.25 and country.loc[("S1", "FR"), "index"] == 62.5
    assert country.loc[("S1", "(missing)"), "share"] == 0.25 and country.loc[("S1", "(missing)"), "base_share"] == 0.1
    # S2: FR 3 of 6, then BE, DE and IT with one each: BE comes first by name; DE and IT are "(other)",
    # whose base share is theirs (DE 3 + IT 1 of 10).
    assert country.loc["S2"].index.tolist() == ["FR", "BE", "(other)"]
    assert country.loc[("S2", "(other)"), ["customers", "share", "base_share"]].tolist() == [2, 2 / 6, 0.4]
    for segment in ("S1", "S2"):
        assert country.loc[segment, "share"].sum() == pytest.approx(1.0)
    age = table[table["attribute"] == "age"].set_index("segment_id")
    # S1 ages 20, 30, 40 (one missing): quartiles 25, 30, 35; S2 50..100: 62.5, 75, 87.5; base median 60.
    assert age.loc["S1", ["customers", "share", "q1", "median", "q3", "base_median"]].tolist() == [
        3, 0.75, 25.0, 30.0, 35.0, 60.0]
    assert age.loc["S2", ["q1", "median", "q3"]].tolist() == [62.5, 75.0, 87.5]


def test_a_numeric_attribute_can_be_a_model_feature_and_customers_without_it_are_excluded(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text(CUSTOMERS_CSV.format(long="x"))
    config = customers_config(path).model_copy(update={"features": ["recency_days", "monetary", "age"]})
    purchases = prepare_purchases(config, frame=hand_frame())
    assert purchases.features.index.tolist() == ["A", "B"]  # C's birth date is unparseable
    assert purchases.features["age"].tolist() == [34.0, 33.0]
    assert purchases.excluded.set_index("customer_id").loc["C", "reason"] == "missing_attribute"


BAD_ATTRIBUTES = [
    ({"features": ["recency_days", "country"]}, "features lists 'country', a category attribute: categories "
                                                "describe segments but stay out of the distance"),
    ({"attributes": {"Country Name": "Country"}}, "attribute name 'Country Name' must be 1 to 63 lowercase"),
    ({"attributes": {"monetary": "Spend"}}, "attribute name 'monetary' is taken by a column"),
    ({"attributes": {"country": {"column": "C", "type": "category", "unit": "months"}}},
     "'unit' applies to date attributes only"),
    ({"engine": "spark"}, "not supported by the Spark engine yet"),
]


@pytest.mark.parametrize("change, message", BAD_ATTRIBUTES, ids=[m[:30] for _, m in BAD_ATTRIBUTES])
def test_each_bad_attribute_setting_gets_its_message(change, message):
    from segml.config import parse_config

    raw = {"data": {"path": "x.csv", "columns": {"customer_id": "a", "timestamp": "b", "amount": "c"},
                    "attributes": change.pop("attributes", {"country": "Country"})}, **change}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_attributes_from_a_database_table_with_typed_columns(backend, tmp_path, request):
    import uuid

    import sqlalchemy as sa

    table = f"customers_{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'shop.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE {table} (id VARCHAR(10), country VARCHAR(50), born DATE, "
                                   "household INTEGER)")
        connection.exec_driver_sql(f"INSERT INTO {table} VALUES ('A', 'Germany', '1990-03-01', 2), "
                                   "('B', ' France ', '1990-03-02', NULL), ('Q', 'Spain', '1980-01-01', 1)")
    try:
        config = hand_config(customers={"url": url, "table": table, "id": "id", "attributes": CUSTOMER_ATTRIBUTES})
        found = prepare_purchases(config, frame=hand_frame()).attributes
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP TABLE {table}")
        engine.dispose()
    assert found.values.loc["A"].tolist() == ["Germany", 34, 2.0]
    assert found.values.loc["B", "country"] == "France" and found.values.loc["B", "age"] == 33
    counts = {(r.attribute, r.reason): r.customers for r in found.counts.itertuples()}
    assert counts[("*", "unknown_customer_id")] == 1 and counts[("*", "no_customer_row")] == 3
    assert counts[("household", "missing_value")] == 1


def test_segments_and_their_catalogue_carry_the_medians_of_model_attributes():
    from segml.config import parse_config
    from segml.identity import assign_identities
    from segml.sample import SAMPLE_CONFIG, generate_customers, generate_purchases
    from segml.segmentation import segment_customers

    lines, truth = generate_purchases(n_customers=400, seed=2, messy=False)
    ages = generate_customers(truth, seed=2, messy=False).set_index("customer_id")["birth_date"]
    config = parse_config({**{k: v for k, v in SAMPLE_CONFIG.items() if k != "customers"},
                           "features": ["recency_days", "frequency", "monetary", "age"],
                           "data": {**SAMPLE_CONFIG["data"], "attributes": {"age": {"column": "born", "type": "date"}}},
                           "quality": {"stability_resamples": 0}, "model": {"n_clusters": 5}})
    lines["born"] = lines["customer_id"].map(ages)
    purchases = prepare_purchases(config, frame=lines.astype(str))
    result = segment_customers(purchases.features, config, purchases.report.as_of)
    assert "median_age" in result.segments and result.segments["median_age"].between(18, 71).all()
    identity = assign_identities(result.segments, None, ["recency_days", "frequency", "monetary", "age"],
                                 result.model.transform, 1.0, purchases.report.as_of)
    assert identity.catalogue.columns.tolist()[-2:] == ["median_age", "previous_names"]
