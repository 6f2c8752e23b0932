"""Customer attributes: where customers live, how old they are, how they signed up.

Attributes come from a source of their own (``customers``: one row per
customer, a file or a database table) or from the purchase lines
(``data.attributes``: per customer, the value on its latest used line). Either
way the raw values go through :func:`type_attributes`, the attributes' data
contract: every value is kept, or counted with a reason, never dropped
silently, and a bad value is never fatal.

Types (``AttributeSpec.type``):

``category``
    Text, trimmed; at most 200 characters.
``number``
    A plain number (``34``, ``2.5``, ``-1e3``) with ``customers.decimal`` as the
    decimal mark; anything else is ``non_numeric_value``.
``date``
    A calendar date (``customers.date_format``, ISO by default) turned into
    whole ``years`` (a birth date: the age) or ``months`` (a signup date:
    months since signup) before the as-of date. A date after the as-of date
    or before 1900 is ``implausible_date``.

Attributes describe segments (:func:`segml.profiles.attribute_profiles`),
travel with the assignments to the CRM, and can be targeted; numeric ones may
also be model features.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segml.config import AttributeSpec, CustomersConfig, data_url
from segml.contract import MAX_ID_LENGTH
from segml.errors import InputDataError
from segml.secrets import mask_url

log = logging.getLogger(__name__)

#: The longest category value kept, in characters: the published column is ``varchar(200)``.
MAX_CATEGORY_LENGTH = 200
#: Dates before this day are not a customer's birth or signup date.
EARLIEST_ATTRIBUTE_DATE = dt.date(1900, 1, 1)

#: Why a customer's attribute value is missing, in the order they are checked. ``*`` in the
#: ``attribute`` column of the counts means the whole row of the customers source.
ATTRIBUTE_REASONS: dict[str, str] = {
    "ok": "the value is kept",
    "missing_customer_id": "a row of the customers source has no customer id (empty or a null marker)",
    "customer_id_too_long": f"a row's customer id has more than {MAX_ID_LENGTH} characters",
    "duplicate_customer_id": "a row repeats the customer id of an earlier row (the first row is used)",
    "unknown_customer_id": "a row's customer id is not a customer of the purchases",
    "no_customer_row": "a customer of the purchases has no row in the customers source",
    "missing_value": "the value is empty or a null marker (from the purchase lines: no used line has one)",
    "value_too_long": f"a category value has more than {MAX_CATEGORY_LENGTH} characters",
    "non_numeric_value": "a number attribute's value is not a plain number",
    "unparseable_date": "a date attribute's value does not match customers.date_format",
    "implausible_date": f"a date attribute's value is after the as-of date or before {EARLIEST_ATTRIBUTE_DATE}",
}

#: Every attribute's column type in frames (``date`` attributes are whole years or months).
FRAME_TYPES = {"category": "object", "number": "float64", "date": "Int64"}


@dataclass
class Attributes:
    """Customers' attribute values and the contract's accounting of them."""

    #: One row per customer of the purchases, indexed by ``customer_id``; one typed column per
    #: attribute (NaN / NA where the value is missing, with its reason in ``problems``).
    values: pd.DataFrame
    #: ``source``, ``attribute``, ``reason``, ``customers``: how every value was accounted for.
    counts: pd.DataFrame
    #: ``source``, ``customer_id``, ``attribute``, ``reason``, ``value``: every value not kept, as read.
    problems: pd.DataFrame
    specs: dict[str, AttributeSpec]


_PLAIN = {".": re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"),
          ",": re.compile(r"[+-]?(\d+(,\d*)?|,\d+)([eE][+-]?\d+)?")}


def _numbers(text: pd.Series, decimal: str) -> pd.Series:
    """Plain numbers with ``decimal`` as the mark; NaN for anything else (checked apart by the caller)."""
    strings = text.astype("string")
    plain = strings.str.fullmatch(_PLAIN[decimal].pattern).fillna(False).astype(bool)
    values = pd.to_numeric(strings.where(plain).str.replace(",", ".", regex=False), errors="coerce").astype(float)
    return values.where(np.isfinite(values))


def whole_units_between(start: pd.Series, end: dt.date, unit: str) -> pd.Series:
    """Whole years or months from each date of ``start`` to ``end`` (an age on its birthday is whole)."""
    years, months, days = start.dt.year, start.dt.month, start.dt.day
    if unit == "years":
        before_birthday = (months > end.month) | ((months == end.month) & (days > end.day))
        return (end.year - years - before_birthday).astype("Int64")
    return ((end.year - years) * 12 + (end.month - months) - (days > end.day)).astype("Int64")


def type_attributes(raw: pd.DataFrame, specs: dict[str, AttributeSpec], as_of: dt.date, customers: pd.Index,
                    *, id_column: str = "customer_id", source: str = "customers",
                    null_markers: list[str] | None = None, date_format: str | None = None,
                    decimal: str = ".", check_rows: bool = True) -> Attributes:
    """Typed attribute values of ``customers`` (the customers of the purchases) from ``raw``.

    ``raw`` holds ``id_column`` and each spec's ``column``, as read (text or
    typed). With ``check_rows`` (a customers source) rows without an id,
    with a repeated id or an id that is not among ``customers`` are counted
    (attribute ``*``) and customers without a row are ``no_customer_row``;
    then each value is kept or counted under the first reason of
    :data:`ATTRIBUTE_REASONS` that applies. Pure: nothing is read or logged.
    """
    markers = list(null_markers or [])
    # Object dtype: membership of a million ids is a hash lookup, not a scan of Arrow strings.
    customers = pd.Index(np.asarray(customers, dtype=object), dtype=object, name="customer_id")
    problems: list[pd.DataFrame] = []
    counts: list[tuple[str, str, int]] = []

    def note(rows: pd.DataFrame, attribute: str, reason: str, value: pd.Series | None = None) -> None:
        if len(rows):
            counts.append((attribute, reason, len(rows)))
            problems.append(pd.DataFrame({
                "customer_id": rows["__id"].to_numpy(), "attribute": attribute, "reason": reason,
                "value": (value if value is not None else pd.Series([None] * len(rows), index=rows.index))
                .astype(object).to_numpy()}))

    frame = raw.assign(__id=normalise_text(raw[id_column], markers))
    if check_rows:
        missing = frame["__id"].isna()
        note(frame[missing].assign(__id=None), "*", "missing_customer_id", frame.loc[missing, id_column])
        frame = frame[~missing]
        too_long = frame["__id"].str.len() > MAX_ID_LENGTH
        note(frame[too_long], "*", "customer_id_too_long")
        frame = frame[~too_long]
        repeated = frame["__id"].duplicated(keep="first")
        note(frame[repeated], "*", "duplicate_customer_id")
        frame = frame[~repeated]
        unknown = ~frame["__id"].isin(customers)
        note(frame[unknown], "*", "unknown_customer_id")
        frame = frame[~unknown]
        without = customers[~customers.isin(frame["__id"])]
        note(pd.DataFrame({"__id": without}), "*", "no_customer_row")
    # A customer without a row is counted once, as no_customer_row, not again per attribute.
    present = customers.isin(frame["__id"]) if check_rows else np.ones(len(customers), dtype=bool)
    frame = frame.set_index("__id").reindex(customers)
    frame.index.name = "customer_id"

    values = pd.DataFrame(index=frame.index)
    rows = pd.DataFrame({"__id": frame.index.to_numpy()})
    for name, spec in specs.items():
        column = frame[spec.column]
        text = normalise_text(column, markers)
        empty = text.isna().to_numpy() & present
        note(rows[empty], name, "missing_value")
        if spec.type == "category":
            bad = (text.str.len() > MAX_CATEGORY_LENGTH).fillna(False).to_numpy()
            note(rows[bad], name, "value_too_long", text[bad].str.slice(0, MAX_CATEGORY_LENGTH) + "...")
            kept = text.where(~bad).astype(object)
        elif spec.type == "number":
            number = (pd.to_numeric(column, errors="coerce").astype(float)
                      if pd.api.types.is_numeric_dtype(column) else _numbers(text, decimal))
            bad = (number.isna() & text.notna()).to_numpy()
            note(rows[bad], name, "non_numeric_value", text[bad])
            kept = number.astype("float64")
        else:
            if pd.api.types.is_datetime64_any_dtype(column):
                when = column
            else:
                when = pd.to_datetime(text, format=date_format or "%Y-%m-%d", errors="coerce")
            when = pd.Series(pd.DatetimeIndex(when).tz_localize(None) if getattr(when.dt, "tz", None) else when,
                             index=text.index)
            unparseable = (when.isna() & text.notna()).to_numpy()
            note(rows[unparseable], name, "unparseable_date", text[unparseable])
            implausible = ((when.dt.date > as_of) | (when.dt.date < EARLIEST_ATTRIBUTE_DATE)).fillna(False).to_numpy()
            note(rows[implausible], name, "implausible_date", text[implausible])
            kept = whole_units_between(when.where(~implausible), as_of, spec.unit)
        n_kept = int(kept.notna().sum())
        if n_kept:
            counts.append((name, "ok", n_kept))
        values[name] = kept.to_numpy()
        values[name] = values[name].astype(FRAME_TYPES[spec.type])
    # Rows first (attribute '*'), then each attribute in the configuration's order, reasons in theirs.
    position = {name: i for i, name in enumerate(["*", *specs])}
    counts.sort(key=lambda c: (position[c[0]], list(ATTRIBUTE_REASONS).index(c[1])))
    count_frame = pd.DataFrame(counts, columns=["attribute", "reason", "customers"])
    count_frame.insert(0, "source", source)
    problem_frame = (pd.concat(problems, ignore_index=True) if problems else
                     pd.DataFrame(columns=["customer_id", "attribute", "reason", "value"]))
    problem_frame.insert(0, "source", source)
    return Attributes(values=values, counts=count_frame, problems=problem_frame, specs=dict(specs))


def normalise_text(column: pd.Series, null_markers: list[str]) -> pd.Series:
    """Values as the data contract reads them, as trimmed text (object dtype): None when missing,
    empty or a null marker; a whole float without its fraction (``17850.0`` is ``17850``); a
    date or time as its ISO day (``2024-03-01``); NaN and infinities are missing."""
    if pd.api.types.is_datetime64_any_dtype(column):
        text = column.dt.strftime("%Y-%m-%d").astype("string")
    elif pd.api.types.is_float_dtype(column):
        values = column.astype(float)
        finite = np.isfinite(values)
        whole = finite & (values == np.floor(values)) & (values.abs() < 1e15)
        text = values.astype("string").mask(whole, values.where(whole, 0).astype("int64").astype("string"))
        text = text.mask(~finite)
    elif pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        text = column.astype("string")
    else:
        values = column.astype(object)
        text = values.astype("string")
        if pd.api.types.infer_dtype(values, skipna=True) in ("date", "datetime", "mixed"):
            dates = values.map(lambda v: isinstance(v, dt.date))  # dates from a database driver
            text = text.mask(dates, values[dates].map(lambda v: v.isoformat()[:10]).astype("string"))
        text = text.str.strip()
    text = text.mask(text.isna() | (text == "") | text.isin(null_markers))
    return text.astype(object).where(text.notna(), None)


def combine(parts: list[Attributes]) -> Attributes | None:
    """Attributes from several sources (the customers source and the purchase lines) as one."""
    if not parts:
        return None
    values = pd.concat([p.values for p in parts], axis=1)
    return Attributes(values=values, counts=pd.concat([p.counts for p in parts], ignore_index=True),
                      problems=pd.concat([p.problems for p in parts], ignore_index=True),
                      specs={k: v for p in parts for k, v in p.specs.items()})


def read_customers(customers: CustomersConfig, con=None) -> pd.DataFrame:
    """The customers source as a frame: the id column and every attribute's column, as stored
    (a CSV's values as text). A missing column fails naming it, the columns found and the key."""
    import duckdb

    from segml.dialects import sql_string

    wanted = [customers.id, *dict.fromkeys(s.column for s in customers.attributes.values())]
    if customers.path is not None:
        path = Path(customers.path)
        if not path.exists():
            raise InputDataError(f"customers file {str(path)!r} not found; check customers.path in the configuration")
        suffixes = [s.lower() for s in path.suffixes]
        fmt = customers.format if customers.format != "auto" else (
            "parquet" if ".parquet" in suffixes or ".pq" in suffixes else "csv")
        con = con or duckdb.connect(":memory:")
        csv = customers.csv
        scan = (f"read_parquet({sql_string(str(path))})" if fmt == "parquet" else
                f"read_csv({sql_string(str(path))}, all_varchar = true, header = {str(csv.header).lower()}, "
                f"delim = {sql_string(csv.delimiter if csv.delimiter != 'whitespace' else ' ')}, "
                f"quote = {sql_string(csv.quote)}, encoding = {sql_string(csv.encoding)})")
        try:
            found = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
            _check_columns(found, customers)
            columns = ", ".join(f'"{c}"' for c in wanted)
            return con.execute(f"SELECT {columns} FROM {scan}").df()
        except duckdb.Error as exc:
            raise InputDataError(f"cannot read customers file {str(path)!r}: {str(exc).splitlines()[0]}") from None
    import sqlalchemy as sa

    engine = sa.create_engine(data_url(customers, os.environ) or "")
    statement = (sa.select(sa.text("*")).select_from(sa.table(customers.table)) if customers.table
                 else sa.text(customers.query or ""))
    try:
        with engine.connect() as connection:
            frame = pd.read_sql(statement, connection)
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ else exc
        raise InputDataError(
            f"cannot read the customers source from {mask_url(engine.url.render_as_string(False))}: "
            f"{mask_url(str(getattr(cause, 'orig', None) or cause).splitlines()[0])}; check customers.url and "
            "customers.table or customers.query") from None
    finally:
        engine.dispose()
    _check_columns(list(frame.columns), customers)
    return frame[wanted]


def _check_columns(found: list[str], customers: CustomersConfig) -> None:
    keys = [("customers.id", customers.id),
            *[(f"customers.attributes.{name}.column", s.column) for name, s in customers.attributes.items()]]
    missing = [f"column {column!r} not found (set {key})" for key, column in keys if column not in found]
    if missing:
        raise InputDataError(f"customers source: {'; '.join(missing)}; its columns are {found}")


def check_line_attribute_columns(found: list[str], specs: dict[str, AttributeSpec]) -> None:
    """Fail naming every ``data.attributes`` column the purchase source lacks."""
    missing = [f"column {s.column!r} not found (set data.attributes.{name}.column)"
               for name, s in specs.items() if s.column not in found]
    if missing:
        raise InputDataError(f"{'; '.join(missing)}; the purchase source's columns are {found}")


def model_attributes(features: pd.DataFrame, excluded: pd.DataFrame, attributes: Attributes | None,
                     names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``features`` with the numeric attributes the model uses (``names``) as columns; customers
    missing one of them move to ``excluded`` with the reason ``missing_attribute``."""
    if not names:
        return features, excluded
    if attributes is None:
        raise InputDataError(f"features lists attributes {names}, but no attributes were read")
    joined = features.join(attributes.values[names])
    missing = joined[names].isna().any(axis=1)
    if missing.any():
        left = joined[missing].drop(columns=names).reset_index().assign(reason="missing_attribute")
        excluded = pd.concat([excluded, left.astype({"recency_days": "Int64", "tenure_days": "Int64"})],
                             ignore_index=True)
        log.warning("%d customers lack a value of %s and are not segmented (missing_attribute)",
                    int(missing.sum()), names)
    return joined[~missing].astype({n: "float64" for n in names}), excluded


def line_attributes(con, specs: dict[str, AttributeSpec], as_of: dt.date, customers: pd.Index,
                    null_markers: list[str]) -> Attributes:
    """Attributes from the purchase lines (``data.attributes``): per customer, the value on its latest
    used line that has one (the latest time, then the last line), typed like a customers source's.

    Needs the ``order_lines`` table of :func:`segml.validation.classify_lines`.
    """
    from segml.validation import ORDERS

    picks = ", ".join(f"struct_extract(max(a_{name}), 'v') AS {name}" for name in specs)
    raw = con.execute(f"SELECT customer_id, {picks} FROM {ORDERS} WHERE reason IS NULL GROUP BY customer_id").df()
    named = {name: spec.model_copy(update={"column": name}) for name, spec in specs.items()}
    return type_attributes(raw, named, as_of, customers, source="purchase lines", null_markers=null_markers,
                           check_rows=False)


def collect_attributes(con, config, as_of: dt.date, customers: pd.Index) -> Attributes | None:
    """Every configured attribute of ``customers``: from the customers source and from the purchase
    lines (after :func:`segml.validation.classify_lines` on ``con``); None without any."""
    parts = []
    if config.customers is not None:
        c = config.customers
        parts.append(type_attributes(read_customers(c, con), c.attributes, as_of, customers, id_column=c.id,
                                     null_markers=c.null_markers, date_format=c.date_format, decimal=c.decimal))
    if config.data.attributes:
        parts.append(line_attributes(con, config.data.attributes, as_of, customers, config.data.null_markers))
    found = combine(parts)
    if found is not None:
        bad = found.counts[found.counts["reason"] != "ok"]
        if len(bad):
            log.warning("customer attributes: %s", "; ".join(
                f"{r.customers:,} {r.reason} ({r.attribute}, {r.source})" for r in bad.itertuples()))
    return found


def attribute_tables(assignments: pd.DataFrame, attributes: Attributes) -> dict[str, pd.DataFrame]:
    """A run's attribute files: ``segment_attributes`` (:func:`segml.profiles.attribute_profiles`),
    ``attribute_contract`` (the counts by source, attribute and reason, with their meaning) and
    ``attribute_problems`` (every value not kept)."""
    from segml.profiles import attribute_profiles

    types = {name: spec.type for name, spec in attributes.specs.items()}
    return {
        "segment_attributes": attribute_profiles(assignments, types),
        "attribute_contract": attributes.counts.assign(meaning=attributes.counts["reason"].map(ATTRIBUTE_REASONS)),
        "attribute_problems": attributes.problems,
    }


def attach_attributes(con, config, as_of: dt.date, features: pd.DataFrame, excluded: pd.DataFrame
                      ) -> tuple[Attributes | None, pd.DataFrame, pd.DataFrame]:
    """The configured attributes of every customer seen (segmented or excluded), read on the DuckDB
    connection ``con`` after the data contract; and ``features`` with the numeric attributes the
    model uses, customers missing one moved to ``excluded`` (:func:`model_attributes`)."""
    if not config.attributes:
        return None, features, excluded
    if con is None:
        raise InputDataError(f"customer attributes {sorted(config.attributes)} are read by the DuckDB engine only, "
                             f"not by engine {config.engine!r}; use engine 'duckdb' or leave the attributes out")
    seen = features.index.union(pd.Index(excluded["customer_id"], dtype=object)).sort_values()
    attributes = collect_attributes(con, config, as_of, seen)
    in_model = [f for f in config.features if f in config.attributes]
    features, excluded = model_attributes(features, excluded, attributes, in_model)
    return attributes, features, excluded


def with_attributes(table: pd.DataFrame, attributes: Attributes | None) -> pd.DataFrame:
    """``table`` (one row per ``customer_id``) with one column per attribute, typed, after its own
    columns; as it is without attributes."""
    if attributes is None:
        return table
    values = attributes.values.reindex(table["customer_id"].astype(str))
    return table.assign(**{name: values[name].array for name in attributes.specs})
