"""Reading purchases into DuckDB.

Every source ends up as one DuckDB relation named ``raw_purchases`` holding the
source's columns exactly as they are, so that the data contract
(:mod:`segml.validation`) and the features (:mod:`segml.features`) run as SQL
inside the engine. Files are scanned lazily (a view); a database table or query
is streamed in chunks through SQLAlchemy into a DuckDB table, because DuckDB's
own database scanners are extensions that would have to be downloaded.

A CSV file is read with the column names of its first line (read here, so a
malformed line further down cannot stop the reader from finding them) and
every value as text. Lines the reader cannot split into those columns (a
ragged row, an unterminated quote, a line over 2,000,000 bytes) are set
aside by DuckDB's ``store_rejects`` during the first full read and then join
``raw_purchases`` as lines of their own with their text in :data:`MALFORMED`
(:func:`take_malformed_lines`), so the data contract rejects them with the
reason ``malformed_line`` and the counts still add up. With
``data.csv.delimiter: whitespace`` each line is split on runs of spaces and
tabs; a line with another number of fields than the first is malformed.
"""

from __future__ import annotations

import codecs
import csv as csv_module
import io
import logging
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from segml.config import WHITESPACE, ColumnMap, CsvOptions, DataConfig, data_url
from segml.dialects import DUCKDB, quote, sql_string
from segml.errors import InputDataError
from segml.secrets import mask_url

log = logging.getLogger(__name__)

RAW = "raw_purchases"
#: The line number (1, 2, ...) of every source line, where the source can give it cheaply; see ``line_number``.
LINE = "__segml_line"
#: A malformed line's own text, in a source that has such lines (CSV); NULL on every other line.
MALFORMED = "__segml_malformed"
_SQL_CHUNK_ROWS = 200_000
#: The CSV reader's own relation, and the tables where DuckDB puts the lines it could not split.
_CSV_SCAN, _REJECTS, _REJECT_SCANS = "__segml_csv", "__segml_csv_rejects", "__segml_csv_scans"
#: A whitespace-separated file is read one whole line per value: a delimiter no text contains.
_NO_DELIMITER = "\x1f"
#: How much of a CSV file is read to find its column names and check its encoding.
_HEAD_BYTES = 1 << 20
#: Delimiters tried, in this order, when the configured one finds a single column.
_OTHER_DELIMITERS = {";": "';'", "\t": "a tab", "|": "'|'", ",": "','", WHITESPACE: "whitespace"}


