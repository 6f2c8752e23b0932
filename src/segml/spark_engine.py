"""The heavy steps on Spark, for purchases that outgrow one machine (``engine: spark``).

Spark runs the same SQL as DuckDB (:mod:`segml.dialects`): the source becomes
the temporary view ``raw_purchases`` with a line number per line, the data
contract stages every line with its reason, and the features are one
aggregation per customer. The model is still chosen and fitted with
scikit-learn on the driver; :func:`assign_segments` ships the fitted model to
the executors (a pandas function over Arrow batches) to assign every customer,
:func:`segment_statistics` computes the homogeneity statistics as Spark
aggregations, and :func:`write_assignments` writes the table as Parquet and
over JDBC. :class:`SparkEngine` puts these steps behind :class:`segml.engine.Engine`.

The lines are read in three passes: the lines' hashes shuffled by value and
sorted per partition (the count, the fingerprint and the hashes that repeat,
which are few), the contract into the per-order summary ``order_lines``
(cached: the counts, the features and the rejected lines all read it), and,
only without ``window.as_of``, the last valid purchase before them. Input
files are read in splits of at most 16 MB (:func:`size_partitions`).

PySpark is an optional extra: ``pip install 'segml[spark]'`` (and Java 17).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from segml.config import WHITESPACE, CsvOptions, DataConfig, SegmlConfig, SparkConfig, WindowConfig
from segml.dialects import SPARK, backquote
from segml.engine import Engine, assign_frame, segment_lookup
from segml.errors import InputDataError, SegmlError
from segml.features import features_sql, split_features
from segml.models import SegmentModel
from segml.outputs import write_csv
from segml.sources import LINE, MALFORMED, RAW, check_columns, csv_column_names, file_format, fingerprint_of
from segml.validation import (
    LINE_TEXT,
    LINES,
    ORDERS,
    REJECTED,
    REPEATED,
    STAGED,
    ContractReport,
    build_report,
    contract_sql,
    counts_sql,
    last_valid_sql,
    lines_sql,
    orders_sql,
    plausible_dates,
    window_of,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: The PostgreSQL JDBC driver of Debian's and Ubuntu's package ``libpostgresql-jdbc-java``.
SYSTEM_POSTGRES_JAR = Path("/usr/share/java/postgresql.jar")

#: Bytes of input files per shuffle partition when segml sizes them (:func:`shuffle_partitions`).
INPUT_BYTES_PER_PARTITION = 16 << 20


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SegmlError("engine: spark needs PySpark: pip install 'segml[spark]' (and Java 17 or newer)") from None


def jdbc_jars(config: SparkConfig) -> list[str]:
    """The JDBC driver jars to put on Spark's class path."""
    if config.jdbc_jars:
        return config.jdbc_jars
    return [str(SYSTEM_POSTGRES_JAR)] if SYSTEM_POSTGRES_JAR.exists() else []


def session(config: SparkConfig) -> SparkSession:
    """The Spark session of ``config``: Spark Connect when ``remote`` is set, else ``master``.

    Timestamps are read and compared in UTC, like DuckDB; a local session runs
    its Python workers with this interpreter. Adaptive query execution is on
    (Spark's default, set here so a cluster's own defaults cannot turn it off
    unseen): it joins small shuffle partitions and broadcasts small tables
    once their size is known.
    """
    _require_pyspark()
    from pyspark.sql import SparkSession

    if config.remote:
        builder = SparkSession.builder.remote(config.remote)
    else:
        builder = SparkSession.builder.master(config.master)
        if config.master.startswith("local"):
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            builder = builder.config("spark.ui.enabled", "false")
        jars = jdbc_jars(config)
        if jars:
            builder = builder.config("spark.jars", ",".join(jars))
    builder = (builder.appName(config.app_name)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.sql.adaptive.enabled", "true"))
    if config.partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(config.partitions))
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    return spark


def partitions_set(config: SparkConfig) -> bool:
    """Whether the configuration sets the shuffle partitions itself."""
    return bool(config.partitions) or "spark.sql.shuffle.partitions" in config.conf


