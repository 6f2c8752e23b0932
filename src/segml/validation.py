"""The data contract: every purchase line is used, rejected with a reason, or outside the window.

:func:`classify_lines` turns ``raw_purchases`` into the table ``purchase_lines``
with one row per input line: its position in the source (``line``), the
normalised customer id, timestamp, order key and signed amount, whether it is a
return, and its ``status`` (``used``, ``rejected`` or ``outside_window``) with a
``reason`` for the last two. A line gets the first reason that applies, in the
order of :data:`REJECTION_REASONS`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from segml.config import DataConfig, WindowConfig
from segml.errors import InputDataError
from segml.sources import RAW, column_types, line_number, quote

log = logging.getLogger(__name__)

LINES = "purchase_lines"
REJECTED = "rejected_lines"
STAGED = "classified_lines"

#: Reasons a line is rejected, in the order they are checked.
REJECTION_REASONS: dict[str, str] = {
    "missing_customer_id": "the customer id is empty",
    "missing_timestamp": "the timestamp is empty",
    "unparseable_timestamp": "the timestamp does not match data.timestamp_format",
    "missing_amount": "the amount, quantity or unit price is empty",
    "non_numeric_amount": "the amount, quantity or unit price is not a finite number",
    "zero_price": "the unit price (or the amount) is zero",
    "negative_price": "the unit price is negative (an accounting adjustment, not a sale)",
    "zero_quantity": "the quantity is zero",
    "duplicate_line": "the line repeats an earlier line exactly, in every column",
    "return_excluded": "the line is a return and data.returns.policy is 'exclude'",
}

#: Reasons a valid line falls outside the as-of window.
WINDOW_REASONS: dict[str, str] = {
    "after_as_of": "the purchase is on or after the as-of date",
    "before_window": "the purchase is before the look-back window",
}


@dataclass(frozen=True)
class ContractReport:
    """How the lines read were accounted for."""

    rows_read: int
    rows_used: int
    rows_rejected: int
    rows_outside_window: int
    as_of: dt.date
    window_start: dt.date | None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    outside_by_reason: dict[str, int] = field(default_factory=dict)

    def as_frame(self) -> pd.DataFrame:
        """The counts as a table: one row per status and reason."""
        rows = [("used", "", self.rows_used)]
        rows += [("rejected", r, n) for r, n in self.rejected_by_reason.items()]
        rows += [("outside_window", r, n) for r, n in self.outside_by_reason.items()]
        return pd.DataFrame(rows, columns=["status", "reason", "lines"])


def _is_text(sql_type: str) -> bool:
    return sql_type.upper() in ("VARCHAR", "TEXT", "STRING") or sql_type.upper().startswith("VARCHAR")


def _text(expr: str) -> str:
    """Trimmed text, NULL when empty."""
    return f"NULLIF(trim(CAST({expr} AS VARCHAR)), '')"


def _number(expr: str, sql_type: str) -> str:
    if _is_text(sql_type):
        return f"TRY_CAST(replace({_text(expr)}, ',', '') AS DOUBLE)"
    return f"TRY_CAST({expr} AS DOUBLE)"


def _timestamp(expr: str, sql_type: str, fmt: str | None) -> str:
    upper = sql_type.upper()
    if upper.startswith("TIMESTAMP") and "TIME ZONE" in upper:
        return f"CAST(timezone('UTC', {expr}) AS TIMESTAMP)"
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        return f"CAST({expr} AS TIMESTAMP)"
    if fmt:
        return f"try_strptime({_text(expr)}, '{fmt.replace(chr(39), chr(39) * 2)}')"
    return f"TRY_CAST({_text(expr)} AS TIMESTAMP)"


def _customer_id(expr: str, sql_type: str) -> str:
    upper = sql_type.upper()
    if upper in ("DOUBLE", "FLOAT", "REAL") or upper.startswith("DECIMAL"):
        # Ids stored as floats (17850.0) are whole numbers written without the fraction.
        return (f"CASE WHEN {expr} = floor({expr}) AND abs({expr}) < 1e15 "
                f"THEN CAST(CAST({expr} AS BIGINT) AS VARCHAR) ELSE CAST({expr} AS VARCHAR) END")
    return _text(expr)


def _build_sql(data: DataConfig, types: dict[str, str], line: str = "row_number() OVER ()") -> str:
    cols = data.columns
    cid = quote(cols.customer_id)
    ts_col = quote(cols.timestamp)
    all_columns = ", ".join(quote(c) for c in types)

    if cols.amount is not None:
        amount_raw = quote(cols.amount)
        value = _number(amount_raw, types[cols.amount])
        missing_amount = f"{_text(amount_raw)} IS NULL"
        bad_number = f"({value} IS NULL OR NOT isfinite({value}))"
        zero_price = f"{value} = 0"
        negative_price = "false"
        zero_quantity = "false"
        negative = f"{value} < 0"
        magnitude = f"abs({value})"
    else:
        q_raw, p_raw = quote(cols.quantity or ""), quote(cols.unit_price or "")
        qty = _number(q_raw, types[cols.quantity or ""])
        price = _number(p_raw, types[cols.unit_price or ""])
        missing_amount = f"({_text(q_raw)} IS NULL OR {_text(p_raw)} IS NULL)"
        bad_number = f"({qty} IS NULL OR {price} IS NULL OR NOT isfinite({qty}) OR NOT isfinite({price}))"
        zero_price = f"{price} = 0"
        negative_price = f"{price} < 0"
        zero_quantity = f"{qty} = 0"
        negative = f"{qty} < 0"
        magnitude = f"abs({qty} * {price})"

    if cols.order_id is not None:
        order_text = _text(quote(cols.order_id))
        order_key = f"COALESCE({order_text}, strftime(__ts, '%Y-%m-%d'))"
    else:
        order_text = "NULL"
        order_key = "strftime(__ts, '%Y-%m-%d')"
    prefix = data.returns.cancel_prefix
    cancelled = f"starts_with({order_text}, '{prefix.replace(chr(39), chr(39) * 2)}')" if prefix and cols.order_id else "false"
    exclude_returns = "true" if data.returns.policy == "exclude" else "false"

    reasons = [
        ("missing_customer_id", "__cid IS NULL"),
        ("missing_timestamp", f"{_text(ts_col)} IS NULL"),
        ("unparseable_timestamp", "__ts IS NULL"),
        ("missing_amount", missing_amount),
        ("non_numeric_amount", bad_number),
        ("zero_price", zero_price),
        ("negative_price", negative_price),
        ("zero_quantity", zero_quantity),
        ("duplicate_line", "__duplicate"),
        ("return_excluded", f"{exclude_returns} AND __ret"),
    ]
    reason_case = "CASE " + " ".join(f"WHEN {cond} THEN '{name}'" for name, cond in reasons) + " END"

    # Exact duplicates: a 64-bit hash of all the columns finds the few lines
    # whose hash repeats; only those are compared column by column (so a hash
    # collision never makes a false duplicate) and numbered in line order.
    same_as_first = " AND ".join(f"{c} IS NOT DISTINCT FROM first_value({c}) OVER same_hash" for c in
                                 [quote(name) for name in types])
    raw_struct = "struct_pack(" + ", ".join(f"{quote(name)} := {quote(name)}" for name in types) + ")"
    # A source without its own line numbers (CSV) is numbered once and kept;
    # one with them (Parquet, loaded tables) is cheaper to scan again.
    materialized = "MATERIALIZED" if line.startswith("row_number()") else "NOT MATERIALIZED"
    # Computed columns carry a double-underscore prefix so they never collide
    # with the source's own names (a source may well have "customer_id").
    # Only the slim columns are kept, plus the source's own values for the
    # (usually few) rejected lines.
    return f"""
        WITH numbered AS {materialized} (
            SELECT {all_columns}, {line} AS __line, hash({all_columns}) AS __hash FROM {RAW}
        ), repeated AS (
            SELECT __hash FROM numbered GROUP BY __hash HAVING count(*) > 1
        ), copies AS (
            SELECT __line, (row_number() OVER same_hash > 1 AND {same_as_first}) AS __duplicate
            FROM numbered SEMI JOIN repeated USING (__hash)
            WINDOW same_hash AS (PARTITION BY __hash ORDER BY __line)
        ), parsed AS (
            SELECT numbered.*,
                {_customer_id(cid, types[cols.customer_id])} AS __cid,
                {_timestamp(ts_col, types[cols.timestamp], data.timestamp_format)} AS __ts,
                COALESCE(copies.__duplicate, false) AS __duplicate,
                ({negative}) OR COALESCE({cancelled}, false) AS __ret
            FROM numbered LEFT JOIN copies USING (__line)
        ), checked AS (
            SELECT *, {reason_case} AS __reason FROM parsed
        )
        SELECT __line, __cid, __ts, __ret, __reason,
               {order_key} AS __order,
               CASE WHEN __reason IS NULL
                    THEN CASE WHEN __ret THEN -{magnitude} ELSE {magnitude} END END AS __amount,
               CASE WHEN __reason IS NOT NULL THEN {raw_struct} END AS __raw
        FROM checked
    """


def classify_lines(con: duckdb.DuckDBPyConnection, data: DataConfig, window: WindowConfig) -> ContractReport:
    """Classify every line of ``raw_purchases`` and fix the as-of window.

    Creates the table ``purchase_lines`` (columns ``line``, ``customer_id``,
    ``ts``, ``order_key``, ``amount``, ``is_return``, ``status``, ``reason``)
    and returns the counts, which always add up to the lines read.
    """
    types = column_types(con)
    staged = _build_sql(data, types, line_number(con))
    con.execute(f"CREATE OR REPLACE TABLE {STAGED} AS {staged}")
    as_of = window.as_of
    if as_of is None:
        last = con.execute(f"SELECT max(__ts) FROM {STAGED} WHERE __reason IS NULL").fetchone()[0]
        if last is None:
            as_of = dt.date.today()
        else:
            as_of = last.date() + dt.timedelta(days=1)
    window_start = as_of - dt.timedelta(days=window.lookback_days) if window.lookback_days else None
    start_sql = f"TIMESTAMP '{window_start.isoformat()}'" if window_start else "NULL"
    con.execute(f"""
        CREATE OR REPLACE VIEW {LINES} AS
        SELECT __line AS line, __cid AS customer_id, __ts AS ts, __order AS order_key,
            __amount AS amount, __ret AS is_return,
            CASE WHEN __reason IS NOT NULL THEN 'rejected'
                 WHEN __ts >= TIMESTAMP '{as_of.isoformat()}' THEN 'outside_window'
                 WHEN __ts < {start_sql} THEN 'outside_window'
                 ELSE 'used' END AS status,
            CASE WHEN __reason IS NOT NULL THEN __reason
                 WHEN __ts >= TIMESTAMP '{as_of.isoformat()}' THEN 'after_as_of'
                 WHEN __ts < {start_sql} THEN 'before_window' END AS reason
        FROM {STAGED}
    """)
    con.execute(f"""
        CREATE OR REPLACE VIEW {REJECTED} AS
        SELECT __line AS line, __reason AS reason, unnest(__raw)
        FROM {STAGED} WHERE __reason IS NOT NULL
    """)

    rows_read = con.execute(f"SELECT count(*) FROM {RAW}").fetchone()[0]
    counts = con.execute(f"SELECT status, reason, count(*) FROM {LINES} GROUP BY ALL ORDER BY ALL").fetchall()
    rejected = {r: n for s, r, n in counts if s == "rejected"}
    outside = {r: n for s, r, n in counts if s == "outside_window"}
    used = sum(n for s, _, n in counts if s == "used")
    report = ContractReport(
        rows_read=rows_read,
        rows_used=used,
        rows_rejected=sum(rejected.values()),
        rows_outside_window=sum(outside.values()),
        as_of=as_of,
        window_start=window_start,
        rejected_by_reason={r: rejected[r] for r in REJECTION_REASONS if r in rejected},
        outside_by_reason={r: outside[r] for r in WINDOW_REASONS if r in outside},
    )
    if report.rows_used + report.rows_rejected + report.rows_outside_window != rows_read:
        raise AssertionError(f"line counts do not reconcile: {report}")  # a bug in segml, never the data
    log.info("data contract: %d read, %d used, %d rejected, %d outside the window (as of %s)",
             rows_read, used, report.rows_rejected, report.rows_outside_window, as_of)
    if used == 0:
        raise InputDataError(
            f"no usable purchase lines: {rows_read} read, rejected {report.rejected_by_reason}, "
            f"outside the window {report.outside_by_reason} (as of {as_of}); "
            "check data.columns, data.timestamp_format and window.as_of in the configuration"
        )
    return report


def rejected_lines(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> pd.DataFrame:
    """The rejected lines with every source column, their line number and reason."""
    limit_sql = f"LIMIT {int(limit)}" if limit is not None else ""
    return con.execute(f"SELECT * FROM {REJECTED} ORDER BY line {limit_sql}").df()