def connect(memory_limit: str | None = None, threads: int | None = None,
            temp_directory: str | None = None) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection for one segmentation.

    With ``memory_limit`` DuckDB spills to ``temp_directory`` (or its default)
    instead of growing past it.
    """
    con = duckdb.connect(":memory:")
    if memory_limit:
        con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if temp_directory:
        con.execute(f"SET temp_directory = {sql_string(temp_directory)}")
    return con


def file_format(data: DataConfig) -> str:
    if data.format != "auto":
        return data.format
    suffixes = [s.lower() for s in Path(data.path or "").suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if ".csv" in suffixes or ".txt" in suffixes or ".tsv" in suffixes:
        return "csv"
    raise InputDataError(
        f"cannot tell the format of {data.path!r} from its name; "
        "set data.format to 'csv' or 'parquet' in the configuration"
    )


def _register_file(con: duckdb.DuckDBPyConnection, data: DataConfig) -> None:
    path = Path(data.path or "")
    if not path.exists():
        raise InputDataError(f"purchase file {str(path)!r} not found; check data.path in the configuration")
    fmt = file_format(data)
    # A source read before may have become a table (a frame, or a CSV with malformed lines): a view replaces it.
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [RAW]).fetchone()[0]:
        con.execute(f"DROP TABLE {RAW}")
    if fmt == "csv":
        _register_csv(con, path, data.csv)
        return
    # Parquet knows each row's position: a line number without a blocking window over all rows.
    scan = (f"(SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS {LINE} "
            f"FROM read_parquet({sql_string(str(path))}, file_row_number = true))")
    try:
        con.execute(f"CREATE OR REPLACE VIEW {RAW} AS SELECT * FROM {scan}")
        con.execute(f"SELECT * FROM {RAW} LIMIT 0")
    except duckdb.Error as exc:
        raise InputDataError(f"cannot read {fmt} file {str(path)!r}: {str(exc).splitlines()[0]}") from None


def _head(path: Path, encoding: str) -> str:
    """The start of a text file, decoded; a clear error for an empty file or the wrong encoding."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_HEAD_BYTES)
    except IsADirectoryError:
        raise InputDataError(f"purchase file {str(path)!r} is a folder; set data.path to a CSV file") from None
    if not raw.strip():
        raise InputDataError(f"purchase file {str(path)!r} is empty; check data.path in the configuration")
    # utf-8-sig: a byte-order mark is not part of the first column's name (DuckDB skips it too).
    decoder = codecs.getincrementaldecoder("utf-8-sig" if encoding == "utf-8" else encoding)()
    try:
        return decoder.decode(raw, final=len(raw) < _HEAD_BYTES)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputDataError(
            f"purchase file {str(path)!r} is not {encoding} text: byte 0x{raw[exc.start]:02x} on line {line}; "
            "set data.csv.encoding to the file's encoding (utf-8, latin-1 or utf-16)") from None


def _split(line: str, delimiter: str, quote_char: str) -> list[str]:
    """The fields of one line of text under a delimiter (``whitespace``: runs of spaces and tabs)."""
    if delimiter == WHITESPACE:
        return line.split()
    try:
        return next(csv_module.reader([line], delimiter=delimiter, quotechar=quote_char), [])
    except csv_module.Error:
        return [line]


def csv_column_names(fields: list[str], header: bool) -> list[str]:
    """The column names DuckDB gives: the header's, trimmed, with ``column<i>`` for an empty one and
    ``_1``, ``_2``... after a repeated one; ``column0``, ``column1``... without a header."""
    width = len(str(len(fields) - 1))
    if not header:
        return [f"column{i:0{width}d}" for i in range(len(fields))]
    names: list[str] = []
    for i, field in enumerate(fields):
        name = field.strip() or f"column{i:0{width}d}"
        base, n = name, 0
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def _first_record(head: str, csv: CsvOptions) -> tuple[str, list[str]]:
    """The first line of the file's text and its fields (a quoted field may span lines)."""
    first_line = head.splitlines()[0] if head.splitlines() else ""
    if csv.delimiter == WHITESPACE:
        first_line = next((line for line in head.splitlines() if line.strip()), "")  # blank lines are no lines
        return first_line, first_line.split()
    try:
        fields = next(csv_module.reader(io.StringIO(head, newline=""), delimiter=csv.delimiter,
                                        quotechar=csv.quote), [])
    except csv_module.Error as exc:
        raise InputDataError(f"the first line cannot be read with data.csv.delimiter {csv.delimiter!r} and "
                             f"data.csv.quote {csv.quote!r}: {exc}") from None
    return first_line, fields


def _one_column(path: Path, csv: CsvOptions, first_line: str) -> InputDataError:
    """The error for a file the configured delimiter reads as one column, naming a delimiter that splits it."""
    shown = "whitespace" if csv.delimiter == WHITESPACE else repr(csv.delimiter)
    seen = first_line if len(first_line) <= 80 else first_line[:77] + "..."
    start = f"purchase file {str(path)!r}: data.csv.delimiter {shown} finds one column in the first line ({seen!r})"
    for delimiter, label in _OTHER_DELIMITERS.items():
        if delimiter == csv.delimiter:
            continue
        n = len(_split(first_line, delimiter, csv.quote))
        if n > 1:
            setting = "whitespace" if delimiter == WHITESPACE else ('"\\t"' if delimiter == "\t" else repr(delimiter))
            return InputDataError(f"{start}, but {label} splits it into {n}; set data.csv.delimiter: {setting} "
                                  "in the configuration")
    return InputDataError(f"{start}; segml needs at least a customer id, a timestamp and an amount: check "
                          "data.csv.delimiter and data.csv.quote")


