"""The DuckDB engine (``engine: duckdb``, the default): embedded, one machine.

The steps of :class:`segml.engine.Engine` over one DuckDB connection: the
source is read by :mod:`segml.sources`, the contract kept by
:mod:`segml.validation` and the features computed by :mod:`segml.features`;
scoring and writing work on pandas frames in this process.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd

from segml.config import DataConfig, SegmlConfig, WindowConfig
from segml.engine import Engine, assign_frame, segment_lookup
from segml.errors import SegmlError
from segml.features import compute_features
from segml.models import SegmentModel
from segml.outputs import write_csv_batches
from segml.sources import connect, register_frame, register_source
from segml.validation import ContractReport, classify_lines, rejected_batches, rejected_lines


class DuckDBEngine(Engine):
    """The steps on one DuckDB connection; ``own``: the connection is closed with the engine."""

    name = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection, own: bool = True) -> None:
        self.con = con
        self.own = own

    def read(self, data: DataConfig, config_name: str = "the configuration",
             frame: pd.DataFrame | None = None) -> None:
        if frame is not None:
            register_frame(self.con, frame, data.columns, config_name)
        else:
            register_source(self.con, data, config_name)

    def classify_lines(self, data: DataConfig, window: WindowConfig) -> ContractReport:
        return classify_lines(self.con, data, window)

    def features(self, as_of: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
        return compute_features(self.con, as_of)

    def rejected_lines(self, file: Path | None = None) -> pd.DataFrame | None:
        if file is None:
            return rejected_lines(self.con)
        write_csv_batches(rejected_batches(self.con), file)  # a batch at a time: never all in memory
        return None

    def score(self, model: SegmentModel, segments: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
        features, _ = compute_features(self.con, as_of)
        ids, names = segment_lookup(segments, model.n_segments)
        return assign_frame(features, model, ids, names).reset_index()

    def write(self, table: pd.DataFrame, path: str | Path | None = None, url: str | None = None,
              table_name: str | None = None, mode: str = "overwrite") -> None:
        if path is not None:
            table.to_parquet(path, index=False)
        if url is not None:
            import sqlalchemy as sa

            if not table_name:
                raise SegmlError("a database write needs a table name")

            engine = sa.create_engine(url)
            try:
                table.to_sql(table_name, engine, if_exists="replace" if mode == "overwrite" else "append",
                             index=False, chunksize=10_000)
            finally:
                engine.dispose()

    def close(self) -> None:
        if self.own:
            self.con.close()


def open_engine(config: SegmlConfig, con: duckdb.DuckDBPyConnection | None = None) -> DuckDBEngine:
    """The DuckDB engine with ``config.duckdb``'s resources, or over ``con`` (then left open)."""
    if con is not None:
        return DuckDBEngine(con, own=False)
    return DuckDBEngine(connect(config.duckdb.memory_limit, config.duckdb.threads, config.duckdb.temp_directory))
