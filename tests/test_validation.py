"""The data contract: every line is used, rejected with its reason, or outside the window."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from conftest import hand_config, hand_frame
from segml.config import parse_config
from segml.errors import InputDataError
from segml.segmentation import prepare_purchases
from segml.sources import connect, register_frame, register_source
from segml.validation import REJECTION_REASONS, classify_lines, rejected_lines


def test_every_rejection_reason_is_found_on_the_line_that_has_it(hand_lines):
    purchases = prepare_purchases(hand_config(), frame=hand_lines)
    rejected = purchases.rejected.set_index("invoice")["reason"]
    # The last nine lines each carry one fault; the duplicate repeats O3 exactly.
    assert rejected.to_dict() == {
        "O9": "missing_customer_id", "O10": "missing_timestamp", "O11": "unparseable_timestamp",
        "O12": "missing_amount", "O13": "non_numeric_amount", "O14": "zero_price",
        "O15": "negative_price", "O16": "zero_quantity", "O3": "duplicate_line",
    }
    assert purchases.rejected.loc[purchases.rejected["invoice"] == "O3", "line"].item() == 20
    # The other reasons need a CSV file, a long id, odd dates or huge values: see test_inputs.py.
    assert set(purchases.report.rejected_by_reason) == set(REJECTION_REASONS) - {
        "return_excluded", "malformed_line", "customer_id_too_long", "implausible_timestamp", "amount_out_of_range"}


def test_line_counts_reconcile(hand_lines):
    report = prepare_purchases(hand_config(), frame=hand_lines).report
    assert report.rows_read == 20
    assert (report.rows_used, report.rows_rejected, report.rows_outside_window) == (10, 9, 1)
    assert report.outside_by_reason == {"after_as_of": 1}
    assert report.as_frame()["lines"].sum() == report.rows_read


def test_lookback_window_counts_old_lines_as_outside(hand_lines):
    report = prepare_purchases(hand_config(window={"as_of": "2024-03-01", "lookback_days": 30}),
                               frame=hand_lines).report
    assert report.window_start == dt.date(2024, 1, 31)
    # Before Jan 31: A's O1 (2 lines) and its cancellation, C's two orders, D's return, E's two lines.
    assert report.outside_by_reason == {"after_as_of": 1, "before_window": 8}
    assert report.rows_used == 2
    assert report.rows_used + report.rows_rejected + report.rows_outside_window == report.rows_read


def test_as_of_defaults_to_the_day_after_the_last_valid_purchase(hand_lines):
    report = prepare_purchases(hand_config(window={}), frame=hand_lines).report
    assert report.as_of == dt.date(2024, 3, 2)  # the last valid line is O4 at 2024-03-01 00:00
    assert report.rows_outside_window == 0


def test_exclude_policy_rejects_returns_instead_of_netting(hand_lines):
    report = prepare_purchases(_with_returns_policy("exclude"), frame=hand_lines).report
    # CO1 (prefix), C9 and O8 (negative quantity) are returns.
    assert report.rejected_by_reason["return_excluded"] == 3


def _with_returns_policy(policy: str):
    config = hand_config()
    data = config.data.model_copy(update={"returns": config.data.returns.model_copy(update={"policy": policy})})
    return config.model_copy(update={"data": data})


def test_missing_mapped_column_names_the_column_the_columns_found_and_the_config_key(hand_lines):
    frame = hand_lines.rename(columns={"when": "InvoiceDate"})
    with pytest.raises(InputDataError) as info:
        prepare_purchases(hand_config(), frame=frame, config_name="configs/x.yaml")
    message = str(info.value)
    assert "column 'when' not found" in message
    assert "data.columns.timestamp" in message
    assert "'InvoiceDate'" in message and "configs/x.yaml" in message


def test_amount_column_mode_and_float_customer_ids():
    frame = pd.DataFrame({
        "cust": [17850.0, 17850.0, None, 12.0],
        "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-02", "2024-01-03"]),
        "value": [10.0, -4.0, 5.0, 0.0],
    })
    config = parse_config({"data": {"path": "x.parquet",
                                    "columns": {"customer_id": "cust", "timestamp": "ts", "amount": "value"}},
                           "window": {"as_of": "2024-02-01"}})
    purchases = prepare_purchases(config, frame=frame)
    assert purchases.report.rejected_by_reason == {"missing_customer_id": 1, "zero_price": 1}
    row = purchases.features.loc["17850"]
    # No order column: frequency counts distinct purchase days; the negative amount is a return.
    assert row["frequency"] == 1 and row["monetary"] == pytest.approx(6.0)


def test_csv_file_with_bad_values_is_read_as_text_and_rejected_not_crashed(tmp_path, hand_lines):
    path = tmp_path / "lines.csv"
    hand_lines.to_csv(path, index=False)
    config = hand_config(data={**hand_config().data.model_dump(), "path": str(path)})
    con = connect()
    register_source(con, config.data)
    report = classify_lines(con, config.data, config.window)
    assert report.rows_read == 20 and report.rows_rejected == 9
    assert len(rejected_lines(con)) == 9


def test_missing_file_says_which_key_to_fix(tmp_path):
    config = hand_config(data={**hand_config().data.model_dump(), "path": str(tmp_path / "nope.csv")})
    with pytest.raises(InputDataError, match="not found; check data.path"):
        register_source(connect(), config.data)


def _sql_config(url: str, table: str | None = None, query: str | None = None):
    data = {**hand_config().data.model_dump(), "path": None, "url": url, "table": table, "query": query}
    return hand_config(data=data)


def test_sqlite_table_and_query_give_the_same_contract_as_the_frame(tmp_path, hand_lines):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    hand_lines.to_sql("purchases", engine, index=False)
    engine.dispose()
    expected = prepare_purchases(hand_config(), frame=hand_lines)
    for config in (_sql_config(url, table="purchases"),
                   _sql_config(url, query="SELECT * FROM purchases WHERE invoice <> 'O4'")):
        got = prepare_purchases(config)
        pd.testing.assert_frame_equal(got.features, expected.features)
    assert got.report.rows_read == 19 and got.report.rows_rejected == 9


def test_unreadable_database_table_names_the_table(tmp_path):
    config = _sql_config(f"sqlite:///{tmp_path / 'empty.db'}", table="purchases")
    with pytest.raises(InputDataError, match="cannot read table 'purchases'"):
        register_source(connect(), config.data)


@pytest.mark.postgres
def test_postgres_table_gives_the_same_features_as_the_frame(hand_lines, postgres_url):
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    hand_lines.to_sql("segml_test_purchases", engine, index=False, if_exists="replace")
    try:
        got = prepare_purchases(_sql_config(postgres_url, table="segml_test_purchases"))
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE segml_test_purchases"))
        engine.dispose()
    expected = prepare_purchases(hand_config(), frame=hand_lines)
    pd.testing.assert_frame_equal(got.features, expected.features)
    assert got.report == expected.report


def test_no_usable_lines_is_a_clear_error():
    frame = hand_frame().assign(when="garbage")
    with pytest.raises(InputDataError, match="no usable purchase lines.*unparseable_timestamp"):
        prepare_purchases(hand_config(), frame=frame)


def test_register_frame_without_mapping_returns_columns():
    assert register_frame(connect(), hand_frame()) == ["invoice", "client", "when", "qty", "price"]


def test_every_copy_after_the_first_is_a_duplicate_and_a_lookalike_is_not(hand_lines):
    first = hand_lines.iloc[[0]]
    lookalike = first.assign(qty="3")  # differs in one column only
    frame = pd.concat([hand_lines, first, lookalike, first], ignore_index=True)
    purchases = prepare_purchases(hand_config(), frame=frame)
    duplicates = purchases.rejected[purchases.rejected["reason"] == "duplicate_line"]
    # Lines 21 and 23 repeat line 1; line 20 already repeated O3; line 22 is a new line.
    assert sorted(duplicates["line"]) == [20, 21, 23]
    assert purchases.report.rows_read == 23 and purchases.report.rejected_by_reason["duplicate_line"] == 3


def test_fingerprint_follows_the_content_not_the_order(hand_lines):
    def fingerprint(frame):
        return prepare_purchases(hand_config(), frame=frame).report.fingerprint

    shuffled = hand_lines.sample(frac=1.0, random_state=3)
    changed = hand_lines.assign(price=hand_lines["price"].where(hand_lines.index != 0, 99.0))
    assert fingerprint(hand_lines) == fingerprint(shuffled) != fingerprint(changed)
    # The count and the 64-bit sum of DuckDB's hash of every line, whatever adds them up.
    con = connect()
    register_frame(con, hand_lines)
    total = con.execute("SELECT sum(hash(invoice, client, \"when\", qty, price)::HUGEINT) FROM raw_purchases").fetchone()[0]
    assert fingerprint(hand_lines) == f"20:{int(total) % 2**64:016x}"


def test_rejected_lines_keep_the_source_values_and_types_exactly(tmp_path):
    source = pd.DataFrame({
        "invoice": ["A1", "A2", "A3", "A4", "A5", "A6"],
        "client": ["c1", "  ", "c3", "c4", 'c"5,}', "c6"],
        "when": pd.to_datetime(["2024-01-02 10:00:00.123456", "2024-01-03 00:00:00", None, "2024-01-04 00:00:00", "2024-01-05 00:00:00",
                                "2024-01-06 00:00:00"], format="ISO8601"),
        "qty": pd.array([1, 2, 3, 0, 4, 5], dtype="int32"),
        "price": [9.99, 1.0, 2.0, 3.0, float("nan"), float("-inf")],
    })
    path = tmp_path / "lines.parquet"
    source.to_parquet(path)
    config = parse_config({"data": {"path": str(path), "columns": {
        "customer_id": "client", "timestamp": "when", "order_id": "invoice", "quantity": "qty",
        "unit_price": "price"}}, "window": {"as_of": "2024-02-01"}})
    rejected = prepare_purchases(config).rejected
    # pandas writes NaN to Parquet as a null: a missing amount.
    assert rejected["reason"].tolist() == ["missing_customer_id", "missing_timestamp", "zero_quantity",
                                           "missing_amount", "non_numeric_amount"]
    assert rejected["line"].tolist() == [2, 3, 4, 5, 6]
    kept = rejected.drop(columns=["line", "reason"]).reset_index(drop=True)
    expected = source.iloc[1:].reset_index(drop=True)
    assert kept.dtypes.astype(str).tolist()[3:] == ["int32", "float64"]
    pd.testing.assert_frame_equal(kept, expected, check_dtype=False)


def test_rejected_lines_streamed_to_a_file_are_the_rejected_lines(tmp_path, hand_lines):
    # A file of mostly rejected lines used to be held whole in memory as a frame of every rejected line.
    config = hand_config()
    in_memory = prepare_purchases(config, frame=hand_lines)
    streamed = prepare_purchases(config, frame=hand_lines, rejected_file=tmp_path / "rejected_lines.csv")
    assert streamed.rejected is None and streamed.rejected_table == tmp_path / "rejected_lines.csv"
    written = pd.read_csv(tmp_path / "rejected_lines.csv", dtype=str, keep_default_na=False)
    expected = in_memory.rejected.astype(str).replace({"None": "", "nan": ""})
    assert written["line"].tolist() == expected["line"].tolist()
    assert written["reason"].tolist() == expected["reason"].tolist()
    assert written["invoice"].tolist() == expected["invoice"].tolist()
    assert len(written) == in_memory.report.rows_rejected
