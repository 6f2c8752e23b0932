"""The few SQL spellings that differ between DuckDB and Spark SQL.

The data contract (:mod:`segml.validation`) and the features
(:mod:`segml.features`) are written once as SQL; each engine runs them with its
:class:`Dialect`, so both engines classify every line and compute every
feature by the same rules. Everything else in those queries (CTEs, window
functions, ``TRY_CAST``, ``FILTER``, ``IS NOT DISTINCT FROM``) reads the same
in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from segml.errors import ConfigError


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def quote(name: str) -> str:
    """Quote an identifier for DuckDB SQL (double quotes)."""
    return '"' + name.replace('"', '""') + '"'


def backquote(name: str) -> str:
    """Quote an identifier for Spark SQL (backquotes)."""
    return "`" + name.replace("`", "``") + "`"


# strptime directives and the Java DateTimeFormatter letters Spark parses with. A single
# letter (M, d, H...) accepts one or two digits, like strptime, when a separator follows.
_JAVA_FIELDS = {"Y": "yyyy", "y": "yy", "m": "M", "d": "d", "H": "H", "I": "h", "M": "m", "S": "s",
                "f": "SSSSSS", "p": "a", "b": "MMM", "B": "MMMM", "a": "EEE", "A": "EEEE", "j": "D",
                "z": "xx", "Z": "z"}
_TWO_DIGITS = {"m", "d", "H", "I", "M", "S"}


def java_datetime_pattern(strptime_format: str) -> str:
    """Translate a strptime format (``%d/%m/%Y %H:%M``) to Spark's pattern (``d/M/yyyy H:m``).

    Raises :class:`ConfigError` for a directive with no Spark equivalent.
    """
    out: list[str] = []
    literal: list[str] = []
    tokens = re.findall(r"%.|[^%]", strptime_format)
    for i, token in enumerate(tokens):
        if not token.startswith("%"):
            literal.append(token)
            continue
        if literal:
            out.append(_java_literal("".join(literal)))
            literal = []
        code = token[1]
        if code == "%":
            out.append("'%'")
            continue
        if code not in _JAVA_FIELDS:
            raise ConfigError(
                f"data.timestamp_format {strptime_format!r}: the directive %{code} has no Spark equivalent; "
                f"use one of {', '.join('%' + c for c in _JAVA_FIELDS)} or the duckdb engine"
            )
        letters = _JAVA_FIELDS[code]
        next_to_field = any(0 <= j < len(tokens) and tokens[j].startswith("%") for j in (i - 1, i + 1))
        if code in _TWO_DIGITS and next_to_field:
            letters *= 2  # digits run into the next or last field: the width must be fixed (20240101)
        out.append(letters)
    if literal:
        out.append(_java_literal("".join(literal)))
    return "".join(out)


def _java_literal(text: str) -> str:
    if re.fullmatch(r"[\s\-/:.,T]*", text) and "T" not in text:
        return text
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Dialect:
    """How one engine spells the handful of expressions that differ."""

    name: str
    text_type: str

    def ident(self, name: str) -> str:
        return quote(name) if self.name == "duckdb" else backquote(name)

    def is_finite(self, expr: str) -> str:
        if self.name == "duckdb":
            return f"isfinite({expr})"
        return f"(NOT isnan({expr}) AND abs({expr}) < double('inf'))"

    def literal(self, value: str) -> str:
        """A string literal. Spark SQL reads backslash escapes in literals and takes ``''`` for two
        adjacent literals, so its quotes and backslashes are escaped with backslashes."""
        if self.name == "duckdb":
            return sql_string(value)
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def full_match(self, text: str, pattern: str) -> str:
        """Whether the whole of ``text`` matches the regular expression ``pattern``, written in the
        syntax RE2 (DuckDB) and Java (Spark) share."""
        if self.name == "duckdb":
            return f"regexp_full_match({text}, {self.literal(pattern)})"
        return f"({text} RLIKE {self.literal('^(?:' + pattern + ')' + chr(92) + 'z')})"  # \z: the very end

    def longer_than(self, text: str, n: int) -> str:
        """Whether ``text`` has more than ``n`` characters."""
        if self.name == "duckdb":
            # A string has at least as many bytes as characters: the byte count (free) rules most out.
            return f"(strlen({text}) > {n} AND length({text}) > {n})"
        return f"(length({text}) > {n})"

    def parse_timestamp(self, text: str, strptime_format: str | None) -> str:
        """A text column as a timestamp, NULL where it does not parse."""
        if strptime_format is None:
            return f"TRY_CAST({text} AS TIMESTAMP{'' if self.name == 'duckdb' else '_NTZ'})"
        if self.name == "duckdb":
            return f"try_strptime({text}, {sql_string(strptime_format)})"
        return f"CAST(try_to_timestamp({text}, {sql_string(java_datetime_pattern(strptime_format))}) AS TIMESTAMP_NTZ)"

    def to_timestamp(self, expr: str, with_time_zone: bool) -> str:
        """A date or timestamp column as a timestamp without time zone (UTC wall time for zoned ones)."""
        if self.name == "duckdb":
            return f"CAST(timezone('UTC', {expr}) AS TIMESTAMP)" if with_time_zone else f"CAST({expr} AS TIMESTAMP)"
        # Spark's zoned TIMESTAMP becomes the session time zone's wall time, which segml sets to UTC.
        return f"CAST({expr} AS TIMESTAMP_NTZ)"

    def timestamp_literal(self, iso: str) -> str:
        return f"TIMESTAMP '{iso}'" if self.name == "duckdb" else f"TIMESTAMP_NTZ '{iso}'"

    def hash(self, columns: str) -> str:
        """A 64-bit hash of a row's columns."""
        return f"hash({columns})" if self.name == "duckdb" else f"xxhash64({columns})"

    def struct(self, names: list[str]) -> str:
        """The named columns packed into one struct column."""
        return self.pack({n: self.ident(n) for n in names})

    def unpack(self, column: str) -> str:
        """Every field of a struct column as a column of its own."""
        return f"unnest({column})" if self.name == "duckdb" else f"{column}.*"

    def trimmed(self, text: str, null_markers: list[str] | tuple[str, ...] = ()) -> str:
        """Text without surrounding spaces, NULL when nothing is left or it is one of ``null_markers``."""
        markers = ", ".join(self.literal(m) for m in null_markers)
        if self.name == "duckdb":
            # Most values have no spaces to trim: checking first is twice as fast as trimming all. A
            # marker is only looked for in values as short as the longest (the byte count is free).
            if not null_markers:
                return (f"CASE WHEN {text} LIKE ' %' OR {text} LIKE '% ' THEN NULLIF(trim({text}), '') "
                        f"ELSE NULLIF({text}, '') END")
            longest = max(len(m.encode()) for m in null_markers)
            return (f"CASE WHEN {text} LIKE ' %' OR {text} LIKE '% ' THEN "
                    f"(CASE WHEN trim({text}) IN ({markers}) THEN NULL ELSE NULLIF(trim({text}), '') END) "
                    f"WHEN strlen({text}) <= {longest} AND {text} IN ({markers}) THEN NULL "
                    f"ELSE NULLIF({text}, '') END")
        if not null_markers:
            return f"NULLIF(trim({text}), '')"
        return f"CASE WHEN trim({text}) IN ({markers}) THEN NULL ELSE NULLIF(trim({text}), '') END"

    def pack(self, fields: dict[str, str]) -> str:
        """A struct of named expressions."""
        if self.name == "duckdb":
            return "struct_pack(" + ", ".join(f"{quote(k)} := {v}" for k, v in fields.items()) + ")"
        return "named_struct(" + ", ".join(f"{sql_string(k)}, {v}" for k, v in fields.items()) + ")"

    def collect(self, expr: str) -> str:
        """The aggregate that gathers the values of a group into a list."""
        return f"list({expr})" if self.name == "duckdb" else f"collect_list({expr})"

    def explode(self, column: str) -> str:
        """One row per element of a list column."""
        return f"unnest({column})" if self.name == "duckdb" else f"explode({column})"

    def exact_sum(self, expr: str) -> str:
        """A sum that does not depend on the order of the rows, to 1e-6."""
        if self.name == "duckdb":
            return f"round(fsum({expr}), 6)"  # compensated summation
        # Whole millionths, summed as two 64-bit integers (the high bits and the low 31 bits), which is
        # exact in any order; only the two totals meet in a decimal. (A DECIMAL(38, 6) sum of every
        # row is exact too, but Java's BigDecimal made it most of the time of the per-order summary.)
        # Lines are whole millionths exactly up to 9e9 in absolute value (a double's 53 bits).
        micro = f"CAST(round(round({expr}, 6) * 1000000) AS BIGINT)"
        return (f"CAST((CAST(sum(shiftright({micro}, 31)) AS DECIMAL(38, 0)) * 2147483648 "
                f"+ sum({micro} & 2147483647)) / 1000000 AS DOUBLE)")

    def days_between(self, start: str, end: str) -> str:
        if self.name == "duckdb":
            return f"date_diff('day', {start}, {end})"
        return f"datediff({end}, {start})"

    @property
    def rejected_rows(self) -> bool:
        """Whether ``order_lines`` keeps each rejected line as a row of its own (Spark) rather than
        a list per order (DuckDB)."""
        return self.name != "duckdb"

    def materialized(self, yes: bool) -> str:
        """The CTE hint for a subquery used twice (DuckDB only)."""
        if self.name != "duckdb":
            return ""
        return "MATERIALIZED" if yes else "NOT MATERIALIZED"


DUCKDB = Dialect("duckdb", "VARCHAR")
SPARK = Dialect("spark", "STRING")