def input_bytes(data: DataConfig) -> int | None:
    """The size of the configured source's local file or folder; None for a database or a URL."""
    if data.path is None or "://" in data.path or not Path(data.path).exists():
        return None
    path = Path(data.path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def shuffle_partitions(cores: int, size: int | None) -> int:
    """Shuffle partitions for ``cores`` task slots (``defaultParallelism``) and ``size`` bytes of
    input: twice the cores, or one per :data:`INPUT_BYTES_PER_PARTITION` of input when that is more.
    (Spark's default of 200 made small jobs on few cores up to 2.5 times slower; adaptive execution
    joins partitions that turn out small, but does not split an aggregation's big ones.)"""
    return max(2 * cores, math.ceil((size or 0) / INPUT_BYTES_PER_PARTITION))


def size_partitions(spark: SparkSession, config: SparkConfig, data: DataConfig) -> None:
    """Set ``spark.sql.shuffle.partitions`` by :func:`shuffle_partitions` unless the configuration
    sets it, and read input files in splits of at most :data:`INPUT_BYTES_PER_PARTITION` unless
    ``spark.sql.files.maxPartitionBytes`` is set; nothing on Spark Connect (no cores to count here:
    the server's settings hold). Call it before reading: a CSV's line numbers follow its splits.

    (With Spark's 128 MB splits, the per-order summary's map-side aggregation of 47 MB of Parquet
    per task, 5 million lines, outgrew its memory in local mode and spilled: 10.8 s for that stage
    against 8.8 s in 16 MB splits.)
    """
    if config.remote:
        return
    if not partitions_set(config):
        partitions = shuffle_partitions(spark.sparkContext.defaultParallelism, input_bytes(data))
        spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    if "spark.sql.files.maxPartitionBytes" not in config.conf:
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(INPUT_BYTES_PER_PARTITION))


# --- reading ------------------------------------------------------------------------------------


def jdbc_options(url: str) -> dict[str, str]:
    """JDBC options (url, user, password, driver) for a SQLAlchemy database URL."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend != "postgresql":
        raise SegmlError(f"engine: spark reads and writes database tables over JDBC for PostgreSQL only, "
                         f"got a {backend} URL; use the duckdb engine or a PostgreSQL database")
    options = {"url": f"jdbc:postgresql://{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}",
               "driver": "org.postgresql.Driver"}
    if parsed.username:
        options["user"] = parsed.username
    if parsed.password:
        options["password"] = parsed.password
    return options


def _number_lines(located: DataFrame, columns: list[str], key: str, key_type: str, position: str) -> DataFrame:
    """The source's ``columns`` with line numbers 1, 2, ...: ``position`` (0-based within the group
    ``key``) plus the rows of the groups before, in ``key`` order. Only the group sizes reach the
    driver."""
    from pyspark.sql import functions as F

    offsets, total = [], 0
    for row in located.groupBy(key).count().orderBy(key).collect():
        offsets.append((row[key], total))
        total += row["count"]
    offset_frame = located.sparkSession.createDataFrame(offsets, f"{key} {key_type}, __offset long")
    return (located.join(F.broadcast(offset_frame), key)
            .select(*columns, (F.col("__offset") + F.col(position) + 1).alias(LINE)))


def _with_line_numbers(frame: DataFrame) -> DataFrame:
    """Number the lines in the order of the source: partition by partition, row by row.

    ``monotonically_increasing_id`` holds the partition in its upper bits and
    the row within it in the lower 33. Works on Spark Connect too (no RDD API).
    """
    from pyspark.sql import functions as F

    columns = [backquote(c) for c in frame.columns]
    part = F.spark_partition_id()
    located = frame.select(*columns, part.alias("__part"),
                           (F.monotonically_increasing_id() - F.shiftleft(part.cast("long"), 33)).alias("__row"))
    return _number_lines(located, columns, "__part", "int", "__row")


def _parquet_with_line_numbers(spark: SparkSession, path: str) -> DataFrame:
    """Parquet's own row positions, file by file (no shuffle of the lines)."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(path)
    columns = [backquote(c) for c in frame.columns]
    if len(frame.inputFiles()) == 1:  # one file: its row positions are the line numbers, no job to count
        return frame.select(*columns, (F.col("_metadata.row_index") + 1).alias(LINE))
    located = frame.select(*columns, F.col("_metadata.file_path").alias("__file"),
                           F.col("_metadata.row_index").alias("__row"))
    return _number_lines(located, columns, "__file", "string", "__row")


