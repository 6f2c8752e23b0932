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

Text values are read strictly: a number must read under ``data.decimal`` and
``data.thousands`` (``12,50`` is not 1250), ``data.null_markers`` such as
``NULL`` or ``#N/A`` are missing values, and a date outside
``data.plausible_dates`` is rejected rather than allowed to move the as-of
date. A CSV line the reader cannot split into the file's columns is a
rejected line too (:func:`segml.sources.take_malformed_lines`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from segml.attributes import check_line_attribute_columns
from segml.config import DataConfig, WindowConfig
from segml.contract import MAX_ID_LENGTH
from segml.dialects import DUCKDB, Dialect, sql_string
from segml.errors import InputDataError, NoUsableLinesError
from segml.sources import (
    MALFORMED,
    RAW,
    column_types,
    fingerprint_of,
    has_malformed,
    line_hashes,
    line_number,
    take_malformed_lines,
)

log = logging.getLogger(__name__)

LINES = "purchase_lines"
REJECTED = "rejected_lines"
STAGED = "classified_lines"
ORDERS = "order_lines"
REPEATED = "repeated_hashes"

#: The largest value of one line (quantity x unit price, or the amount), in absolute terms. Larger
#: values are data errors (a trillion for one line), and bounding them keeps every sum finite.
MAX_LINE_AMOUNT = 1e12

#: Reasons a line is rejected, in the order they are checked.
REJECTION_REASONS: dict[str, str] = {
    "malformed_line": "the CSV line does not split into the file's columns (its text is in line_text)",
    "missing_customer_id": "the customer id is empty or one of data.null_markers",
    "customer_id_too_long": f"the customer id has more than {MAX_ID_LENGTH} characters (the published table's limit)",
    "missing_timestamp": "the timestamp is empty or one of data.null_markers",
    "unparseable_timestamp": "the timestamp does not match data.timestamp_format",
    "implausible_timestamp": "the purchase date is outside data.plausible_dates",
    "missing_amount": "the amount, quantity or unit price is empty or one of data.null_markers",
    "non_numeric_amount": "the amount, quantity or unit price is not a finite number written with data.decimal "
                          "and data.thousands",
    "amount_out_of_range": f"the line's value (quantity x unit price, or the amount) is over {MAX_LINE_AMOUNT:.0e} "
                           "in absolute value",
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

#: Used lines counted apart in :meth:`ContractReport.as_frame` (status ``used``).
USED_REASONS: dict[str, str] = {
    "duplicate_kept": "the line repeats an earlier line exactly and data.duplicates is 'keep'",
}

#: Rejections that leave a line without a customer: the customer is not seen through that line.
NO_CUSTOMER_REASONS = ("malformed_line", "missing_customer_id", "customer_id_too_long")

#: The struct field of a rejected line holding a malformed line's own text.
LINE_TEXT = "line_text"

#: A warning is given when more than this share of the lines read falls outside the window, and
#: when the as-of date is more than this many days after the last valid purchase.
OUTSIDE_SHARE_WARNING = 0.5
STALE_AS_OF_DAYS = 365


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
    #: Used lines that repeat an earlier line exactly, kept with ``data.duplicates: keep``
    #: (with ``reject`` the repetitions are counted as ``duplicate_line`` instead).
    duplicates_kept: int = 0
    #: The last day with a valid purchase (used or outside the window), if any.
    last_valid_purchase: dt.date | None = None
    #: Usable but doubtful results: what looks wrong, the values seen and the setting to check.
    warnings: list[str] = field(default_factory=list)

    def as_frame(self) -> pd.DataFrame:
        """The counts as a table: one row per status and reason (kept duplicates are used lines with
        the reason ``duplicate_kept``); the lines add up to the lines read."""
        rows = [("used", "", self.rows_used - self.duplicates_kept)]
        if self.duplicates_kept:
            rows.append(("used", "duplicate_kept", self.duplicates_kept))
        rows += [("rejected", r, n) for r, n in self.rejected_by_reason.items()]
        rows += [("outside_window", r, n) for r, n in self.outside_by_reason.items()]
        return pd.DataFrame(rows, columns=["status", "reason", "lines"])


def _is_text(sql_type: str) -> bool:
    return sql_type.upper() in ("VARCHAR", "TEXT", "STRING") or sql_type.upper().startswith("VARCHAR")


def _text(expr: str, d: Dialect, null_markers: list[str] | None = None) -> str:
    """Trimmed text, NULL when empty or a null marker."""
    return d.trimmed(f"CAST({expr} AS {d.text_type})", null_markers or ())


def _customer_id(expr: str, sql_type: str, d: Dialect, null_markers: list[str]) -> str:
    upper = sql_type.upper()
    if upper in ("DOUBLE", "FLOAT", "REAL"):
        # Ids stored as floats (17850.0) are whole numbers written without the fraction; NaN is no id
        # (not the customer 'nan'), nor is an infinity.
        return (f"CASE WHEN NOT {d.is_finite(expr)} THEN NULL "
                f"WHEN {expr} = floor({expr}) AND abs({expr}) < 1e15 "
                f"THEN CAST(CAST({expr} AS BIGINT) AS {d.text_type}) ELSE CAST({expr} AS {d.text_type}) END")
    if upper.startswith("DECIMAL"):
        return (f"CASE WHEN {expr} = floor({expr}) AND abs({expr}) < 1e15 "
                f"THEN CAST(CAST({expr} AS BIGINT) AS {d.text_type}) ELSE CAST({expr} AS {d.text_type}) END")
    return _text(expr, d, null_markers if _is_text(sql_type) else None)


def _cleaned(expr: str, sql_type: str, d: Dialect, null_markers: list[str]) -> str:
    """A source column ready to check: trimmed text (NULL when empty or a null marker) for text, else the value."""
    return _text(expr, d, null_markers) if _is_text(sql_type) else expr


def _to_number(expr: str, sql_type: str, data: DataConfig, d: Dialect) -> str:
    """A cleaned column as a double, NULL when it is not a number written the configured way.

    Text must be a plain number with ``data.decimal`` as the decimal mark
    (``-12.5``, ``1e3``), or one grouped by ``data.thousands`` in threes
    (``1,234,567.89``). Anything else is NULL: ``12,50`` under ``decimal: "."``
    or ``1,2,3`` is a bad value, not 1250 or 123. The pattern is checked on
    both engines, so neither accepts its own extras (DuckDB's ``1_000``,
    Spark's ``1.5d``).
    """
    if not _is_text(sql_type):
        return f"TRY_CAST({expr} AS DOUBLE)"
    mark = "[.]" if data.decimal == "." else ","
    plain = f"[+-]?([0-9]+({mark}[0-9]*)?|{mark}[0-9]+)([eE][+-]?[0-9]+)?"

    def as_double(text: str) -> str:
        if data.decimal != ".":
            text = f"replace({text}, {d.literal(data.decimal)}, '.')"
        return f"TRY_CAST({text} AS DOUBLE)"

    number = f"CASE WHEN {d.full_match(expr, plain)} THEN {as_double(expr)}"
    if data.thousands is not None:
        group = "[.]" if data.thousands == "." else data.thousands
        grouped = f"[+-]?[0-9]{{1,3}}({group}[0-9]{{3}})+({mark}[0-9]*)?"
        ungrouped = f"replace({expr}, {d.literal(data.thousands)}, {d.literal('')})"
        number += f" WHEN {d.full_match(expr, grouped)} THEN {as_double(ungrouped)}"
    return number + " END"


def plausible_dates(data: DataConfig, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The first and last plausible purchase days: ``data.plausible_dates``, the last defaulting to
    366 days after ``today`` (the day of the run)."""
    earliest, latest = data.plausible_dates
    if latest is None:
        latest = (today or dt.date.today()) + dt.timedelta(days=366)
    return earliest, latest


#: ``contract_sql``'s default: the hashes that repeat are found by a group-by in the same query.
GROUP_HASHES = "SELECT __hash FROM numbered GROUP BY __hash HAVING count(*) > 1"


def contract_sql(data: DataConfig, types: dict[str, str], line: str = "row_number() OVER ()",
                 d: Dialect = DUCKDB, repeated: str | None = GROUP_HASHES, malformed: bool = False,
                 plausible: tuple[dt.date, dt.date] | None = None) -> str:
    """The query that classifies every line of ``raw_purchases`` (one row per line).

    Each source column is cleaned once (trimmed text, NULL when empty or a
    null marker) and parsed once; the reasons then test those columns.
    ``repeated`` is a query of the line hashes (column ``__hash``,
    :meth:`Dialect.hash` of every column) that occur more than once: only
    lines with such a hash can be duplicates. With ``None`` no line is a
    duplicate (a cheaper query, for a source known to have no repeated hash
    or for questions duplicates cannot change). ``malformed``: the source
    has the column :data:`segml.sources.MALFORMED`, a malformed line's text.
    ``plausible`` is the first and last plausible day (:func:`plausible_dates`).

    With ``data.duplicates: keep`` a duplicate goes on to the checks after
    ``duplicate_line`` and the column ``__dup`` marks it.
    """
    cols = data.columns
    quote = d.ident
    all_columns = ", ".join(quote(c) for c in types)
    ts_type = types[cols.timestamp]
    markers = data.null_markers
    earliest, latest = plausible or plausible_dates(data)

    # Cleaned columns (trimmed, NULL when empty or a null marker): __cid, __c_<name>;
    # then parsed numbers __q, __p (or __v for a single amount) and the time __ts.
    cleaned = [f"{_customer_id(quote(cols.customer_id), types[cols.customer_id], d, markers)} AS __cid",
               f"{_cleaned(quote(cols.timestamp), ts_type, d, markers)} AS __c_ts"]

    def text_column(name: str, short: str) -> None:
        cleaned.append(f"{_cleaned(quote(name), types[name], d, markers)} AS __c_{short}")

    if cols.amount is not None:
        text_column(cols.amount, "v")
        parsed = [f"{_to_number('__c_v', types[cols.amount], data, d)} AS __v"]
        missing_amount = "__c_v IS NULL"
        bad_number = f"(__v IS NULL OR NOT {d.is_finite('__v')})"
        zero_price, negative_price, zero_quantity = "__v = 0", "false", "false"
        negative = "__v < 0"
        magnitude = "abs(__v)"
    else:
        q_name, p_name = cols.quantity or "", cols.unit_price or ""
        text_column(q_name, "q")
        text_column(p_name, "p")
        parsed = [f"{_to_number('__c_q', types[q_name], data, d)} AS __q",
                  f"{_to_number('__c_p', types[p_name], data, d)} AS __p"]
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
        text_column(cols.order_id, "order")
        order_key = f"COALESCE(__c_order, {day})"
    else:
        cleaned.append("NULL AS __c_order")
        order_key = day
    # Attributes read from the lines (data.attributes): cleaned text, kept for used lines only.
    for name, spec in data.attributes.items():
        cleaned.append(f"{_text(quote(spec.column), d, markers)} AS __a_{name}")
    attribute_columns = "".join(f", CASE WHEN __reason IS NULL THEN __a_{name} END AS __a_{name}"
                                for name in data.attributes)
    prefix = data.returns.cancel_prefix
    cancelled = (f"substring(__c_order, 1, {len(prefix)}) = {d.literal(prefix)}"
                 if prefix and cols.order_id else "false")
    exclude_returns = "true" if data.returns.policy == "exclude" else "false"
    # Lines dated from the first plausible day up to the end of the last one.
    too_early = f"__ts < {d.timestamp_literal(earliest.isoformat())}"
    too_late = (f"__ts >= {d.timestamp_literal((latest + dt.timedelta(days=1)).isoformat())}"
                if latest < dt.date.max else "false")
    long_id = d.longer_than("__cid", MAX_ID_LENGTH) if _is_text(types[cols.customer_id]) else "false"

    reasons = [
        ("malformed_line", "__malformed IS NOT NULL" if malformed else "false"),
        ("missing_customer_id", "__cid IS NULL"),
        ("customer_id_too_long", long_id),
        ("missing_timestamp", "__c_ts IS NULL"),
        ("unparseable_timestamp", "__ts IS NULL"),
        ("implausible_timestamp", f"({too_early} OR {too_late})"),
        ("missing_amount", missing_amount),
        ("non_numeric_amount", bad_number),
        ("amount_out_of_range", f"{magnitude} > {MAX_LINE_AMOUNT:.0e}"),
        ("zero_price", zero_price),
        ("negative_price", negative_price),
        ("zero_quantity", zero_quantity),
        ("duplicate_line", "__duplicate"),
        ("return_excluded", f"{exclude_returns} AND __ret"),
    ]
    assert [name for name, _ in reasons] == list(REJECTION_REASONS)
    reasons = [(name, cond) for name, cond in reasons if cond != "false"]

    def first_reason(candidates: list[tuple[str, str]]) -> str:
        # The conditions test columns parsed in an earlier step, so a CASE parses nothing twice
        # (a list of every test, then its first true position, was 10% slower on DuckDB).
        return "CASE " + " ".join(f"WHEN {cond} THEN {sql_string(name)}" for name, cond in candidates) + " END"

    keep = data.duplicates == "keep"
    if keep:
        # A kept duplicate is a line like any other: the checks after duplicate_line still apply.
        after = reasons[[name for name, _ in reasons].index("duplicate_line") + 1:]
        later = first_reason(after) if after else "NULL"
        classified = f"""classified_first AS (
            SELECT *, {first_reason(reasons)} AS __first FROM checked
        ), classified AS (
            SELECT *, CASE WHEN __first = 'duplicate_line' THEN {later} ELSE __first END AS __reason,
                   COALESCE(__first = 'duplicate_line', false) AS __dup
            FROM classified_first
        )"""
    else:
        classified = f"classified AS (SELECT *, {first_reason(reasons)} AS __reason FROM checked)"

    # Exact duplicates: only the few lines whose 64-bit hash repeats are
    # compared column by column (so a hash collision never makes a false
    # duplicate) and numbered in line order.
    same_as_first = " AND ".join(f"{c} IS NOT DISTINCT FROM first_value({c}) OVER same_hash" for c in
                                 [quote(name) for name in types])
    raw_fields = {name: quote(name) for name in types}
    if malformed:
        raw_fields[LINE_TEXT if LINE_TEXT not in types else f"__{LINE_TEXT}"] = "__malformed"
    raw_struct = d.pack(raw_fields)
    own = all_columns + (f", {quote(MALFORMED)} AS __malformed" if malformed else "")
    if repeated is None:
        numbered_sql = f"SELECT {own}, {line} AS __line FROM {RAW}"
        duplicates, scanned, duplicate = "", "numbered", "false"
    else:
        numbered_sql = f"SELECT {own}, {line} AS __line, {d.hash(all_columns)} AS __hash FROM {RAW}"
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
        ), {classified}
        SELECT __line, __cid, __ts, __ret, __reason,{" __dup," if keep else ""}
               {order_key} AS __order,
               CASE WHEN __reason IS NULL
                    THEN CASE WHEN __ret THEN -{magnitude} ELSE {magnitude} END END AS __amount,
               CASE WHEN __reason IS NOT NULL THEN {raw_struct} END AS __raw{attribute_columns}
        FROM classified
    """


def window_of(window: WindowConfig, last_valid: dt.datetime | None) -> tuple[dt.date, dt.date | None]:
    """The as-of date and window start: ``window.as_of``, else the day after the last valid purchase."""
    as_of = window.as_of
    if as_of is None:
        as_of = dt.date.today() if last_valid is None else last_valid.date() + dt.timedelta(days=1)
    window_start = as_of - dt.timedelta(days=window.lookback_days) if window.lookback_days else None
    return as_of, window_start


def last_valid_sql(data: DataConfig, types: dict[str, str], line: str, d: Dialect = DUCKDB,
                   malformed: bool = False, plausible: tuple[dt.date, dt.date] | None = None) -> str:
    """The time of the last valid line, for the default as-of date.

    The duplicate check is left out: a duplicate shares its original's time.
    A line dated outside ``data.plausible_dates`` is not valid, so a stray
    2999 never moves the as-of date.
    """
    quick = contract_sql(data, types, line, d, repeated=None, malformed=malformed, plausible=plausible)
    return f"SELECT max(__ts) FROM ({quick}) AS __quick WHERE __reason IS NULL"


def lines_sql(as_of: dt.date, window_start: dt.date | None, d: Dialect = DUCKDB, keep: bool = False,
              attributes: tuple[str, ...] = ()) -> str:
    """The ``purchase_lines`` view over the classified lines: status and reason as of ``as_of``.

    ``source`` holds the source's own values of a rejected line (NULL otherwise).
    With ``keep`` (``data.duplicates: keep``) the column ``duplicate`` marks
    the kept repetitions of an earlier line. Each of ``attributes`` (``data.attributes``) is a column
    ``a_<name>``: the line's value as trimmed text, on used lines only.
    """
    outer = "".join(f", a_{name}" for name in attributes)
    inner = "".join(f", __a_{name} AS a_{name}" for name in attributes)
    start_sql = d.timestamp_literal(window_start.isoformat()) if window_start else "NULL"
    as_of_sql = d.timestamp_literal(as_of.isoformat())
    duplicate = ", duplicate" if keep else ""
    return f"""
        SELECT line, customer_id, ts, order_key, amount, is_return, {status_of("reason")} AS status, reason,
            source{duplicate}{outer}
        FROM (
            SELECT __line AS line, __cid AS customer_id, __ts AS ts, __order AS order_key,
                __amount AS amount, __ret AS is_return{inner},
                CASE WHEN __reason IS NOT NULL THEN __reason
                     WHEN __ts >= {as_of_sql} THEN 'after_as_of'
                     WHEN __ts < {start_sql} THEN 'before_window' END AS reason,
                __raw AS source{", __dup AS duplicate" if keep else ""}
            FROM {STAGED}
        ) AS __windowed
    """


def orders_sql(d: Dialect = DUCKDB, keep: bool = False, attributes: tuple[str, ...] = ()) -> str:
    """The ``order_lines`` table: ``purchase_lines`` summed per customer, order and reason.

    The reason alone tells the status (:func:`status_of`); purchase days
    rather than times (the features count whole days) and no separate
    status keep each of the tens of millions of orders small, which matters
    most once the table outgrows ``duckdb.memory_limit`` and spills. With
    ``keep``, ``duplicates`` counts the kept repetitions among the lines. Each of ``attributes``
    is ``a_<name>``: the value of the latest used line that has one, with its time and line number
    (a struct, so the latest of a customer's orders is found the same way; DuckDB only).
    """
    duplicates = "count(*) FILTER (WHERE duplicate) AS duplicates," if keep else ""
    if d.rejected_rows:
        # Each rejected line a row of its own, its number a grouping key (NULL on every other line);
        # Spark's rejected_lines reads its values from the source by that number. Values in the
        # aggregation, or a list aggregate, would make Spark's aggregation of every order slower.
        rejected = "CASE WHEN status = 'rejected' THEN line END AS rejected_line"
        rejected_keys = ", CASE WHEN status = 'rejected' THEN line END"
    else:
        rejected = (f"{d.collect(d.pack({'line': 'line', 'source': 'source'}))} FILTER (WHERE status = 'rejected') "
                    "AS rejected")
        rejected_keys = ""
    duplicates += "".join(f"max(struct_pack(t := ts, l := line, v := a_{name})) FILTER "
                          f"(WHERE reason IS NULL AND a_{name} IS NOT NULL) AS a_{name}," for name in attributes)
    return f"""
        SELECT customer_id, order_key, reason, count(*) AS lines, {duplicates}
            max(CAST(ts AS DATE)) FILTER (WHERE NOT is_return) AS last_purchase,
            min(CAST(ts AS DATE)) FILTER (WHERE NOT is_return) AS first_purchase,
            {d.exact_sum("amount")} AS amount,
            {rejected}
        FROM {LINES}
        GROUP BY customer_id, order_key, reason{rejected_keys}
    """


def status_of(reason: str) -> str:
    """SQL for a line's status from its reason: ``used`` without one, else ``rejected`` or ``outside_window``."""
    window = ", ".join(sql_string(r) for r in WINDOW_REASONS)
    return (f"CASE WHEN {reason} IS NULL THEN 'used' WHEN {reason} IN ({window}) THEN 'outside_window' "
            "ELSE 'rejected' END")


def rejected_sql(d: Dialect = DUCKDB) -> str:
    """The ``rejected_lines`` view: line number, reason and the source's own columns (for an
    engine whose ``order_lines`` holds the lists of rejected lines, not :attr:`Dialect.rejected_rows`)."""
    return f"""
        SELECT __r.line AS line, reason, {d.unpack('__r.source')}
        FROM (SELECT reason, {d.explode('rejected')} AS __r FROM {ORDERS} WHERE reason IS NOT NULL) AS __rejected
    """


def counts_sql(keep: bool = False) -> str:
    """Per status and reason, from ``order_lines``: the lines, the last purchase day and the kept
    duplicates (0 unless ``keep``)."""
    duplicates = "sum(duplicates)" if keep else "0"
    return (f"SELECT {status_of('reason')} AS status, reason, sum(lines) AS n, max(last_purchase) AS last_purchase, "
            f"{duplicates} AS duplicates FROM {ORDERS} GROUP BY reason")


def window_warnings(rows_read: int, outside: dict[str, int], as_of: dt.date, window_start: dt.date | None,
                    last_valid: dt.date | None) -> list[str]:
    """What looks wrong about the window: most lines outside it, or an as-of date long after the
    last valid purchase. Each message gives the values seen and the setting to check."""
    warnings = []
    n_outside = sum(outside.values())
    if rows_read and n_outside > OUTSIDE_SHARE_WARNING * rows_read:
        lookback = f"{(as_of - window_start).days} days" if window_start else "unset"
        warnings.append(
            f"{n_outside:,} of {rows_read:,} lines ({n_outside / rows_read:.0%}) fall outside the window: "
            f"{outside.get('after_as_of', 0):,} on or after the as-of date {as_of}, "
            f"{outside.get('before_window', 0):,} before the look-back start {window_start or '-'}; "
            f"check window.as_of ({as_of}) and window.lookback_days ({lookback})")
    if last_valid is not None and (as_of - last_valid).days > STALE_AS_OF_DAYS:
        days = (as_of - last_valid).days
        warnings.append(
            f"the as-of date {as_of} is {days:,} days after the last valid purchase ({last_valid}): every "
            f"customer's recency is over {STALE_AS_OF_DAYS} days; set window.as_of to "
            f"{last_valid + dt.timedelta(days=1)} or leave it out (the day after the last valid purchase)")
    return warnings


def build_report(rows_read: int, counts: list[tuple], as_of: dt.date, window_start: dt.date | None,
                 fingerprint: str = "") -> ContractReport:
    """The contract's accounting from the rows of :func:`counts_sql` (status, reason, lines, last
    purchase day, kept duplicates); fails when nothing is usable and warns about a doubtful window."""
    rejected = {r: n for s, r, n, _, _ in counts if s == "rejected"}
    outside = {r: n for s, r, n, _, _ in counts if s == "outside_window"}
    used = sum(n for s, _, n, _, _ in counts if s == "used")
    valid_days = [day for s, _, _, day, _ in counts if s != "rejected" and day is not None]
    last_valid = max(valid_days) if valid_days else None
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
        duplicates_kept=int(sum(k or 0 for s, _, _, _, k in counts if s == "used")),
        last_valid_purchase=last_valid,
        warnings=window_warnings(rows_read, outside, as_of, window_start, last_valid),
    )
    if report.rows_used + report.rows_rejected + report.rows_outside_window != rows_read:
        raise AssertionError(f"line counts do not reconcile: {report}")  # a bug in segml, never the data
    log.info("data contract: %d read, %d used, %d rejected, %d outside the window (as of %s)",
             rows_read, used, report.rows_rejected, report.rows_outside_window, as_of)
    for warning in report.warnings:
        log.warning("data contract: %s", warning)
    if used == 0:
        raise NoUsableLinesError(
            f"no usable purchase lines: {rows_read} read, rejected {report.rejected_by_reason}, "
            f"outside the window {report.outside_by_reason} (as of {as_of}); "
            "check data.columns, data.timestamp_format and window.as_of in the configuration", report)
    return report


def classify_lines(con: duckdb.DuckDBPyConnection, data: DataConfig, window: WindowConfig,
                   today: dt.date | None = None) -> ContractReport:
    """Classify every line of ``raw_purchases`` and fix the as-of window.

    Defines the view ``purchase_lines`` (columns ``line``, ``customer_id``,
    ``ts``, ``order_key``, ``amount``, ``is_return``, ``status``, ``reason``,
    ``source``), reads it once into ``order_lines`` and returns the counts,
    which always add up to the lines read. ``today`` (the day of the run by
    default) places the default last plausible day.

    The hash of every line is read and sorted first: it finds the hashes that
    repeat (only their lines are compared for duplicates, and a source
    without any skips the comparison) and gives the source's fingerprint.
    Sorting 8 bytes a line beats DuckDB's group-by over every line by half,
    and by far once that group-by outgrows ``duckdb.memory_limit`` and spills.
    That same read finds a CSV's malformed lines, which then join the source.
    """
    types = column_types(con)
    if data.attributes:
        check_line_attribute_columns(list(types), data.attributes)
    hashes = line_hashes(con)
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    n_malformed, malformed_hash_sum = take_malformed_lines(con)
    rows_read = len(hashes) + n_malformed
    fingerprint = fingerprint_of(rows_read, int(hashes.sum(dtype=np.uint64)) + malformed_hash_sum)
    del hashes  # 8 bytes a line: gone before the main pass needs the memory
    line, malformed, keep = line_number(con), has_malformed(con), data.duplicates == "keep"
    plausible = plausible_dates(data, today)
    if len(repeated):
        con.register("_repeated", pd.DataFrame({"__hash": repeated}))
        con.execute(f"CREATE OR REPLACE TEMP TABLE {REPEATED} AS SELECT CAST(__hash AS UBIGINT) AS __hash FROM _repeated")
        con.unregister("_repeated")
    last = (con.execute(last_valid_sql(data, types, line, malformed=malformed, plausible=plausible)).fetchone()[0]
            if window.as_of is None else None)
    as_of, window_start = window_of(window, last)
    contract = contract_sql(data, types, line, repeated=f"SELECT __hash FROM {REPEATED}" if len(repeated) else None,
                            malformed=malformed, plausible=plausible)
    con.execute(f"CREATE OR REPLACE VIEW {STAGED} AS {contract}")
    names = tuple(data.attributes)
    con.execute(f"CREATE OR REPLACE VIEW {LINES} AS {lines_sql(as_of, window_start, keep=keep, attributes=names)}")
    con.execute(f"CREATE OR REPLACE TABLE {ORDERS} AS {orders_sql(keep=keep, attributes=names)}")
    con.execute(f"CREATE OR REPLACE VIEW {REJECTED} AS {rejected_sql()}")
    return build_report(rows_read, con.execute(counts_sql(keep)).fetchall(), as_of, window_start,
                        fingerprint=fingerprint)


def rejected_batches(con: duckdb.DuckDBPyConnection, batch_rows: int = 100_000):
    """The rejected lines (as :func:`rejected_lines`) as an Arrow ``RecordBatchReader``, a batch at a time."""
    relation = con.sql(f"SELECT * FROM {REJECTED} ORDER BY line")
    if hasattr(relation, "to_arrow_reader"):  # DuckDB 1.4 and later
        return relation.to_arrow_reader(batch_rows)
    return relation.record_batch(batch_rows)


def rejected_lines(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> pd.DataFrame:
    """The rejected lines with every source column, their line number and reason."""
    limit_sql = f"LIMIT {int(limit)}" if limit is not None else ""
    return con.execute(f"SELECT * FROM {REJECTED} ORDER BY line {limit_sql}").df()
