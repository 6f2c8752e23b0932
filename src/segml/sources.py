"""Reading purchases into DuckDB.

Every source ends up as one DuckDB relation named ``raw_purchases`` holding the
source's columns exactly as they are, so that the data contract
(:mod:`segml.validation`) and the features (:mod:`segml.features`) run as SQL
inside the engine. Files are scanned lazily (a view); a database table or query
is streamed in chunks through SQLAlchemy into a DuckDB table, because DuckDB's
own database scanners are extensions that would have to be downloaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from segml.config import ColumnMap, DataConfig, data_url
from segml.dialects import DUCKDB, quote, sql_string
from segml.errors import InputDataError
from segml.secrets import mask_url

log = logging.getLogger(__name__)

RAW = "raw_purchases"
#: The line number (1, 2, ...) of every source line, where the source can give it cheaply; see ``line_number``.
LINE = "__segml_line"
_SQL_CHUNK_ROWS = 200_000


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
    if fmt == "parquet":
        # Parquet knows each row's position: a line number without a blocking window over all rows.
        scan = (f"(SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS {LINE} "
                f"FROM read_parquet({sql_string(str(path))}, file_row_number = true))")
    else:
        csv = data.csv
        # Every column is read as text so that a malformed value becomes a
        # rejected line with its reason instead of a failed read.
        scan = (
            f"read_csv({sql_string(str(path))}, all_varchar = true, header = {str(csv.header).lower()}, "
            f"delim = {sql_string(csv.delimiter)}, quote = {sql_string(csv.quote)}, "
            f"encoding = {sql_string(csv.encoding)})"
        )
    try:
        con.execute(f"CREATE OR REPLACE VIEW {RAW} AS SELECT * FROM {scan}")
        con.execute(f"SELECT * FROM {RAW} LIMIT 0")
    except duckdb.Error as exc:
        raise InputDataError(f"cannot read {fmt} file {str(path)!r}: {exc}") from None


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
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {RAW}").fetchall() if row[0] != LINE}


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
    """
    columns = ", ".join(quote(c) for c in column_types(con))
    hashes = con.execute(f"SELECT {DUCKDB.hash(columns)} AS h FROM {RAW}").fetchnumpy()["h"]
    hashes.sort()
    return hashes


def fingerprint_of(rows: int, hash_sum: int) -> str:
    """A fingerprint of a source's content from its line count and the sum of its line hashes.

    The same lines in any order give the same fingerprint; any changed value
    changes it.
    """
    return f"{rows}:{hash_sum % 2**64:016x}"