def _csv_with_line_numbers(spark: SparkSession, path: str, csv: CsvOptions) -> DataFrame:
    """A CSV file as text columns named as DuckDB names them (the header's, or ``column0``...), with
    line numbers; a line Spark cannot split into those columns keeps its text in :data:`MALFORMED`
    and no values, as on DuckDB. (Spark reads a quoted line break as the end of a line, where
    DuckDB reads it as part of the value: Spark splits such files by line, to read them in parallel.)
    """
    from pyspark.sql import functions as F

    if csv.delimiter == WHITESPACE:
        # Each line whole (a delimiter and a quote no text has), split on runs of spaces and tabs.
        lines = spark.read.csv(path, schema="text STRING", sep="\x1f", quote="", escape="", header=False,
                               encoding=csv.encoding, ignoreLeadingWhiteSpace=False, ignoreTrailingWhiteSpace=False)
        numbered = _with_line_numbers(lines.where("trim(text) <> ''"))
        first = numbered.where(F.col(LINE) == 1).first()
        fields = first["text"].split() if first else []
        if csv.header:
            numbered = numbered.where(F.col(LINE) > 1).withColumn(LINE, F.col(LINE) - 1)
        names = csv_column_names(fields, csv.header)
        split = F.expr("regexp_extract_all(text, '([^ \\t\\r]+)', 1)")
        return (numbered.withColumn("__fields", split)
                .select(*[F.try_element_at("__fields", F.lit(i + 1)).alias(n) for i, n in enumerate(names)],
                        F.when(F.size("__fields") != len(names), F.col("text")).alias(MALFORMED), LINE))
    options = {"sep": csv.delimiter, "quote": csv.quote, "escape": csv.quote, "encoding": csv.encoding}
    names = spark.read.csv(path, header=csv.header, inferSchema=False, **options).columns
    names = names if csv.header else csv_column_names(names, header=False)
    schema = ", ".join(f"{backquote(n)} STRING" for n in [*names, MALFORMED])
    frame = spark.read.csv(path, schema=schema, header=csv.header, mode="PERMISSIVE",
                           columnNameOfCorruptRecord=MALFORMED, **options)
    # A malformed line's values are whatever Spark could make of it: none of them is kept.
    own = [F.when(F.col(MALFORMED).isNull(), F.col(backquote(n))).alias(n) for n in names]
    return _with_line_numbers(frame.select(*own, MALFORMED))


def read_purchases(spark: SparkSession, data: DataConfig, config_name: str = "the configuration") -> list[str]:
    """Make the configured source the temporary view ``raw_purchases``; returns its columns.

    Files are read as they are (CSV as text, like DuckDB); a database table or
    query is read over JDBC.
    """
    from pyspark.errors import PySparkException

    try:
        if data.url is not None:
            reader = spark.read.format("jdbc").options(**jdbc_options(data.url))
            reader = reader.option("dbtable", data.table) if data.table else reader.option("query", data.query)
            frame = _with_line_numbers(reader.load())
        else:
            path = data.path or ""
            if "://" not in path and not Path(path).exists():
                raise InputDataError(f"purchase file {path!r} not found; check data.path in the configuration")
            if file_format(data) == "parquet":
                frame = _parquet_with_line_numbers(spark, path)
            else:
                frame = _csv_with_line_numbers(spark, path, data.csv)
    except PySparkException as exc:
        where = data.table or data.query or data.path
        raise InputDataError(f"Spark cannot read {where!r}: {str(exc).splitlines()[0]}") from None
    frame.createOrReplaceTempView(RAW)
    columns = [c for c in frame.columns if c not in (LINE, MALFORMED)]
    check_columns(columns, data.columns, config_name)
    return columns


def register_frame(spark: SparkSession, frame: pd.DataFrame) -> None:
    """Use an in-memory frame of purchase lines (every column as text) as ``raw_purchases``."""
    numbered = frame.astype(object).where(frame.notna(), None).assign(**{LINE: np.arange(1, len(frame) + 1)})
    spark.createDataFrame(numbered).createOrReplaceTempView(RAW)


def column_types(spark: SparkSession) -> dict[str, str]:
    """The source's own columns and their Spark SQL types."""
    return {name: kind for name, kind in spark.table(RAW).dtypes if name not in (LINE, MALFORMED)}


# --- the data contract and the features ------------------------------------------------------------


