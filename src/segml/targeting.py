"""Campaign lists: customers selected by segment and by conditions on their features and attributes.

Conditions use a small grammar, parsed here and bound as query parameters, so
text in a condition can never run as SQL or Python::

    condition  := comparison ("and" comparison)*
    comparison := COLUMN OP VALUE | COLUMN "between" VALUE "and" VALUE
                | COLUMN ["not"] "in" "(" VALUE ("," VALUE)* ")"
    COLUMN     := one of TARGET_COLUMNS, or a customer attribute
    OP         := < | <= | > | >= | = | !=
    VALUE      := a number (12, 2.5, -3), a date (2024-01-31) or a text ('Germany', 'O''Brien')

A text value is written in straight single quotes, a quote inside it doubled;
it may be compared to a category attribute with ``=``, ``!=`` and ``in`` only,
holds no control characters and at most :data:`MAX_TEXT_LENGTH` characters.
Anything else is refused with a message that points at the offending part.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from segml.errors import SegmlError
from segml.publish import CURRENT_VIEW, TABLE_COLUMNS, current_view, typed

#: Columns a condition may compare, with the kind of value each takes.
TARGET_COLUMNS: dict[str, str] = {
    "recency_days": "number", "frequency": "number", "monetary": "number", "tenure_days": "number",
    "avg_order_value": "number", "segment_probability": "number", "as_of": "date",
}
#: The longest text value a condition may hold: a category attribute's longest value.
MAX_TEXT_LENGTH = 200
#: The kind of value each attribute type takes in a condition (a date attribute holds whole years or months).
ATTRIBUTE_KINDS = {"category": "text", "number": "number", "date": "number"}
_OPERATORS = {"<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__", "=": "__eq__", "!=": "__ne__",
              "in": "in_", "not in": "not_in"}
_TOKEN = re.compile(r"\s*(?:(?P<date>\d{4}-\d{2}-\d{2})(?![\w.])|(?P<number>-?\d+(?:\.\d+)?)(?![\w.])"
                    r"|(?P<op><=|>=|!=|<|>|=)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<text>'(?:[^']|'')*')"
                    r"|(?P<punct>[(),]))")


class ConditionError(SegmlError):
    """A targeting condition is not in the grammar."""


@dataclass(frozen=True)
class Comparison:
    column: str
    operator: str
    value: float | dt.date | str | tuple


def target_columns(attributes: dict[str, str] | None = None) -> dict[str, str]:
    """The columns a condition may compare: :data:`TARGET_COLUMNS` and the customer attributes
    (name -> ``category``, ``number`` or ``date``), with the kind of value each takes."""
    return {**TARGET_COLUMNS, **{name: ATTRIBUTE_KINDS[kind] for name, kind in (attributes or {}).items()}}


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
            if text[offset] == "'":
                raise _fail(text, offset, "this text value has no closing quote; write text in single quotes, "
                                          "a quote inside it doubled: 'O''Brien'")
            raise _fail(text, offset, f"unexpected {text[offset]!r} in the condition; conditions use column "
                        "names, < <= > >= = !=, between ... and ..., in (...), numbers, dates (YYYY-MM-DD) and "
                        "text in straight single quotes ('Germany')")
        kind = match.lastgroup
        start = match.start(kind)
        tokens.append((kind, match.group(kind), start))
        position = match.end()
    return tokens


def _text_value(text: str, token: str, position: int) -> str:
    """The text of a quoted value (quotes removed, doubled quotes made single), checked."""
    value = token[1:-1].replace("''", "'")
    if len(value) > MAX_TEXT_LENGTH:
        raise _fail(text, position, f"this text value has {len(value):,} characters; attribute values have at "
                                    f"most {MAX_TEXT_LENGTH}")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")), None)
    if bad is not None:
        raise _fail(text, position + 1 + token[1:-1].index(bad),
                    f"this text value holds the invisible or control character U+{ord(bad):04X}; type the "
                    "value as the CRM shows it")
    return value


def parse_condition(text: str, columns: dict[str, str] | None = None) -> list[Comparison]:
    """Parse one condition string into comparisons (all must hold).

    ``columns`` (name -> ``number``, ``date`` or ``text``, see
    :func:`target_columns`) are the columns that may be compared;
    :data:`TARGET_COLUMNS` by default.
    """
    columns = columns or TARGET_COLUMNS
    tokens = _tokens(text)
    comparisons, i = [], 0

    def expect_value(column: str, operator: str = "=") -> float | dt.date | str:
        nonlocal i
        if i >= len(tokens):
            raise _fail(text, len(text), f"a value is missing after {column!r}")
        kind, value, position = tokens[i]
        wanted = columns[column]
        if kind == "text" and wanted == "text":
            if operator not in ("=", "!=", "in", "not in"):
                raise _fail(text, position, f"{column} holds text: compare it with =, != or in (...), not {operator}")
            i += 1
            return _text_value(text, value, position)
        if kind == "number" and wanted == "number":
            i += 1
            return float(value)
        if kind == "date" and wanted == "date":
            i += 1
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise _fail(text, position, f"{value!r} is not a calendar date") from None
        hint = {"date": " (YYYY-MM-DD)", "text": " in single quotes, e.g. 'Germany'"}.get(wanted, "")
        raise _fail(text, position, f"{column} takes a {wanted}{hint}, not {value!r}")

    def expect(symbol: str, after: str) -> None:
        nonlocal i
        if i >= len(tokens) or tokens[i][1] != symbol:
            where = tokens[i][2] if i < len(tokens) else len(text)
            raise _fail(text, where, f"expected {symbol!r} {after}")
        i += 1

    while i < len(tokens):
        kind, word, position = tokens[i]
        if kind != "word" or word.lower() not in columns:
            raise _fail(text, position, f"{word!r} is not a column that can be compared; use one of "
                                        f"{sorted(columns)}")
        column = word.lower()
        i += 1
        if i >= len(tokens):
            raise _fail(text, len(text), f"an operator is missing after {column!r}")
        kind, op, position = tokens[i]
        negated = kind == "word" and op.lower() == "not"
        if negated:
            i += 1
            kind, op, position = tokens[i] if i < len(tokens) else ("", "", len(text))
            if kind != "word" or op.lower() != "in":
                raise _fail(text, position, "'not' is only written before 'in'")
        if kind == "op":
            i += 1
            comparisons.append(Comparison(column, op, expect_value(column, op)))
        elif kind == "word" and op.lower() == "in":
            i += 1
            expect("(", "after 'in': a list of values in parentheses, e.g. in ('France', 'Belgium')")
            operator = "not in" if negated else "in"
            values = [expect_value(column, operator)]
            while i < len(tokens) and tokens[i][1] == ",":
                i += 1
                values.append(expect_value(column, operator))
            expect(")", "to close the list of values")
            comparisons.append(Comparison(column, operator, tuple(values)))
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
            raise _fail(text, position, f"expected an operator (< <= > >= = !=, between or in) after {column!r}, "
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


def select_customers(engine: sa.Engine, segmentation: str, segments: list[str], conditions: list[str],
                     attributes: dict[str, str] | None = None) -> pd.DataFrame:
    """Current assignments of ``segmentation`` in ``segments`` (ids or names; all when empty)
    that meet every condition, ordered by customer id.

    ``attributes`` (name -> type) are the configuration's customer
    attributes, which conditions may compare too. A segment that is not in
    the current publication is an error (:class:`UnknownSegmentError`)
    rather than an empty list. Every value is a bound parameter.
    """
    comparisons = [c for text in conditions for c in parse_condition(text, target_columns(attributes))]
    if not sa.inspect(engine).has_table("segml_current"):
        raise SegmlError(f"nothing is published for {segmentation!r} yet: run `segml run` first")
    check_segments(engine, segmentation, segments)
    with engine.connect() as connection:
        view = current_view(connection)
        unpublished = sorted({c.column for c in comparisons} - set(view.c.keys()))
        if unpublished:
            raise SegmlError(f"attributes {unpublished} are not in the published assignments yet: run "
                             "`segml run` (or `segml score`) with them in the configuration first")
        query = sa.select(view).where(view.c.segmentation == sa.bindparam("segmentation", segmentation))
        if segments:
            query = query.where(sa.or_(view.c.segment_id.in_(segments), view.c.segment_name.in_(segments)))
        for comparison in comparisons:
            column = view.c[comparison.column]
            # in (...) binds its list as one expanding parameter; the others bind their value.
            value = (list(comparison.value) if isinstance(comparison.value, tuple)
                     else sa.literal(comparison.value))
            query = query.where(getattr(column, _OPERATORS[comparison.operator])(value))
        return typed(pd.read_sql(query.order_by(view.c.customer_id), connection))
