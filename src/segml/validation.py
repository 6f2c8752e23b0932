"""The data contract: every purchase line is used, rejected with a reason, or outside the window.

:func:`classify_lines` defines the view ``purchase_lines`` over ``raw_purchases``
with one row per input line: its position in the source (``line``), the
normalised customer id, timestamp, order key and signed amount, whether it is a
return, and its ``status`` (``used``, ``rejected`` or ``outside_window``) with a
``reason`` for the last two. A line gets the first reason that applies, in the
order of :data:`REJECTION_REASONS`.

The lines are read once, into the table ``order_lines``: one row per
customer, order and reason (none for used lines) with the line count, the
order's first and last purchase day and value, and the rejected lines' own
values. The counts, the features (:mod:`segml.features`) and the rejected
lines all come from that table, which holds about one row per order instead
of one per line.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from segml.config import DataConfig, WindowConfig
from segml.dialects import DUCKDB, Dialect, sql_string
from segml.errors import InputDataError
from segml.sources import RAW, column_types, fingerprint_of, line_hashes, line_number

log = logging.getLogger(__name__)

LINES = "purchase_lines"
REJECTED = "rejected_lines"
STAGED = "classified_lines"
ORDERS = "order_lines"
REPEATED = "repeated_hashes"

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
    #: The lines' content: their count and an order-independent sum of line hashes
    #: (``sources.fingerprint_of``). Each engine has its own hash, so reports compare without it.
    fingerprint: str = field(default="", compare=False)

    def as_frame(self) -> pd.DataFrame:
        """The counts as a table: one row per status and reason."""
        rows = [("used", "", self.rows_used)]
        rows += [("rejected", r, n) for r, n in self.rejected_by_reason.items()]
        rows += [("outside_window", r, n) for r, n in self.outside_by_reason.items()]
        return pd.DataFrame(rows, columns=["status", "reason", "lines"])


def _is_text(sql_type: str) -> bool:
    return sql_type.upper() in ("VARCHAR", "TEXT", "STRING") or sql_type.upper().startswith("VARCHAR")


def _text(expr: str, d: Dialect) -> str:
    """Trimmed text, NULL when empty."""
    return d.trimmed(f"CAST({expr} AS {d.text_type})")


def _customer_id(expr: str, sql_type: str, d: Dialect) -> str:
    upper = sql_type.upper()
    if upper in ("DOUBLE", "FLOAT", "REAL") or upper.startswith("DECIMAL"):
        # Ids stored as floats (17850.0) are whole numbers written without the fraction.
        return (f"CASE WHEN {expr} = floor({expr}) AND abs({expr}) < 1e15 "
                f"THEN CAST(CAST({expr} AS BIGINT) AS {d.text_type}) ELSE CAST({expr} AS {d.text_type}) END")
    return _text(expr, d)


def _cleaned(expr: str, sql_type: str, d: Dialect) -> str:
    """A source column ready to check: trimmed text (NULL when empty) for text, else the value."""
    return _text(expr, d) if _is_text(sql_type) else expr


def _to_number(expr: str, sql_type: str) -> str:
    """A cleaned column as a double, NULL when it is not a number (thousands separators allowed)."""
    if _is_text(sql_type):
        return f"TRY_CAST(replace({expr}, ',', '') AS DOUBLE)"
    return f"TRY_CAST({expr} AS DOUBLE)"


#: ``contract_sql``'s default: the hashes that repeat are found by a group-by in the same query.
GROUP_HASHES = "SELECT __hash FROM numbered GROUP BY __hash HAVING count(*) > 1"


def contract_sql(data: DataConfig, types: dict[str, str], line: str = "row_number() OVER ()",
                 d: Dialect = DUCKDB, repeated: str | None = GROUP_HASHES) -> str:
    """The query that classifies every line of ``raw_purchases`` (one row per line).

    Each source column is cleaned once (trimmed text, NULL when empty) and
    parsed once; the reasons then test those columns. ``repeated`` is a
    query of the line hashes (column ``__hash``, :meth:`Dialect.hash` of every
    column) that occur more than once: only lines with such a hash can be
    duplicates. With ``None`` no line is a duplicate (a cheaper query, for a
    source known to have no repeated hash or for questions duplicates cannot
    change).
    """
    cols = data.columns
    quote = d.ident
    all_columns = ", ".join(quote(c) for c in types)
    ts_type = types[cols.timestamp]

    # Cleaned columns: __c_<name>; parsed numbers __q, __p (or __v for a single amount).
    cleaned = [f"{_customer_id(quote(cols.customer_id), types[cols.customer_id], d)} AS __cid",
               f"{_cleaned(quote(cols.timestamp), ts_type, d)} AS __c_ts"]
    if cols.amount is not None:
        cleaned.append(f"{_cleaned(quote(cols.amount), types[cols.amount], d)} AS __c_v")
        parsed = [f"{_to_number('__c_v', types[cols.amount])} AS __v"]
        missing_amount = "__c_v IS NULL"
        bad_number = f"(__v IS NULL OR NOT {d.is_finite('__v')})"
        zero_price, negative_price, zero_quantity = "__v = 0", "false", "false"
        negative = "__v < 0"
        magnitude = "abs(__v)"
    else:
        q_name, p_name = cols.quantity or "", cols.unit_price or ""
        cleaned += [f"{_cleaned(quote(q_name), types[q_name], d)} AS __c_q",
                    f"{_cleaned(quote(p_name), types[p_name], d)} AS __c_p"]
        parsed = [f"{_to_number('__c_q', types[q_name])} AS __q", f"{_to_number('__c_p', types[p_name])} AS __p"]
        missing_amount = "(__c_q IS NULL OR __c_p IS NULL)"
        bad_number = f"(__q IS NULL OR __p IS NULL OR NOT {d.is_finite('__q')} OR NOT {d.is_finite('__p')})"
        zero_price, negative_price, zero_quantity = "__p = 0", "__p < 0", "__q = 0"
        negative = "__q < 0"
        magnitude = "abs(__q * __p)"
    upper = ts_type.upper()
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        parsed.append(f"{d.to_timestamp('__c_ts', 'TIME ZONE' in upper)} AS __ts")
    else:
        parsed.append(f"{d.parse_timestamp('__c_ts', data.timestamp_format)} AS __ts")

    day = f"CAST(CAST(__ts AS DATE) AS {d.text_type})"  # orders are purchase days without an order column
    if cols.order_id is not None:
        cleaned.append(f"{_text(quote(cols.order_id), d)} AS __c_order")
        order_key = f"COALESCE(__c_order, {day})"
    else:
        cleaned.append("NULL AS __c_order")
        order_key = day
    prefix = data.returns.cancel_prefix
    cancelled = (f"substring(__c_order, 1, {len(prefix)}) = {sql_string(prefix)}"
                 if prefix and cols.order_id else "false")
    exclude_returns = "true" if data.returns.policy == "exclude" else "false"

    reasons = [
        ("missing_customer_id", "__cid IS NULL"),
        ("missing_timestamp", "__c_ts IS NULL"),
        ("unparseable_timestamp", "__ts IS NULL"),
        ("missing_amount", missing_amount),
        ("non_numeric_amount", bad_number),
        ("zero_price", zero_price),
        ("negative_price", negative_price),
        ("zero_quantity", zero_quantity),
        ("duplicate_line", "__duplicate"),
        ("return_excluded", f"{exclude_returns} AND __ret"),
    ]
    # The conditions test columns parsed in an earlier step, so a CASE parses nothing twice
    # (a list of every test, then its first true position, was 10% slower on DuckDB).
    reason_case = "CASE " + " ".join(f"WHEN {cond} THEN {sql_string(name)}" for name, cond in reasons) + " END"

    # Exact duplicates: only the few lines whose 64-bit hash repeats are
    # compared column by column (so a hash collision never makes a false
    # duplicate) and numbered in line order.
    same_as_first = " AND ".join(f"{c} IS NOT DISTINCT FROM first_value({c}) OVER same_hash" for c in
                                 [quote(name) for name in types])
    raw_struct = d.struct(list(types))
    if repeated is None:
        numbered_sql = f"SELECT {all_columns}, {line} AS __line FROM {RAW}"
        duplicates, scanned, duplicate = "", "numbered", "false"
    else:
        numbered_sql = f"SELECT {all_columns}, {line} AS __line, {d.hash(all_columns)} AS __hash FROM {RAW}"
        duplicates = f"""repeated AS ({repeated}), copies AS (
            SELECT __line, (row_number() OVER same_hash > 1 AND {same_as_first}) AS __duplicate
            FROM numbered WHERE __hash IN (SELECT __hash FROM repeated)
            WINDOW same_hash AS (PARTITION BY __hash ORDER BY __line)
        ),"""
        scanned, duplicate = "numbered LEFT JOIN copies USING (__line)", "COALESCE(copies.__duplicate, false)"
    # A source without its own line numbers (CSV) read twice is numbered
    # once and kept; one with them (Parquet, loaded tables) is cheaper to scan again.
    materialized = d.materialized(line.startswith("row_number()") and repeated is not None)
    # Computed columns carry a double-underscore prefix so they never collide
    # with the source's own names (a source may well have "customer_id").
    # Only the slim columns are kept, plus the source's own values for the
    # (usually few) rejected lines.
    return f"""
        WITH numbered AS {materialized} ({numbered_sql}), {duplicates} cleaned AS (
            SELECT numbered.*, {", ".join(cleaned)}, {duplicate} AS __duplicate
            FROM {scanned}
        ), parsed AS (
            SELECT *, {", ".join(parsed)} FROM cleaned
        ), checked AS (
            SELECT *, ({negative}) OR COALESCE({cancelled}, false) AS __ret FROM parsed
        ), classified AS (
            SELECT *, {reason_case} AS __reason FROM checked
        )
        SELECT __line, __cid, __ts, __ret, __reason,
               {order_key} AS __order,
               CASE WHEN __reason IS NULL
                    THEN CASE WHEN __ret THEN -{magnitude} ELSE {magnitude} END END AS __amount,
               CASE WHEN __reason IS NOT NULL THEN {raw_struct} END AS __raw
        FROM classified
    """


def window_of(window: WindowConfig, last_valid: dt.datetime | None) -> tuple[dt.date, dt.date | None]:
    """The as-of date and window start: ``window.as_of``, else the day after the last valid purchase."""
    as_of = window.as_of
    if as_of is None:
        as_of = dt.date.today() if last_valid is None else last_valid.date() + dt.timedelta(days=1)
    window_start = as_of - dt.timedelta(days=window.lookback_days) if window.lookback_days else None
    return as_of, window_start


def last_valid_sql(data: DataConfig, types: dict[str, str], line: str, d: Dialect = DUCKDB) -> str:
    """The time of the last valid line, for the default as-of date.

    The duplicate check is left out: a duplicate shares its original's time.
    """
    quick = contract_sql(data, types, line, d, repeated=None)
    return f"SELECT max(__ts) FROM ({quick}) AS __quick WHERE __reason IS NULL"


def lines_sql(as_of: dt.date, window_start: dt.date | None, d: Dialect = DUCKDB) -> str:
    """The ``purchase_lines`` view over the classified lines: status and reason as of ``as_of``.

    ``source`` holds the source's own values of a rejected line (NULL otherwise).
    """
    start_sql = d.timestamp_literal(window_start.isoformat()) if window_start else "NULL"
    as_of_sql = d.timestamp_literal(as_of.isoformat())
    return f"""
        SELECT line, customer_id, ts, order_key, amount, is_return, {status_of("reason")} AS status, reason, source
        FROM (
            SELECT __line AS line, __cid AS customer_id, __ts AS ts, __order AS order_key,
                __amount AS amount, __ret AS is_return,
                CASE WHEN __reason IS NOT NULL THEN __reason
                     WHEN __ts >= {as_of_sql} THEN 'after_as_of'
                     WHEN __ts < {start_sql} THEN 'before_window' END AS reason,
                __raw AS source
            FROM {STAGED}
        ) AS __windowed
    """


def orders_sql(d: Dialect = DUCKDB) -> str:
    """The ``order_lines`` table: ``purchase_lines`` summed per customer, order and reason.

    The reason alone tells the status (:func:`status_of`); purchase days
    rather than times (the features count whole days) and no separate
    status keep each of the tens of millions of orders small, which matters
    most once the table outgrows ``duckdb.memory_limit`` and spills.
    """
    return f"""
        SELECT customer_id, order_key, reason, count(*) AS lines,
            max(CAST(ts AS DATE)) FILTER (WHERE NOT is_return) AS last_purchase,
            min(CAST(ts AS DATE)) FILTER (WHERE NOT is_return) AS first_purchase,
            {d.exact_sum("amount")} AS amount,
            {d.collect(d.pack({"line": "line", "source": "source"}))} FILTER (WHERE status = 'rejected') AS rejected
        FROM {LINES}
        GROUP BY customer_id, order_key, reason
    """


def status_of(reason: str) -> str:
    """SQL for a line's status from its reason: ``used`` without one, else ``rejected`` or ``outside_window``."""
    window = ", ".join(sql_string(r) for r in WINDOW_REASONS)
    return (f"CASE WHEN {reason} IS NULL THEN 'used' WHEN {reason} IN ({window}) THEN 'outside_window' "
            "ELSE 'rejected' END")


