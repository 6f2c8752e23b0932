"""Per-customer features on generated purchases: segml against plain scripts, side by side.

    python benchmarks/features_benchmark.py [--lines 10000000]

Generates ``benchmarks/data/purchases_<lines>.parquet`` (about 1 customer per
10 lines, 3 lines per order; text timestamps as real exports have them) if it
is missing, then runs every method in a fresh process and reports wall time
and peak resident memory:

- ``pandas``: a plain pandas script (read the columns, parse timestamps,
  group by customer: last and first purchase, distinct orders, total spend);
- ``duckdb_sql``: the same aggregation as one DuckDB query into Arrow;
- ``segml``: segml's whole path: the data contract (every line checked,
  duplicates found, rejections kept) and the five features as of a date,
  with ``duckdb.memory_limit: 500MB``;
- ``lifetimes``: ``summary_data_from_transaction_data``, when lifetimes is installed.
"""

from __future__ import annotations

import argparse
import json
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


def run_segml(path: Path) -> int:
    from segml.config import parse_config
    from segml.features import compute_features
    from segml.sources import connect, register_source
    from segml.validation import classify_lines

    config = parse_config({"data": {"path": str(path), "timestamp_format": "%Y-%m-%d %H:%M:%S", "columns": {
        "customer_id": "customer_id", "timestamp": "purchased_at", "order_id": "order_id",
        "quantity": "quantity", "unit_price": "unit_price"}}, "window": {"as_of": AS_OF},
        "duckdb": {"memory_limit": MEMORY_LIMIT}})
    con = connect(config.duckdb.memory_limit)
    register_source(con, config.data)
    report = classify_lines(con, config.data, config.window)
    features, _ = compute_features(con, report.as_of)
    return len(features)


def run_lifetimes(path: Path) -> int:
    import pandas as pd
    from lifetimes.utils import summary_data_from_transaction_data

    frame = pd.read_parquet(path, columns=["customer_id", "purchased_at", "quantity", "unit_price"])
    frame["amount"] = frame["quantity"] * frame["unit_price"]
    summary = summary_data_from_transaction_data(frame, "customer_id", "purchased_at", "amount",
                                                 observation_period_end=AS_OF)
    return len(summary)


METHODS = {"pandas": run_pandas, "duckdb_sql": run_duckdb, "segml": run_segml, "lifetimes": run_lifetimes}


def child(method: str, path: Path) -> None:
    start = time.perf_counter()
    customers = METHODS[method](path)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "seconds": seconds, "peak_mb": peak_mb, "customers": customers}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--methods", default="pandas,duckdb_sql,segml,lifetimes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.path))
        return
    path = HERE / "data" / f"purchases_{args.lines}.parquet"
    if not path.exists():
        start = time.perf_counter()
        generate(args.lines, path)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    rows = []
    for method in args.methods.split(","):
        done = subprocess.run([sys.executable, __file__, "--child", method, "--path", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"{method}: skipped ({last})")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\n{args.lines:,} purchase lines")
    print(f"{'method':<12}{'seconds':>10}{'peak MB':>10}{'customers':>12}")
    for r in rows:
        print(f"{r['method']:<12}{r['seconds']:>10.1f}{r['peak_mb']:>10,.0f}{r['customers']:>12,}")


if __name__ == "__main__":
    main()
