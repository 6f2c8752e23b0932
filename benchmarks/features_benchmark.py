"""Per-customer features on generated purchases: segml against plain scripts, side by side.

    python benchmarks/features_benchmark.py [--lines 10000000]

Generates ``benchmarks/data/purchases_<lines>.parquet`` (about 1 customer per
10 lines, 3 lines per order; text timestamps as real exports have them) if it
is missing, then runs every method in a fresh process and reports wall time
and peak resident memory:

- ``pandas``: a plain pandas script (read the columns, parse timestamps,
  group by customer: last and first purchase, distinct orders, total spend);
- ``duckdb_sql``: the same aggregation as one DuckDB query into Arrow;
- ``duckdb_orders``: the least a contract-keeping path has to do, in DuckDB:
  the same timestamps parsed, one row per customer and order, then one per
  customer (distinct orders counted from it), sorted by customer into Arrow;
  no check of any line;
- ``hash_pass``: the least exact duplicates cost: every line's 64-bit hash
  (all columns) read into numpy and sorted;
- ``segml``: segml's whole path: the data contract (every line checked,
  duplicates found, rejections kept) and the five features as of a date,
  with ``duckdb.memory_limit: 500MB`` (``--memory-limit``);
- ``lifetimes``: ``summary_data_from_transaction_data``, when lifetimes is installed;
- ``polars``: the same aggregation as a Polars lazy query, when Polars is installed;
- ``spark``: segml's contract and features on Spark in local mode (``engine: spark``),
  when PySpark is installed;
- ``spark_bare``: ``duckdb_orders`` written for Spark (per order, then per customer,
  to the driver, sorted by customer there; no check of any line), in the same Spark
  session as ``spark`` (:func:`segml.spark_engine.session`, the same settings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AS_OF = "2024-01-01"
MEMORY_LIMIT = "500MB"  # duckdb.memory_limit for the segml run: DuckDB spills rather than grow past it


def generate(lines: int, path: Path) -> None:
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    duckdb.connect().execute(f"""
        COPY (
          SELECT 'O' || (i // 3)::VARCHAR AS order_id,
                 (hash(i // 3) % {max(lines // 10, 1)})::VARCHAR AS customer_id,
                 strftime(TIMESTAMP '2022-01-01' + to_seconds(((hash(i // 3) // 7) % (730 * 86400))::BIGINT),
                          '%Y-%m-%d %H:%M:%S') AS purchased_at,
                 'P' || (hash(i) % 5000)::VARCHAR AS product,
                 (1 + hash(i * 7) % 6)::INTEGER AS quantity,
                 round(1 + (hash(i * 13) % 5000) / 100.0, 2) AS unit_price
          FROM range({lines}) t(i)
        ) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
    """)


def run_pandas(path: Path) -> int:
    import pandas as pd

    frame = pd.read_parquet(path, columns=["order_id", "customer_id", "purchased_at", "quantity", "unit_price"])
    frame["ts"] = pd.to_datetime(frame["purchased_at"], format="%Y-%m-%d %H:%M:%S")
    frame["amount"] = frame["quantity"] * frame["unit_price"]
    grouped = frame.groupby("customer_id")
    result = pd.DataFrame({"last": grouped["ts"].max(), "first": grouped["ts"].min(),
                           "orders": grouped["order_id"].nunique(), "spend": grouped["amount"].sum()})
    return len(result)


def run_duckdb(path: Path) -> int:
    import duckdb

    result = duckdb.connect().execute(f"""
        SELECT customer_id, max(ts) AS last, min(ts) AS first, count(DISTINCT order_id) AS orders,
               sum(quantity * unit_price) AS spend
        FROM (SELECT *, strptime(purchased_at, '%Y-%m-%d %H:%M:%S') AS ts FROM '{path}')
        GROUP BY customer_id
    """)
    table = result.to_arrow_table() if hasattr(result, "to_arrow_table") else result.fetch_arrow_table()
    return table.num_rows


def run_duckdb_orders(path: Path) -> int:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{os.environ.get('SEGML_BENCH_MEMORY', MEMORY_LIMIT)}'")
    relation = con.sql(f"""
        SELECT customer_id, max(last_day) AS last, min(first_day) AS first, count(*) AS orders, sum(spend) AS spend
        FROM (SELECT customer_id, order_id, max(ts::DATE) AS last_day, min(ts::DATE) AS first_day,
                     sum(quantity * unit_price) AS spend
              FROM (SELECT *, strptime(purchased_at, '%Y-%m-%d %H:%M:%S') AS ts FROM '{path}')
              GROUP BY customer_id, order_id)
        GROUP BY customer_id ORDER BY customer_id
    """)
    return relation.to_arrow_table().num_rows


def run_hash_pass(path: Path) -> int:
    import duckdb

    con = duckdb.connect()
    columns = ", ".join(f'"{name}"' for name, *_ in con.execute(f"DESCRIBE SELECT * FROM '{path}'").fetchall())
    hashes = con.execute(f"SELECT hash({columns}) AS h FROM '{path}'").fetchnumpy()["h"]
    hashes.sort()
    return len(hashes)


def segml_config(path: Path, **extra):
    from segml.config import parse_config

    return parse_config({"data": {"path": str(path), "timestamp_format": "%Y-%m-%d %H:%M:%S", "columns": {
        "customer_id": "customer_id", "timestamp": "purchased_at", "order_id": "order_id",
        "quantity": "quantity", "unit_price": "unit_price"}}, "window": {"as_of": AS_OF}, **extra})


def run_segml(path: Path) -> int:
    from segml.features import compute_features
    from segml.sources import connect, register_source
    from segml.validation import classify_lines

    config = segml_config(path, duckdb={"memory_limit": os.environ.get("SEGML_BENCH_MEMORY", MEMORY_LIMIT)})
    con = connect(config.duckdb.memory_limit)
    register_source(con, config.data)
    report = classify_lines(con, config.data, config.window)
    features, _ = compute_features(con, report.as_of)
    return len(features)


def run_spark(path: Path) -> int:
    from segml.engine import open_engine

    config = segml_config(path, engine="spark")
    with open_engine(config) as engine:
        engine.spark.sparkContext.setLogLevel("ERROR")
        engine.read(config.data)
        report = engine.classify_lines(config.data, config.window)
        features, _ = engine.features(report.as_of)
    return len(features)


def run_spark_bare(path: Path) -> int:
    from pyspark.sql import functions as F

    from segml import spark_engine

    config = segml_config(path, engine="spark")
    spark = spark_engine.session(config.spark)
    spark.sparkContext.setLogLevel("ERROR")
    spark_engine.size_partitions(spark, config.spark, config.data)  # as the segml run sizes them
    lines = spark.read.parquet(str(path)).withColumn(
        "day", F.to_date(F.to_timestamp("purchased_at", "yyyy-MM-dd HH:mm:ss")))
    orders = lines.groupBy("customer_id", "order_id").agg(
        F.max("day").alias("last_day"), F.min("day").alias("first_day"),
        F.sum(F.col("quantity") * F.col("unit_price")).alias("spend"))
    customers = orders.groupBy("customer_id").agg(
        F.max("last_day").alias("last"), F.min("first_day").alias("first"), F.count("*").alias("orders"),
        F.sum("spend").alias("spend"))
    return len(customers.toPandas().sort_values("customer_id"))  # sorted as segml sorts them


def run_polars(path: Path) -> int:
    import polars as pl

    result = (pl.scan_parquet(path)
              .with_columns(pl.col("purchased_at").str.strptime(pl.Datetime, "%Y-%m-%d %H:%M:%S").alias("ts"),
                            (pl.col("quantity") * pl.col("unit_price")).alias("amount"))
              .group_by("customer_id")
              .agg(pl.col("ts").max().alias("last"), pl.col("ts").min().alias("first"),
                   pl.col("order_id").n_unique().alias("orders"), pl.col("amount").sum().alias("spend"))
              .collect())
    return result.height


def run_lifetimes(path: Path) -> int:
    import pandas as pd
    from lifetimes.utils import summary_data_from_transaction_data

    frame = pd.read_parquet(path, columns=["customer_id", "purchased_at", "quantity", "unit_price"])
    frame["amount"] = frame["quantity"] * frame["unit_price"]
    summary = summary_data_from_transaction_data(frame, "customer_id", "purchased_at", "amount",
                                                 observation_period_end=AS_OF)
    return len(summary)


METHODS = {"pandas": run_pandas, "lifetimes": run_lifetimes, "polars": run_polars, "duckdb_sql": run_duckdb,
           "duckdb_orders": run_duckdb_orders, "hash_pass": run_hash_pass, "segml": run_segml, "spark": run_spark,
           "spark_bare": run_spark_bare}


def child(method: str, path: Path) -> None:
    start = time.perf_counter()
    customers = METHODS[method](path)
    seconds = time.perf_counter() - start
    # Spark's work happens in its JVM, a child process: its peak counts too.
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"method": method, "seconds": seconds, "peak_mb": peak_kb / 1024, "customers": customers}))


def data_path(lines: int) -> Path:
    """The generated purchases of ``lines`` lines (generated when missing)."""
    path = HERE / "data" / f"purchases_{lines}.parquet"
    if not path.exists():
        start = time.perf_counter()
        generate(lines, path)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    return path


def measure(method: str, path: Path, memory_limit: str | None = None) -> dict | None:
    """One method in a fresh process: seconds, peak MB and customers; None (with the reason) when it fails."""
    env = dict(os.environ, **({"SEGML_BENCH_MEMORY": memory_limit} if memory_limit else {}))
    done = subprocess.run([sys.executable, __file__, "--child", method, "--path", str(path)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"{method}: skipped ({last})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--methods", default="pandas,lifetimes,polars,duckdb_sql,duckdb_orders,hash_pass,segml")
    parser.add_argument("--memory-limit", help=f"duckdb.memory_limit of the segml run (default {MEMORY_LIMIT})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.path))
        return
    path = data_path(args.lines)
    rows = [r for r in (measure(m, path, args.memory_limit) for m in args.methods.split(",")) if r]
    print(f"\n{args.lines:,} purchase lines")
    print(f"{'method':<12}{'seconds':>10}{'peak MB':>10}{'customers':>12}")
    for r in rows:
        print(f"{r['method']:<12}{r['seconds']:>10.1f}{r['peak_mb']:>10,.0f}{r['customers']:>12,}")


if __name__ == "__main__":
    main()
