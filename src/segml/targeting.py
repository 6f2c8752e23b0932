"""Campaign lists: customers selected by segment and by conditions on their features.

Conditions use a small grammar, parsed here and bound as query parameters, so
text in a condition can never run as SQL or Python::

    condition  := comparison ("and" comparison)*
    comparison := COLUMN OP VALUE | COLUMN "between" VALUE "and" VALUE
    COLUMN     := one of TARGET_COLUMNS
    OP         := < | <= | > | >= | = | !=
    VALUE      := a number (12, 2.5, -3) or a date (2024-01-31)

Anything else is refused with a message that points at the offending part.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from segml.errors import SegmlError
from segml.publish import CURRENT_VIEW, TABLE_COLUMNS, typed

#: Columns a condition may compare, with the kind of value each takes.
TARGET_COLUMNS: dict[str, str] = {
    "recency_days": "number", "frequency": "number", "monetary": "number", "tenure_days": "number",
    "avg_order_value": "number", "segment_probability": "number", "as_of": "date",
}
_OPERATORS = {"<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__", "=": "__eq__", "!=": "__ne__"}
_TOKEN = re.compile(r"\s*(?:(?P<date>\d{4}-\d{2}-\d{2})(?![\w.])|(?P<number>-?\d+(?:\.\d+)?)(?![\w.])"
                    r"|(?P<op><=|>=|!=|<|>|=)|(?P<word>[A-Za-z_]+))")


class ConditionError(SegmlError):
    """A targeting condition is not in the grammar."""


@dataclass(frozen=True)
class Comparison:
    column: str
    operator: str
    value: float | dt.date


def _fail(text: str, position: int, problem: str) -> ConditionError:
    return ConditionError(f"{problem}\n  {text}\n  {' ' * position}^")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            offset = position + (len(text[position:]) - len(text[position:].lstrip()))
            raise _fail(text, offset, f"unexpected {text[offset]!r} in the condition; conditions use column "
                        "names, < <= > >= = !=, between ... and ..., numbers and dates (YYYY-MM-DD)")
        kind = match.lastgroup
        start = match.start(kind)
        tokens.append((kind, match.group(kind), start))
        position = match.end()
    return tokens


def parse_condition(text: str) -> list[Comparison]:
    """Parse one condition string into comparisons (all must hold)."""
    tokens = _tokens(text)
    comparisons, i = [], 0

    def expect_value(column: str) -> float | dt.date:
        nonlocal i
        if i >= len(tokens):
            raise _fail(text, len(text), f"a value is missing after {column!r}")
        kind, value, position = tokens[i]
        wanted = TARGET_COLUMNS[column]
        if kind == "number" and wanted == "number":
            i += 1
            return float(value)
        if kind == "date" and wanted == "date":
            i += 1
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise _fail(text, position, f"{value!r} is not a calendar date") from None
        raise _fail(text, position, f"{column} takes a {wanted}{' (YYYY-MM-DD)' if wanted == 'date' else ''}, "
                                    f"not {value!r}")

    while i < len(tokens):
        kind, word, position = tokens[i]
        if kind != "word" or word.lower() not in TARGET_COLUMNS:
            raise _fail(text, position, f"{word!r} is not a column that can be compared; use one of "
                                        f"{sorted(TARGET_COLUMNS)}")
        column = word.lower()
        i += 1
        if i >= len(tokens):
            raise _fail(text, len(text), f"an operator is missing after {column!r}")
        kind, op, position = tokens[i]
        if kind == "op":
            i += 1
            comparisons.append(Comparison(column, op, expect_value(column)))
        elif kind == "word" and op.lower() == "between":
            i += 1
            low = expect_value(column)
            if i >= len(tokens) or tokens[i][0] != "word" or tokens[i][1].lower() != "and":
                where = tokens[i][2] if i < len(tokens) else len(text)
                raise _fail(text, where, "between needs 'and' between its two values")
            i += 1
            high = expect_value(column)
            comparisons += [Comparison(column, ">=", low), Comparison(column, "<=", high)]
        else:
            raise _fail(text, position, f"expected an operator (< <= > >= = != or between) after {column!r}, "
                                        f"got {op!r}")
        if i < len(tokens):
            kind, word, position = tokens[i]
            if kind != "word" or word.lower() != "and":
                raise _fail(text, position, f"expected 'and' before {word!r}; conditions can only be combined "
                                            "with and")
            i += 1
            if i >= len(tokens):
                raise _fail(text, len(text), "a comparison is missing after 'and'")
    if not comparisons:
        raise ConditionError("the condition is empty")
    return comparisons


class UnknownSegmentError(SegmlError):
    """A requested segment is not in the current publication."""


def check_segments(engine: sa.Engine, segmentation: str, segments: list[str]) -> None:
    """Fail, listing the current segments, when one of ``segments`` (ids or names) is not among them."""
    if not segments:
        return
    view = sa.table(CURRENT_VIEW, *[sa.column(c) for c in TABLE_COLUMNS])
    query = (sa.select(view.c.segment_id, view.c.segment_name).distinct()
             .where(view.c.segmentation == sa.bindparam("segmentation", segmentation)))
    with engine.connect() as connection:
        known = sorted(connection.execute(query).all(), key=lambda r: (len(r[0]), r[0]))
    if not known:
        raise SegmlError(f"nothing is published for {segmentation!r} yet: run `segml run` first")
    words = {w for pair in known for w in pair}
    unknown = [s for s in segments if s not in words]
    if unknown:
        import difflib

        listed = ", ".join(f"{sid} ({name})" for sid, name in known)
        by_case = {w.casefold(): w for w in words}
        hints = [f"{u!r} → {by_case.get(u.casefold()) or (difflib.get_close_matches(u, words, 1) or [''])[0]!r}"
                 for u in unknown if by_case.get(u.casefold()) or difflib.get_close_matches(u, words, 1)]
        raise UnknownSegmentError(
            f"{', '.join(repr(u) for u in unknown)} {'is' if len(unknown) == 1 else 'are'} not a segment id or "
            f"name of the current {segmentation!r} segmentation; its segments are {listed}"
            + (f" (did you mean {'; '.join(hints)}?)" if hints else ""))


def select_customers(engine: sa.Engine, segmentation: str, segments: list[str], conditions: list[str]
                     ) -> pd.DataFrame:
    """Current assignments of ``segmentation`` in ``segments`` (ids or names; all when empty)
    that meet every condition, ordered by customer id.

    A segment that is not in the current publication is an error
    (:class:`UnknownSegmentError`) rather than an empty list.
    """
    view = sa.table(CURRENT_VIEW, *[sa.column(c) for c in TABLE_COLUMNS])
    query = sa.select(view).where(view.c.segmentation == sa.bindparam("segmentation", segmentation))
    comparisons = [c for text in conditions for c in parse_condition(text)]
    if not sa.inspect(engine).has_table("segml_current"):
        raise SegmlError(f"nothing is published for {segmentation!r} yet: run `segml run` first")
    check_segments(engine, segmentation, segments)
    if segments:
        query = query.where(sa.or_(view.c.segment_id.in_(segments), view.c.segment_name.in_(segments)))
    for comparison in comparisons:
        column = view.c[comparison.column]
        query = query.where(getattr(column, _OPERATORS[comparison.operator])(sa.literal(comparison.value)))
    with engine.connect() as connection:
        return typed(pd.read_sql(query.order_by(view.c.customer_id), connection))