def _register_csv(con: duckdb.DuckDBPyConnection, path: Path, csv: CsvOptions) -> None:
    """A CSV (or whitespace-separated) file as ``raw_purchases``: every value as text, malformed lines
    set aside in DuckDB's rejects table by each full read (see :func:`take_malformed_lines`)."""
    first_line, fields = _first_record(_head(path, csv.encoding), csv)
    names = csv_column_names(fields, csv.header)
    if len(names) < 2:
        raise _one_column(path, csv, first_line)
    options = (f"header = {str(csv.header).lower()}, encoding = {sql_string(csv.encoding)}, auto_detect = false, "
               f"store_rejects = true, rejects_table = {sql_string(_REJECTS)}, "
               f"rejects_scan = {sql_string(_REJECT_SCANS)}")
    if csv.delimiter == WHITESPACE:
        scan = (f"read_csv({sql_string(str(path))}, columns = {{'text': 'VARCHAR'}}, "
                f"delim = {sql_string(_NO_DELIMITER)}, quote = '', escape = '', strict_mode = false, {options})")
        # Runs of spaces, tabs (and the CR of a Windows line end) separate fields; blank lines are no lines.
        split = "regexp_extract_all(text, '[^ \\t\\r]+')"
        columns = ", ".join(f"__fields[{i + 1}] AS {quote(name)}" for i, name in enumerate(names))
        relation = (f"SELECT {columns}, CASE WHEN len(__fields) <> {len(names)} THEN text END AS {quote(MALFORMED)} "
                    f"FROM (SELECT text, {split} AS __fields FROM {_CSV_SCAN} WHERE trim(text) <> '') AS __split")
    else:
        spec = ", ".join(f"{sql_string(name)}: 'VARCHAR'" for name in names)
        scan = (f"read_csv({sql_string(str(path))}, columns = {{{spec}}}, delim = {sql_string(csv.delimiter)}, "
                f"quote = {sql_string(csv.quote)}, escape = {sql_string(csv.quote)}, {options})")
        relation = f"SELECT * FROM {_CSV_SCAN}"
    try:
        con.execute(f"CREATE OR REPLACE VIEW {_CSV_SCAN} AS SELECT * FROM {scan}")
        con.execute(f"CREATE OR REPLACE VIEW {RAW} AS {relation}")
        con.execute(f"SELECT * FROM {RAW} LIMIT 0")
    except duckdb.Error as exc:
        raise InputDataError(f"cannot read csv file {str(path)!r}: {str(exc).splitlines()[0]}") from None


def _register_sql(con: duckdb.DuckDBPyConnection, data: DataConfig) -> None:
    import sqlalchemy as sa

    from_what = f"table {data.table!r}" if data.table else "the configured query"
    # Read here, where the connection opens, so a URL with a password never sits in the configuration.
    engine = sa.create_engine(data_url(data, os.environ) or "")
    statement = sa.select(sa.text("*")).select_from(sa.table(data.table)) if data.table else sa.text(data.query or "")
    con.execute(f"DROP TABLE IF EXISTS {RAW}")
    created, lines = False, 0
    try:
        with engine.connect() as connection:
            for chunk in pd.read_sql(statement, connection, chunksize=_SQL_CHUNK_ROWS):
                con.register("_chunk", chunk)
                numbered = f"SELECT *, {lines} + row_number() OVER () AS {LINE} FROM _chunk"
                if created:
                    con.execute(f"INSERT INTO {RAW} {numbered}")
                else:
                    con.execute(f"CREATE TABLE {RAW} AS {numbered}")
                    created = True
                lines += len(chunk)
                con.unregister("_chunk")
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ else exc
        reason = mask_url(str(getattr(cause, "orig", None) or cause).splitlines()[0])
        raise InputDataError(
            f"cannot read {from_what} from the database at {mask_url(engine.url.render_as_string(False))}: "
            f"{reason}; check {'data.url_env' if data.url_env else 'data.url'} and data.table or data.query"
        ) from None
    finally:
        engine.dispose()
    if not created:
        raise InputDataError(f"{from_what} returned no columns; check data.table or data.query")