def rejected_sql(d: Dialect = DUCKDB) -> str:
    """The ``rejected_lines`` view: line number, reason and the source's own columns."""
    return f"""
        SELECT __r.line AS line, reason, {d.unpack('__r.source')}
        FROM (SELECT reason, {d.explode('rejected')} AS __r FROM {ORDERS} WHERE reason IS NOT NULL) AS __rejected
    """


#: Lines per status and reason, from ``order_lines``.
COUNTS_SQL = f"SELECT {status_of('reason')} AS status, reason, sum(lines) AS n FROM {ORDERS} GROUP BY reason"


def build_report(rows_read: int, counts: list[tuple[str, str | None, int]], as_of: dt.date,
                 window_start: dt.date | None, fingerprint: str = "") -> ContractReport:
    """The contract's accounting from the counts per status and reason; fails when nothing is usable."""
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
        fingerprint=fingerprint,
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


def classify_lines(con: duckdb.DuckDBPyConnection, data: DataConfig, window: WindowConfig) -> ContractReport:
    """Classify every line of ``raw_purchases`` and fix the as-of window.

    Defines the view ``purchase_lines`` (columns ``line``, ``customer_id``,
    ``ts``, ``order_key``, ``amount``, ``is_return``, ``status``, ``reason``,
    ``source``), reads it once into ``order_lines`` and returns the counts,
    which always add up to the lines read.

    The hash of every line is read and sorted first: it finds the hashes that
    repeat (only their lines are compared for duplicates, and a source
    without any skips the comparison) and gives the source's fingerprint.
    Sorting 8 bytes a line beats DuckDB's group-by over every line by half,
    and by far once that group-by outgrows ``duckdb.memory_limit`` and spills.
    """
    types, line = column_types(con), line_number(con)
    hashes = line_hashes(con)
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    rows_read, fingerprint = len(hashes), fingerprint_of(len(hashes), int(hashes.sum(dtype=np.uint64)))
    del hashes  # 8 bytes a line: gone before the main pass needs the memory
    if len(repeated):
        con.register("_repeated", pd.DataFrame({"__hash": repeated}))
        con.execute(f"CREATE OR REPLACE TEMP TABLE {REPEATED} AS SELECT CAST(__hash AS UBIGINT) AS __hash FROM _repeated")
        con.unregister("_repeated")
    last = con.execute(last_valid_sql(data, types, line)).fetchone()[0] if window.as_of is None else None
    as_of, window_start = window_of(window, last)
    contract = contract_sql(data, types, line, repeated=f"SELECT __hash FROM {REPEATED}" if len(repeated) else None)
    con.execute(f"CREATE OR REPLACE VIEW {STAGED} AS {contract}")
    con.execute(f"CREATE OR REPLACE VIEW {LINES} AS {lines_sql(as_of, window_start)}")
    con.execute(f"CREATE OR REPLACE TABLE {ORDERS} AS {orders_sql()}")
    con.execute(f"CREATE OR REPLACE VIEW {REJECTED} AS {rejected_sql()}")
    return build_report(rows_read, con.execute(COUNTS_SQL).fetchall(), as_of, window_start, fingerprint=fingerprint)


def rejected_lines(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> pd.DataFrame:
    """The rejected lines with every source column, their line number and reason."""
    limit_sql = f"LIMIT {int(limit)}" if limit is not None else ""
    return con.execute(f"SELECT * FROM {REJECTED} ORDER BY line {limit_sql}").df()