def hash_summaries(spark: SparkSession, columns: list[str]) -> DataFrame:
    """One row per partition of the lines' 64-bit hashes (of their ``columns``), shuffled by value
    so that equal hashes meet in one partition: the partition's hash count (``n``), their sum modulo
    2 ** 64 (``hash_sum``) and the hashes that occur more than once (``repeated``), found by
    sorting them on the executor with numpy, as the DuckDB engine sorts a file's hashes.

    One shuffle of 8 bytes a line and no aggregation: grouping by the hash instead cost Spark
    twice as much (a hash table with a group per line, which map-side partial aggregation cannot
    shrink).
    """

    def summary(batches: Iterator) -> Iterator:
        # Defined here so that it is shipped by value: the executors' Python workers import numpy
        # and pyarrow only, not segml (over a second per worker).
        import numpy
        import pyarrow

        chunks = [batch.column(0).to_numpy() for batch in batches]
        hashes = numpy.sort(numpy.concatenate(chunks)) if chunks else numpy.empty(0, dtype=numpy.int64)
        repeated = numpy.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        total = int(hashes.view(numpy.uint64).sum(dtype=numpy.uint64))
        signed = total - (total >> 63 << 64)  # as a 64-bit integer column holds it
        yield pyarrow.RecordBatch.from_pydict(
            {"n": [len(hashes)], "hash_sum": [signed], "repeated": [repeated]},
            schema=pyarrow.schema([("n", pyarrow.int64()), ("hash_sum", pyarrow.int64()),
                                   ("repeated", pyarrow.list_(pyarrow.int64()))]))

    hashed = ", ".join(backquote(c) for c in columns)
    lines = spark.sql(f"SELECT xxhash64({hashed}) AS __hash FROM {RAW} DISTRIBUTE BY __hash")
    return lines.mapInArrow(summary, "n long, hash_sum long, repeated array<long>")


def hash_pass(spark: SparkSession, columns: list[str]) -> tuple[int, int, list[int]]:
    """The lines read, the sum of their hashes (for the fingerprint, modulo 2 ** 64) and the hashes
    that occur more than once, from one pass over the lines (:func:`hash_summaries`).

    Only the lines with a repeated hash can be duplicates; they are usually few, so the list comes
    to the driver and the contract compares just those lines.
    """
    parts = hash_summaries(spark, columns).collect()
    repeated = sorted(h for part in parts for h in part["repeated"])
    return sum(part["n"] for part in parts), sum(part["hash_sum"] for part in parts) % 2**64, repeated


def rejected_sql(columns: list[str], malformed: bool) -> str:
    """The ``rejected_lines`` view on Spark: each rejected line's number and reason from
    ``order_lines``, its values (``columns``, and a malformed line's text) read again from the
    source by that number. The rejected lines are few: the join broadcasts them."""
    values = ", ".join(f"__raw.{backquote(c)}" for c in columns)
    if malformed:
        text = LINE_TEXT if LINE_TEXT not in columns else f"__{LINE_TEXT}"
        values += f", __raw.{backquote(MALFORMED)} AS {backquote(text)}"
    return f"""
        SELECT /*+ BROADCAST(__r) */ __r.line, __r.reason, {values}
        FROM (SELECT rejected_line AS line, reason FROM {ORDERS} WHERE rejected_line IS NOT NULL) AS __r
        JOIN {RAW} AS __raw ON __raw.{LINE} = __r.line
    """


def classify_lines(spark: SparkSession, data: DataConfig, window: WindowConfig,
                   today: dt.date | None = None) -> ContractReport:
    """The data contract on Spark: the views ``purchase_lines`` and ``rejected_lines``, the table
    ``order_lines`` (cached) and the counts, as :func:`segml.validation.classify_lines` does on DuckDB."""
    types = column_types(spark)
    malformed, keep = MALFORMED in spark.table(RAW).columns, data.duplicates == "keep"
    plausible = plausible_dates(data, today)
    rows, hash_sum, repeated = hash_pass(spark, list(types))
    if repeated:
        spark.createDataFrame([(h,) for h in repeated], "__hash long").createOrReplaceTempView(REPEATED)
    last = (spark.sql(last_valid_sql(data, types, LINE, SPARK, malformed, plausible)).first()[0]
            if window.as_of is None else None)
    as_of, window_start = window_of(window, last)
    spark.sql(contract_sql(data, types, LINE, SPARK, repeated=f"SELECT __hash FROM {REPEATED}" if repeated else None,
                           malformed=malformed, plausible=plausible)).createOrReplaceTempView(STAGED)
    spark.sql(lines_sql(as_of, window_start, SPARK, keep)).createOrReplaceTempView(LINES)
    spark.sql(orders_sql(SPARK, keep)).persist().createOrReplaceTempView(ORDERS)
    spark.sql(rejected_sql(list(types), malformed)).createOrReplaceTempView(REJECTED)
    counts = [(r["status"], r["reason"], int(r["n"]), r["last_purchase"], int(r["duplicates"] or 0))
              for r in spark.sql(counts_sql(keep)).collect()]
    return build_report(rows, counts, as_of, window_start, fingerprint=fingerprint_of(rows, hash_sum))