def register_source(con: duckdb.DuckDBPyConnection, data: DataConfig, config_name: str = "the configuration") -> list[str]:
    """Make the configured source available as ``raw_purchases`` and check its columns.

    Returns the source's column names. ``config_name`` (usually the YAML file)
    is named in the message when a mapped column is missing.
    """
    if data.path is None:
        _register_sql(con, data)
    else:
        _register_file(con, data)
    columns = columns_of(con)
    check_columns(columns, data.columns, config_name)
    return columns


def register_frame(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, columns: ColumnMap | None = None,
                   config_name: str = "the configuration") -> list[str]:
    """Use an in-memory frame of purchase lines as ``raw_purchases``."""
    con.register("_frame", frame)
    con.execute(f"CREATE OR REPLACE TABLE {RAW} AS SELECT *, row_number() OVER () AS {LINE} FROM _frame")
    con.unregister("_frame")
    found = columns_of(con)
    if columns is not None:
        check_columns(found, columns, config_name)
    return found


def columns_of(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The source's own columns."""
    return list(column_types(con))


def column_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The source's own columns and their DuckDB types."""
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {RAW}").fetchall() if row[0] not in (LINE, MALFORMED)}


def has_malformed(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``raw_purchases`` has malformed lines' text (the column :data:`MALFORMED`)."""
    return any(row[0] == MALFORMED for row in con.execute(f"DESCRIBE {RAW}").fetchall())


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])


