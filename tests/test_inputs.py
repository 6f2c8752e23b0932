"""Input-side hardening: hostile or odd inputs become rejected lines with a reason or one clear error.

Each test builds a few lines whose right answer is known and checks that
segml gives it, rather than a silent reinterpretation, a crash or a hang.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segml.config import load_config, parse_config
from segml.contract import MAX_ID_LENGTH
from segml.errors import ConfigError, InputDataError
from segml.features import compute_features
from segml.segmentation import prepare_purchases
from segml.sources import connect, register_frame, register_source
from segml.validation import MAX_LINE_AMOUNT, classify_lines, rejected_lines

MINIMAL = "data:\n  path: p.csv\n  columns: {customer_id: c, timestamp: t, amount: a}\n"


# --- the configuration file --------------------------------------------------------------------------------------


def _load(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def _alias_bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, match", [
    (MINIMAL + "name: first\nname: second\n", r"c.yaml: line 5: the key 'name' is given twice .*first at line 4"),
    (MINIMAL + "window:\n  as_of: 2024-13-01\n",
     r"c.yaml: 1 problem .*\n  - window.as_of: .*month.* \(got '2024-13-01'\)$"),
    (MINIMAL + "naming: &n {rules: [*n]}\n", r"c.yaml: line 4: an alias refers to the value that contains it"),
    (MINIMAL + "x: " + "[" * 60 + "]" * 60 + "\n", r"c.yaml: line 4: nested more than 50 levels deep"),
    ("# " + "x" * 1_000_001 + "\n" + MINIMAL, r"c.yaml: 1,000,0[0-9]{2} characters; .* at most 1,000,000"),
], ids=["duplicate key", "impossible date", "recursive alias", "deep nesting", "huge file"])
def test_a_broken_configuration_file_fails_with_one_clear_message(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, text)


def test_an_alias_bomb_fails_at_once_instead_of_expanding(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"c.yaml: [0-9,]{14} values once its aliases .* at most 100,000"):
        _load(tmp_path, MINIMAL + _alias_bomb())
    assert time.perf_counter() - start < 1.0


def test_merge_keys_may_override_what_they_merge(tmp_path):
    text = MINIMAL + "x_defaults: &m {stability_resamples: 3}\n"
    with pytest.raises(ConfigError, match="x_defaults: unknown key"):  # the anchor's holder is not a key of segml
        _load(tmp_path, text)
    config = _load(tmp_path, MINIMAL + "quality: &q {stability_resamples: 3}\nmodel:\n  n_init: 2\n")
    assert config.quality.stability_resamples == 3


@pytest.mark.parametrize("name", ["..", ".", "a..b", "../outputs", "a/b", "a\\b", ".hidden", "-x", "x" * 101, ""])
def test_a_name_that_is_not_one_safe_folder_name_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match=r"name: needs 1 to 100 letters, digits"):
        _load(tmp_path, MINIMAL + f"name: '{name}'\n")


def test_a_plain_name_of_100_characters_is_fine(tmp_path):
    assert _load(tmp_path, MINIMAL + "name: " + "a.b-c_" + "x" * 94 + "\n").name.endswith("x")


# --- lines and their values ----------------------------------------------------------------------------------------


def _config(window=None, **data):
    """A configuration over the columns invoice, client, when, qty, price (all text)."""
    raw_data = {"path": "unused.csv", "timestamp_format": "%Y-%m-%d %H:%M",
                "columns": {"customer_id": "client", "timestamp": "when", "order_id": "invoice",
                            "quantity": "qty", "unit_price": "price"}}
    raw_data.update(data)
    return parse_config({"data": raw_data, "window": {"as_of": "2024-03-01"} if window is None else window})


def _lines(*rows, columns=("invoice", "client", "when", "qty", "price")):
    return pd.DataFrame(list(rows), columns=list(columns), dtype=object)


#: A line of customer B that is always fine, so that a run has something to use.
GOOD = ("G1", "B", "2024-02-01 10:00", "1", "10")


@pytest.mark.parametrize("price, settings, expected", [
    ("12,50", {}, None),                                   # not 1250: a comma is no decimal mark by default
    ("12,50", {"decimal": ","}, 12.5),
    ("1,2,3", {}, None),                                   # not 123: groups of three only
    ("1,2,3", {"decimal": ","}, None),
    ("1,234.5", {}, 1234.5),                               # the default thousands separator with decimal "."
    ("1,234,567.89", {}, 1234567.89),
    ("1,234", {"thousands": None}, None),                  # no thousands separator accepted
    ("1.234,5", {"decimal": ","}, 1234.5),                 # "." groups by default with decimal ","
    ("1.5", {"decimal": ","}, None),                       # a "." is no decimal mark there
    ("1 234,5", {"decimal": ",", "thousands": " "}, 1234.5),
    ("1'234.5", {"thousands": "'"}, 1234.5),
    ("1e3", {}, 1000.0),
    ("+.5", {}, 0.5),
    ("1_000", {}, None),                                   # DuckDB alone would read 1000
    ("1.5d", {}, None),                                    # Spark alone would read 1.5
    ("£12.50", {}, None),
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_a_text_number_reads_only_under_the_configured_convention(price, settings, expected):
    purchases = prepare_purchases(_config(**settings), frame=_lines(GOOD, ("O1", "A", "2024-02-02 10:00", "1", price)))
    if expected is None:
        assert purchases.report.rejected_by_reason == {"non_numeric_amount": 1}
        assert "A" not in purchases.features.index
    else:
        assert purchases.report.rows_rejected == 0
        assert purchases.features.loc["A", "monetary"] == pytest.approx(expected)


def test_decimal_and_thousands_cannot_be_the_same_mark():
    with pytest.raises(ConfigError, match=r"data: thousands and decimal are both ','; set data.thousands"):
        _config(decimal=",", thousands=",")


def test_text_null_markers_are_missing_values_not_customers():
    markers = ["NULL", "None", "nan", "NaN", "null", "N/A", "#N/A", " N/A "]
    frame = _lines(GOOD, *[(f"O{i}", marker, "2024-02-02 10:00", "1", "5") for i, marker in enumerate(markers)],
                   ("T1", "A", "NULL", "1", "5"), ("P1", "A", "2024-02-02 10:00", "1", "#N/A"))
    purchases = prepare_purchases(_config(), frame=frame)
    assert purchases.report.rejected_by_reason == {"missing_customer_id": 8, "missing_timestamp": 1,
                                                   "missing_amount": 1}
    assert list(purchases.features.index) == ["B"] and len(purchases.excluded) == 1  # A: all_lines_rejected


def test_null_markers_are_a_setting():
    frame = _lines(GOOD, ("O1", "-", "2024-02-02 10:00", "1", "5"), ("O2", "NULL", "2024-02-02 10:00", "1", "5"))
    purchases = prepare_purchases(_config(null_markers=["-"]), frame=frame)
    assert purchases.report.rejected_by_reason == {"missing_customer_id": 1}
    assert sorted(purchases.features.index) == ["B", "NULL"]


def test_a_nan_float_customer_id_is_missing_not_the_customer_nan(tmp_path):
    # pyarrow keeps NaN as NaN (pandas would write it as a null).
    table = pa.table({"cust": pa.array([17850.0, float("nan"), float("inf"), 12.0]),
                      "ts": pa.array([dt.datetime(2024, 1, d) for d in (1, 2, 3, 4)]),
                      "value": pa.array([10.0, 5.0, 5.0, 3.0])})
    pq.write_table(table, tmp_path / "lines.parquet")
    config = parse_config({"data": {"path": str(tmp_path / "lines.parquet"), "columns": {
        "customer_id": "cust", "timestamp": "ts", "amount": "value"}}, "window": {"as_of": "2024-02-01"}})
    purchases = prepare_purchases(config)
    assert purchases.report.rejected_by_reason == {"missing_customer_id": 2}
    assert sorted(purchases.features.index) == ["12", "17850"]


def test_a_value_too_large_for_one_line_is_rejected_so_no_sum_is_infinite():
    frame = _lines(GOOD, ("O1", "A", "2024-02-02 10:00", "1e200", "1e200"),   # the product overflows to inf
                   ("O2", "A", "2024-02-03 10:00", "2", "6e11"),              # 1.2e12: over the bound
                   ("O3", "C", "2024-02-03 10:00", "1", "9e11"),              # 9e11, twice: fine, the sum too
                   ("O4", "C", "2024-02-04 10:00", "1", "9e11"))
    purchases = prepare_purchases(_config(), frame=frame)
    assert purchases.report.rejected_by_reason == {"amount_out_of_range": 2}
    assert MAX_LINE_AMOUNT == 1e12
    assert np.isfinite(purchases.features.to_numpy(dtype=float)).all()
    assert purchases.features.loc["C", "monetary"] == pytest.approx(1.8e12)


def test_a_single_huge_amount_is_out_of_range_too():
    config = parse_config({"data": {"path": "x.csv", "columns": {"customer_id": "c", "timestamp": "t", "amount": "a"}},
                           "window": {"as_of": "2024-03-01"}})
    frame = pd.DataFrame({"c": ["A", "B", "B"], "t": ["2024-01-01"] * 3, "a": ["1e308", "-2e12", "7"]})
    assert prepare_purchases(config, frame=frame).report.rejected_by_reason == {"amount_out_of_range": 2}


def test_a_customer_whose_spend_is_not_finite_is_left_out_with_the_reason():
    con = connect()
    con.execute("""CREATE TABLE order_lines AS SELECT * FROM (VALUES
        ('A', 'o1', NULL, 1, DATE '2024-01-01', DATE '2024-01-01', 'inf'::DOUBLE),
        ('B', 'o2', NULL, 1, DATE '2024-01-02', DATE '2024-01-02', 5.0))
        AS t(customer_id, order_key, reason, lines, last_purchase, first_purchase, amount)""")
    features, excluded = compute_features(con, dt.date(2024, 2, 1))
    assert list(features.index) == ["B"]
    assert excluded.set_index("customer_id")["reason"].to_dict() == {"A": "non_finite_spend"}


def test_an_id_longer_than_the_published_column_is_rejected():
    frame = _lines(GOOD, ("O1", "x" * (MAX_ID_LENGTH + 1), "2024-02-02 10:00", "1", "5"),
                   ("O2", "é" * MAX_ID_LENGTH, "2024-02-02 10:00", "1", "5"))  # 200 characters, 400 bytes
    purchases = prepare_purchases(_config(), frame=frame)
    assert MAX_ID_LENGTH == 200
    assert purchases.report.rejected_by_reason == {"customer_id_too_long": 1}
    assert sorted(purchases.features.index) == ["B", "é" * MAX_ID_LENGTH]
    assert len(purchases.excluded) == 0  # an over-long id names no customer


def test_implausible_dates_are_rejected_and_never_move_the_default_as_of():
    frame = _lines(GOOD, ("O1", "A", "0001-01-01 00:00", "1", "5"), ("O2", "A", "1900-01-01 00:00", "1", "5"),
                   ("O3", "A", "2999-01-01 00:00", "1", "5"), ("O4", "A", "2024-02-10 10:00", "1", "5"))
    purchases = prepare_purchases(_config(window={}), frame=frame)
    assert purchases.report.rejected_by_reason == {"implausible_timestamp": 3}
    assert purchases.report.as_of == dt.date(2024, 2, 11)  # the day after O4, not after 2999


def test_plausible_dates_are_a_setting_and_the_default_latest_follows_the_day_of_the_run():
    frame = _lines(GOOD, ("O1", "A", "2019-12-31 23:59", "1", "5"), ("O2", "A", "2025-01-01 00:00", "1", "5"))
    config = _config(window={"as_of": "2026-01-01"}, plausible_dates=["2020-01-01", "2024-12-31"])
    assert prepare_purchases(config, frame=frame).report.rejected_by_reason == {"implausible_timestamp": 2}
    con = connect()
    register_frame(con, frame)
    default = _config(window={"as_of": "2026-01-01"})
    # Run on 2024-01-01, the last plausible day is 366 days later, 2025-01-01; a day earlier, 2024-12-31.
    assert classify_lines(con, default.data, default.window, today=dt.date(2024, 1, 1)).rows_rejected == 0
    assert classify_lines(con, default.data, default.window,
                          today=dt.date(2023, 12, 31)).rejected_by_reason == {"implausible_timestamp": 1}


def test_a_parquet_date_of_9999_12_31_is_rejected_without_a_crash(tmp_path):
    table = pa.table({"cust": ["A", "A", "B"], "day": pa.array([dt.date(2024, 1, 5), dt.date(9999, 12, 31),
                                                              dt.date(1, 1, 1)], pa.date32()),
                      "value": [10.0, 5.0, 7.0]})
    pq.write_table(table, tmp_path / "lines.parquet")
    config = parse_config({"data": {"path": str(tmp_path / "lines.parquet"), "columns": {
        "customer_id": "cust", "timestamp": "day", "amount": "value"}}})
    purchases = prepare_purchases(config)
    assert purchases.report.as_of == dt.date(2024, 1, 6)
    assert purchases.report.rejected_by_reason == {"implausible_timestamp": 2}
    assert purchases.rejected["line"].tolist() == [2, 3]


def test_duplicates_are_rejected_by_default_and_kept_on_request():
    twice = ("", "A", "2024-02-02 10:00", "1", "5")
    frame = _lines(GOOD, twice, twice, twice)
    columns = {"customer_id": "client", "timestamp": "when", "quantity": "qty", "unit_price": "price"}
    rejected = prepare_purchases(_config(columns=columns), frame=frame)
    assert rejected.report.rejected_by_reason == {"duplicate_line": 2} and rejected.report.duplicates_kept == 0
    assert rejected.features.loc["A", "monetary"] == 5
    kept = prepare_purchases(_config(columns=columns, duplicates="keep"), frame=frame)
    assert kept.report.rows_used == 4 and kept.report.rows_rejected == 0 and kept.report.duplicates_kept == 2
    assert kept.features.loc["A", "monetary"] == 15
    table = kept.report.as_frame()
    assert table.values.tolist()[:2] == [["used", "", 2], ["used", "duplicate_kept", 2]]
    assert table["lines"].sum() == kept.report.rows_read


def test_a_kept_duplicate_still_meets_the_later_checks_and_the_window():
    twice = ("C1", "A", "2024-02-02 10:00", "-1", "5")  # a return, twice
    late = ("L1", "A", "2024-03-05 10:00", "1", "5")    # after as-of, twice
    frame = _lines(GOOD, twice, twice, late, late)
    report = prepare_purchases(_config(duplicates="keep", returns={"policy": "exclude"}), frame=frame).report
    assert report.rejected_by_reason == {"return_excluded": 2}
    assert report.outside_by_reason == {"after_as_of": 2} and report.duplicates_kept == 0


def test_customers_seen_only_in_rejected_lines_are_left_out_with_a_reason():
    frame = _lines(GOOD, ("Z1", "Z", "2024-02-02 10:00", "1", "0"),       # Z: only a zero price
                   ("Y1", "Y", "garbage", "1", "5"),                      # Y: only an unparseable date...
                   ("Y2", "Y", "2024-05-01 10:00", "1", "5"),             # ... and a line after as-of
                   ("X1", "X", "2024-05-01 10:00", "1", "5"),             # X: only after as-of: not seen
                   ("N1", None, "2024-02-02 10:00", "1", "5"))            # no customer at all
    purchases = prepare_purchases(_config(), frame=frame)
    excluded = purchases.excluded.set_index("customer_id")
    assert excluded["reason"].to_dict() == {"Y": "all_lines_rejected", "Z": "all_lines_rejected"}
    assert (excluded["frequency"] == 0).all() and excluded["monetary"].isna().all()
    seen = {"B", "Y", "Z"}
    assert set(purchases.features.index) | set(excluded.index) == seen


def test_most_lines_outside_the_window_and_a_stale_as_of_are_warned_about(caplog):
    frame = _lines(GOOD, *[(f"O{i}", "A", "2021-06-01 10:00", "1", "5") for i in range(3)])
    with caplog.at_level(logging.WARNING, logger="segml.validation"):
        report = prepare_purchases(_config(window={"as_of": "2026-03-01", "lookback_days": 1000}),
                                   frame=frame).report
    assert len(report.warnings) == 2
    outside, stale = report.warnings
    assert outside.startswith("3 of 4 lines (75%) fall outside the window")
    assert "window.lookback_days (1000 days)" in outside
    assert "2026-03-01 is 759 days after the last valid purchase (2024-02-01)" in stale
    assert "set window.as_of to 2024-02-02" in stale
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][-2:] == [
        f"data contract: {w}" for w in report.warnings]
    assert prepare_purchases(_config(window={}), frame=frame).report.warnings == []


# --- CSV files -----------------------------------------------------------------------------------------------------

HEADER = "invoice,client,when,qty,price\n"


def _csv_purchases(tmp_path, text: str | bytes, name: str = "lines.csv", **data):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return prepare_purchases(_config(path=str(path), **data))


def test_malformed_csv_lines_are_rejected_lines_and_the_counts_still_add_up(tmp_path):
    text = (HEADER
            + "O1,A,2024-01-01 10:00,1,10\n"                       # line 1
            + "O2,A,2024-01-02 10:00,1,10,extra\n"                 # line 2: a field too many
            + '"O3\nsecond part",B,2024-01-03 10:00,1,10\n'        # line 3: a quoted line break is fine
            + "O4,B,2024-01-04 10:00\n"                            # line 4: fields missing
            + "O5,C," + "x" * 2_000_000 + ",1,10\n"                # line 5: over DuckDB's 2,000,000 bytes
            + "O6,C,2024-01-06 10:00,1,10\n"                       # line 6
            + 'O7,C,2024-01-07 10:00,1,"10\n')                     # line 7: the quote never closes
    purchases = _csv_purchases(tmp_path, text)
    report = purchases.report
    assert (report.rows_read, report.rows_used, report.rows_rejected) == (7, 3, 4)
    assert report.rejected_by_reason == {"malformed_line": 4}
    rejected = purchases.rejected
    assert rejected["line"].tolist() == [2, 4, 5, 7]
    assert rejected["line_text"].tolist()[:2] == ["O2,A,2024-01-02 10:00,1,10,extra", "O4,B,2024-01-04 10:00"]
    assert rejected["line_text"].iloc[2].startswith("O5,C,xxx") and rejected[["client", "when"]].isna().all().all()
    assert purchases.features["frequency"].to_dict() == {"A": 1, "B": 1, "C": 1}


def test_good_lines_keep_their_numbers_around_malformed_ones(tmp_path):
    rows = [f"O{i},A,2024-01-{i:02d} 10:00,1,0" for i in range(1, 10)]  # zero prices: each one rejected
    rows[2] += ",extra"
    rows[3] += ",extra"
    rows[7] = "O8,A"
    purchases = _csv_purchases(tmp_path, HEADER + GOOD_CSV + "\n".join(rows) + "\n")
    rejected = purchases.rejected.set_index("line")["reason"]
    assert rejected.to_dict() == {2: "zero_price", 3: "zero_price", 4: "malformed_line", 5: "malformed_line",
                                  6: "zero_price", 7: "zero_price", 8: "zero_price", 9: "malformed_line",
                                  10: "zero_price"}
    assert purchases.rejected.set_index("line").loc[6, "invoice"] == "O5"


GOOD_CSV = ",".join(GOOD) + "\n"


def test_a_whitespace_separated_export_without_a_header_is_read(tmp_path):
    text = ("00001 19970101 1 11.77\n"
            "   00002\t19970112  2   12.00\n"       # leading spaces, a tab, runs of spaces
            "00002 19970113 1\n"                    # a field missing: malformed
            "\n"
            "00003 19970102 1 20.00\r\n")
    path = tmp_path / "cdnow.txt"
    path.write_text(text)
    config = parse_config({"data": {
        "path": str(path), "csv": {"delimiter": "whitespace", "header": False}, "timestamp_format": "%Y%m%d",
        "columns": {"customer_id": "column0", "timestamp": "column1", "amount": "column3"}},
        "window": {"as_of": "1997-07-01"}})
    purchases = prepare_purchases(config)
    assert purchases.report.rows_read == 4 and purchases.report.rejected_by_reason == {"malformed_line": 1}
    assert purchases.features["monetary"].to_dict() == {"00001": 11.77, "00002": 12.0, "00003": 20.0}
    assert purchases.rejected["line_text"].tolist() == ["00002 19970113 1"]


@pytest.mark.parametrize("text, match", [
    ("invoice;client;when;qty;price\nO1;A;2024-01-01 10:00;1;10\n",
     r"data.csv.delimiter ',' finds one column in the first line \('invoice;client;when;qty;price'\), "
     r"but ';' splits it into 5; set data.csv.delimiter: ';'"),
    ("invoice\tclient\twhen\tqty\tprice\nO1\tA\t2024-01-01 10:00\t1\t10\n",
     r"but a tab splits it into 5; set data.csv.delimiter: \"\\t\""),
    ("invoice client when qty price\n", r"but whitespace splits it into 5; set data.csv.delimiter: whitespace"),
    ("invoice\n", r"finds one column in the first line \('invoice'\); segml needs at least a customer id"),
    ("", r"lines.csv' is empty; check data.path"),
    ("\n\n", r"lines.csv' is empty; check data.path"),
], ids=["semicolons", "tabs", "spaces", "one column", "empty", "blank"])
def test_a_file_the_delimiter_cannot_split_says_which_setting_to_change(tmp_path, text, match):
    with pytest.raises(InputDataError, match=match):
        _csv_purchases(tmp_path, text)


def test_a_file_in_another_encoding_names_the_encoding_setting(tmp_path):
    latin = (HEADER + "O1,Café Zoë,2024-01-01 10:00,1,10\n").encode("latin-1")
    with pytest.raises(InputDataError, match=r"is not utf-8 text: byte 0xe9 on line 2; set data.csv.encoding"):
        _csv_purchases(tmp_path, latin)
    assert _csv_purchases(tmp_path, latin, csv={"encoding": "latin-1"}).features.index.tolist() == ["Café Zoë"]


def test_a_wrong_encoding_far_down_the_file_names_the_encoding_setting_too(tmp_path):
    good = GOOD_CSV * 60_000  # 1.4 MB of utf-8 first, past the part read to find the column names
    latin = (HEADER + good).encode() + "O9,Zoë,2024-01-01 10:00,1,10\n".encode("latin-1")
    with pytest.raises(InputDataError, match=r"1 lines are not text in the configured data.csv.encoding, the first "
                                             r"on line 60001; set data.csv.encoding"):
        _csv_purchases(tmp_path, latin)


def test_a_csv_read_twice_on_one_connection_counts_its_malformed_lines_once(tmp_path):
    path = tmp_path / "lines.csv"
    path.write_text(HEADER + GOOD_CSV + "O2,A,2024-01-02 10:00,1,10,extra\n")
    config = _config(path=str(path))
    con = connect()
    register_source(con, config.data)
    first = classify_lines(con, config.data, config.window)
    second = classify_lines(con, config.data, config.window)
    assert first == second and first.rows_read == 2 and first.rejected_by_reason == {"malformed_line": 1}
    assert rejected_lines(con)["line"].tolist() == [2]


def test_a_file_the_reader_cannot_go_through_fails_with_a_message_in_segml_terms(tmp_path):
    with pytest.raises(InputDataError, match=r"the CSV reader cannot go on: .* mixes line ends") as info:
        _csv_purchases(tmp_path, HEADER + "O1,A,2024-01-01 10:00,1,10\r\n" + GOOD_CSV)
    assert "strict_mode" not in str(info.value)


# --- the same answers on Spark -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark", reason="PySpark is not installed (pip install 'segml[spark]')")
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime: Spark needs Java 17 (java not on PATH, JAVA_HOME unset)")
    from segml.config import SparkConfig
    from segml.spark_engine import session

    spark = session(SparkConfig(master="local[2]", partitions=4))
    spark.sparkContext.setLogLevel("ERROR")
    return spark


#: One line for each new way of going wrong, in a file both engines read.
ODD_LINES = (HEADER + GOOD_CSV
             + "O1,A,2024-01-02 10:00,1,\"12,50\"\n"                  # non_numeric_amount
             + "O2,A,2024-01-03 10:00,1,\"1,234.5\"\n"                # 1234.5
             + "O3,NULL,2024-01-03 10:00,1,5\n"                       # missing_customer_id
             + "O4," + "x" * 201 + ",2024-01-03 10:00,1,5\n"          # customer_id_too_long
             + "O5,A,2999-01-01 10:00,1,5\n"                          # implausible_timestamp
             + "O6,A,#N/A,1,5\n"                                      # missing_timestamp
             + "O7,A,2024-01-04 10:00,1e200,1e200\n"                  # amount_out_of_range
             + "O8,Z,2024-01-04 10:00,1,0\n"                          # zero_price: Z only rejected
             + "O9,A,2024-01-05 10:00,1,5,extra\n"                    # malformed_line
             + "O10,A,2024-01-05 10:00\n"                             # malformed_line
             + "O11,C,2024-01-06 10:00,2,7\n"
             + "O11,C,2024-01-06 10:00,2,7\n")                        # duplicate_line, or kept


@pytest.mark.spark
@pytest.mark.parametrize("settings", [{}, {"duplicates": "keep", "window": {}}], ids=["reject", "keep"])
def test_spark_gives_the_same_contract_on_odd_lines(spark, tmp_path, settings):
    path = tmp_path / "odd.csv"
    path.write_text(ODD_LINES)
    settings = dict(settings)
    config = _config(path=str(path), window=settings.pop("window", None), **settings)
    on_duckdb = prepare_purchases(config)
    on_spark = prepare_purchases(config.model_copy(update={"engine": "spark"}))
    assert on_spark.report == on_duckdb.report
    assert on_duckdb.report.rejected_by_reason["malformed_line"] == 2
    pd.testing.assert_frame_equal(on_spark.features, on_duckdb.features)
    pd.testing.assert_frame_equal(on_spark.excluded, on_duckdb.excluded)
    assert on_duckdb.excluded["reason"].tolist() == ["all_lines_rejected"]
    for column in ("line", "reason", "line_text"):
        assert on_spark.rejected[column].tolist() == on_duckdb.rejected[column].tolist(), column


@pytest.mark.spark
def test_spark_reads_a_whitespace_export_and_decimal_commas_as_duckdb_does(spark, tmp_path):
    path = tmp_path / "export.txt"
    path.write_text("customer  day       qty price\n"
                    "  00001   20240101  1   11,77\n"
                    "00002\t20240112 2 1.200,5\n"
                    "00002 20240113 1\n"
                    "\n"
                    "00003 20240102 1 12.50\n")
    config = parse_config({"data": {
        "path": str(path), "csv": {"delimiter": "whitespace"}, "timestamp_format": "%Y%m%d", "decimal": ",",
        "columns": {"customer_id": "customer", "timestamp": "day", "quantity": "qty", "unit_price": "price"}},
        "window": {"as_of": "2024-02-01"}})
    on_duckdb = prepare_purchases(config)
    on_spark = prepare_purchases(config.model_copy(update={"engine": "spark"}))
    assert on_spark.report == on_duckdb.report
    assert on_duckdb.report.rejected_by_reason == {"malformed_line": 1, "non_numeric_amount": 1}
    pd.testing.assert_frame_equal(on_spark.features, on_duckdb.features)
    assert on_duckdb.features["monetary"].to_dict() == {"00001": 11.77, "00002": 2401.0}


@pytest.mark.spark
def test_spark_rejects_parquet_times_of_year_1_and_9999_without_a_crash(spark, tmp_path):
    table = pa.table({"cust": ["A", "A", "B"], "ts": pa.array([dt.datetime(2024, 1, 5), dt.datetime(9999, 12, 31, 23, 59),
                                                              dt.datetime(1, 1, 1)], pa.timestamp("us")),
                      "value": [10.0, 5.0, 7.0]})
    pq.write_table(table, tmp_path / "lines.parquet")
    config = parse_config({"data": {"path": str(tmp_path / "lines.parquet"), "columns": {
        "customer_id": "cust", "timestamp": "ts", "amount": "value"}}})
    on_duckdb = prepare_purchases(config)
    on_spark = prepare_purchases(config.model_copy(update={"engine": "spark"}))
    assert on_spark.report == on_duckdb.report and on_duckdb.report.as_of == dt.date(2024, 1, 6)
    pd.testing.assert_frame_equal(on_spark.rejected, on_duckdb.rejected, check_dtype=False)


def test_one_connection_reads_a_frame_then_a_csv_with_malformed_lines_then_another_file(tmp_path, hand_lines):
    path = tmp_path / "lines.csv"
    path.write_text(HEADER + GOOD_CSV + "O2,A,2024-01-02 10:00,1,10,extra\n")
    other = tmp_path / "other.csv"
    other.write_text(HEADER + GOOD_CSV)
    con = connect()
    config = _config(path=str(path))
    prepare_purchases(config, frame=hand_lines, con=con)
    assert prepare_purchases(config, con=con).report.rejected_by_reason == {"malformed_line": 1}
    again = prepare_purchases(_config(path=str(other)), con=con).report
    assert again.rows_read == 1 and again.rows_rejected == 0


def test_the_readme_lists_every_rejection_reason_in_the_order_they_are_checked():
    from conftest import REPO

    from segml.validation import REJECTION_REASONS

    section = (REPO / "README.md").read_text().split("## The data contract", 1)[1].split("\n## ", 1)[0]
    listed = [row.split("`")[1] for row in section.splitlines() if row.startswith("| `")]
    assert listed == list(REJECTION_REASONS)