def compute_features(spark: SparkSession, as_of: dt.date) -> DataFrame:
    """Every customer's features (and the reason when not segmented) as a Spark DataFrame."""
    return spark.sql(features_sql(as_of, SPARK))


def collect_features(features: DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(features, excluded)`` on the driver, as :func:`segml.features.compute_features` gives them."""
    # Sorted here rather than by Spark, whose sort samples (computes) the features once more first.
    return split_features(features.toPandas().sort_values("customer_id", ignore_index=True))


def rejected_lines(spark: SparkSession) -> pd.DataFrame:
    """The rejected lines with every source column, their line number and reason.

    Read through Arrow in the source's own time unit: a line rejected for a
    date in year 1 or 9999 would overflow pandas' nanoseconds (``toPandas``).
    """
    frame = spark.table(REJECTED).orderBy("line").toArrow().to_pandas(coerce_temporal_nanoseconds=False)
    for column in frame.select_dtypes("datetimetz").columns:  # Spark's zoned times: UTC wall time, as on DuckDB
        frame[column] = frame[column].dt.tz_convert("UTC").dt.tz_localize(None)
    # Spark keeps a column for malformed CSV lines whether there are any or not; DuckDB only when there are.
    text = next((c for c in (LINE_TEXT, f"__{LINE_TEXT}") if c in frame.columns and c not in column_types(spark)), None)
    if text is not None and frame[text].isna().all():
        frame = frame.drop(columns=text)
    return frame


def uncache(spark: SparkSession) -> None:
    """Free the per-order summary :func:`classify_lines` cached."""
    if spark.catalog.tableExists(ORDERS):
        spark.catalog.uncacheTable(ORDERS)


# --- assigning every customer on the executors --------------------------------------------------


def assign_segments(features: DataFrame, model: SegmentModel, segments: pd.DataFrame,
                    with_model_space: bool = False) -> DataFrame:
    """Every customer of ``features`` (a Spark DataFrame of :func:`compute_features` rows to
    segment) with its segment id, name and probability, computed on the executors.

    ``segments`` maps the model's segment numbers to ids and names (columns
    ``segment``, ``segment_id``, ``segment_name``). With ``with_model_space``
    the customers' coordinates in the model's space are added as
    ``z_<feature>`` (for :func:`segment_statistics`).
    """
    from pyspark.sql.types import (
        DoubleType,
        IntegerType,
        StringType,
        StructField,
        StructType,
    )

    ids, names = segment_lookup(segments, model.n_segments)
    kept = [f for f in features.schema.fields if f.name != "reason"]
    extra = [StructField("segment", IntegerType(), False), StructField("segment_id", StringType(), False),
             StructField("segment_name", StringType(), False), StructField("segment_probability", DoubleType(), False)]
    if with_model_space:
        extra += [StructField(f"z_{f}", DoubleType(), False) for f in model.features]
    schema = StructType([*kept, *extra])

    def assign(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield assign_frame(batch.drop(columns="reason", errors="ignore"), model, ids, names, with_model_space)

    to_segment = features.where("reason IS NULL") if "reason" in features.columns else features
    return to_segment.mapInPandas(assign, schema)


def segment_statistics(assigned: DataFrame, features: list[str], n_segments: int) -> pd.DataFrame:
    """Per segment and feature the within and population standard deviations and their ratios,
    in original units and the model's space, as Spark aggregations: the same table as
    :func:`segml.quality.score_homogeneity`.

    ``assigned`` comes from :func:`assign_segments` with ``with_model_space``.
    """
    from pyspark.sql import functions as F

    columns = [*features, *(f"z_{f}" for f in features)]
    stats = [F.stddev_pop(F.col(c).cast("double")).alias(c) for c in columns]
    within = {int(r["segment"]): r for r in assigned.groupBy("segment").agg(*stats).collect()}
    population = assigned.agg(*stats).first()
    rows = []
    for s in range(n_segments):
        for f in features:
            row = {"segment": s, "feature": f}
            for column, prefix in ((f, ""), (f"z_{f}", "_model")):
                spread = float(within[s][column] or 0.0) if s in within else 0.0
                overall = float(population[column] or 0.0)
                row[f"std_within{prefix}"] = spread
                row[f"std_population{prefix}"] = overall
                row[f"ratio{prefix}"] = spread / overall if overall > 0 else 0.0
            rows.append(row)
    order = ["segment", "feature", "std_within", "std_population", "ratio", "std_within_model",
             "std_population_model", "ratio_model"]
    return pd.DataFrame(rows)[order]


# --- writing -----------------------------------------------------------------------------------


def write_assignments(assigned: DataFrame, path: str | Path | None = None, url: str | None = None,
                      table: str | None = None, mode: str = "overwrite") -> None:
    """Write an assignment table as Parquet (a folder of part files) and/or to a database table over JDBC."""
    if path is not None:
        assigned.write.mode(mode).parquet(str(path))
    if url is not None:
        if not table:
            raise SegmlError("a JDBC write needs a table name")
        writer = assigned.write.format("jdbc").options(**jdbc_options(url)).option("dbtable", table)
        writer.option("batchsize", "10000").mode(mode).save()


def score_customers(spark: SparkSession, config: SegmlConfig, model: SegmentModel, segments: pd.DataFrame,
                    previous: pd.DataFrame | None, as_of: dt.date | None, run_id: str, model_version: int,
                    config_name: str = "the configuration") -> tuple[ContractReport, pd.DataFrame, DataFrame]:
    """Score every customer of the configured purchases with a fitted model, on Spark.

    Returns the contract's report, the rejected lines and the CRM assignment
    table as a Spark DataFrame (columns of :data:`segml.contract.CRM_COLUMNS`),
    with each customer's previously published segment (``previous``:
    ``customer_id``, ``segment_id``) beside the new one. Nothing is gathered
    to the driver but the counts and the rejected lines.
    """
    from pyspark.sql import functions as F

    from segml.contract import CRM_COLUMNS

    size_partitions(spark, config.spark, config.data)
    read_purchases(spark, config.data, config_name)
    report = classify_lines(spark, config.data, config.window.at(as_of))
    assigned = assign_segments(compute_features(spark, report.as_of), model, segments)
    if previous is not None and len(previous):
        before = spark.createDataFrame(previous[["customer_id", "segment_id"]].astype(str)
                                       .rename(columns={"segment_id": "previous_segment_id"}))
        assigned = assigned.join(before, "customer_id", "left")
    else:
        assigned = assigned.withColumn("previous_segment_id", F.lit(None).cast("string"))
    table = (assigned
             .withColumn("segment_changed", F.when(F.col("previous_segment_id").isNotNull(),
                                                   F.col("previous_segment_id") != F.col("segment_id")))
             .withColumn("as_of", F.lit(report.as_of))
             .withColumn("run_id", F.lit(run_id))
             .withColumn("model_version", F.lit(int(model_version)))
             .select(*CRM_COLUMNS))
    return report, rejected_lines(spark), table


# --- the engine interface ----------------------------------------------------------------------


class SparkEngine(Engine):
    """The steps of :class:`segml.engine.Engine` in one Spark session (see the module's notes)."""

    name = "spark"

    def __init__(self, spark: SparkSession, config: SparkConfig) -> None:
        self.spark = spark
        self.config = config

    def read(self, data: DataConfig, config_name: str = "the configuration",
             frame: pd.DataFrame | None = None) -> None:
        size_partitions(self.spark, self.config, data)
        if frame is not None:
            register_frame(self.spark, frame)
            check_columns(list(frame.columns), data.columns, config_name)
        else:
            read_purchases(self.spark, data, config_name)

    def classify_lines(self, data: DataConfig, window: WindowConfig) -> ContractReport:
        return classify_lines(self.spark, data, window)

    def features(self, as_of: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
        return collect_features(compute_features(self.spark, as_of))

    def rejected_lines(self, file: Path | None = None) -> pd.DataFrame | None:
        frame = rejected_lines(self.spark)
        if file is None:
            return frame
        write_csv(frame, file)
        return None

    def score(self, model: SegmentModel, segments: pd.DataFrame, as_of: dt.date) -> DataFrame:
        return assign_segments(compute_features(self.spark, as_of), model, segments)

    def write(self, table: DataFrame, path: str | Path | None = None, url: str | None = None,
              table_name: str | None = None, mode: str = "overwrite") -> None:
        write_assignments(table, path, url, table_name, mode)

    def close(self) -> None:
        uncache(self.spark)


def open_engine(config: SegmlConfig) -> SparkEngine:
    """The Spark engine in the session of ``config.spark`` (:func:`session`)."""
    return SparkEngine(session(config.spark), config.spark)