def take_malformed_lines(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """Add the lines the CSV reader set aside during the last full read to ``raw_purchases``.

    Returns their number and the sum of their text's hashes (for the
    fingerprint); ``(0, 0)`` for a source without any, which is left as it
    is. Otherwise ``raw_purchases`` becomes a table of every line numbered
    in file order (:data:`LINE`), the malformed ones with all columns NULL
    and their text in :data:`MALFORMED`. DuckDB numbers a rejected line by
    its place in the file, counting the header (and any blank lines, which
    are no purchase lines, so a malformed line after blank lines is
    numbered a little late; numbers stay unique and in order). A line that
    is not text in ``data.csv.encoding`` is a setting to fix, not a bad
    line, and fails the read.
    """
    if not _exists(con, _REJECTS):
        return 0, 0
    rejects = con.execute(f"""
        SELECT e.line - CASE WHEN s.has_header THEN 1 ELSE 0 END AS line, s.file_path,
               min(e.error_type) AS error, arg_min(e.csv_line, e.error_type) AS text
        FROM {_REJECTS} AS e JOIN {_REJECT_SCANS} AS s USING (scan_id, file_id)
        GROUP BY ALL ORDER BY line
    """).df()
    con.execute(f"DELETE FROM {_REJECTS}")  # taken once: a second read of the source must not add them again
    if rejects.empty:
        return 0, 0
    bad_text = rejects[rejects["error"] == "INVALID ENCODING"]
    if len(bad_text):
        first = bad_text.iloc[0]
        raise InputDataError(
            f"purchase file {first['file_path']!r}: {len(bad_text):,} lines are not text in the configured "
            f"data.csv.encoding, the first on line {int(first['line'])}; set data.csv.encoding to the file's "
            "encoding (utf-8, latin-1 or utf-16)")
    con.register("_malformed", rejects[["line", "text"]])
    con.execute("CREATE OR REPLACE TEMP TABLE __segml_malformed_lines AS SELECT * FROM _malformed")
    con.unregister("_malformed")
    malformed_column = "" if has_malformed(con) else f", NULL AS {quote(MALFORMED)}"
    # Good line i (the i-th the reader kept) comes after every malformed line j (in line order)
    # with fewer than i good lines before it, i.e. line_j - j < i: it moves down by their count.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE __segml_numbered AS
        WITH good AS (SELECT *, row_number() OVER () AS __i FROM {RAW}),
        shifts AS (
            SELECT max(line - j) AS good_before, max(j) AS shift
            FROM (SELECT line, row_number() OVER (ORDER BY line) AS j FROM __segml_malformed_lines) AS __m
            GROUP BY line - j
        )
        SELECT good.* EXCLUDE (__i){malformed_column}, __i + COALESCE(shifts.shift, 0) AS {LINE}
        FROM good ASOF LEFT JOIN shifts ON good.__i > shifts.good_before
        UNION ALL BY NAME
        SELECT line AS {LINE}, text AS {quote(MALFORMED)} FROM __segml_malformed_lines
    """)
    hash_sum = con.execute("SELECT sum(hash(text))::HUGEINT FROM __segml_malformed_lines").fetchone()[0]
    con.execute(f"DROP VIEW {RAW}")
    con.execute(f"ALTER TABLE __segml_numbered RENAME TO {RAW}")
    log.warning("%d malformed lines set aside as rejected lines (reason malformed_line)", len(rejects))
    return len(rejects), int(hash_sum)


def line_number(con: duckdb.DuckDBPyConnection) -> str:
    """SQL for each line's number: the source's own when it has one, else the scan order (CSV)."""
    has_line = any(row[0] == LINE for row in con.execute(f"DESCRIBE {RAW}").fetchall())
    return LINE if has_line else "row_number() OVER ()"


def check_columns(found: list[str], columns: ColumnMap, config_name: str) -> None:
    """Fail with one message naming every mapped column the source lacks."""
    missing = [
        (key, name) for key, name in columns.model_dump().items() if name is not None and name not in found
    ]
    if not missing:
        return
    parts = [f"column {name!r} not found (set data.columns.{key})" for key, name in missing]
    raise InputDataError(
        f"{'; '.join(parts)}; the source's columns are {found}; change the mapping in {config_name}"
    )


def line_hashes(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """The 64-bit hash of every line of ``raw_purchases`` (all its own columns), sorted.

    The same hash as ``validation.contract_sql`` computes, so the repeated ones find their lines there.
    This full read also fills a CSV's rejects table (:func:`take_malformed_lines`).
    """
    if _exists(con, _REJECTS):
        con.execute(f"DELETE FROM {_REJECTS}")
    columns = ", ".join(quote(c) for c in column_types(con))
    try:
        hashes = con.execute(f"SELECT {DUCKDB.hash(columns)} AS h FROM {RAW}").fetchnumpy()["h"]
    except duckdb.InvalidInputException as exc:
        # Malformed lines become rejected lines; what is left stops the reader (in practice: a file
        # mixing \r\n and \n line ends), and DuckDB's hints name options segml does not have.
        reason = str(exc).splitlines()[0].removeprefix("Invalid Input Error: ")
        raise InputDataError(f"the CSV reader cannot go on: {reason} Most often the file mixes line ends "
                             "(\\r\\n and \\n): make them all the same (e.g. with dos2unix) and read it again") from None
    hashes.sort()
    return hashes


def fingerprint_of(rows: int, hash_sum: int) -> str:
    """A fingerprint of a source's content from its line count and the sum of its line hashes.

    The same lines in any order give the same fingerprint; any changed value
    changes it.
    """
    return f"{rows}:{hash_sum % 2**64:016x}"
