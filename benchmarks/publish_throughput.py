"""Publishing throughput: 1,000,000 assignments to SQLite and to PostgreSQL.

    python benchmarks/publish_throughput.py [--rows 1000000] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

Each database gets a first publication (into empty tables) and a republication
of the same as-of date (delete and reload in one transaction). PostgreSQL is
skipped when it does not answer. Prints rows per second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from segml.contract import CRM_COLUMNS
from segml.publish import create_engine, publish_assignments

CATALOGUE = pd.DataFrame({"segment_id": [f"S{i}" for i in range(1, 7)], "segment_name": [f"Segment {i}" for i in range(1, 7)],
                          "status": "active", "first_as_of": "2024-01-01", "last_as_of": "2024-01-01"})


def make_assignments(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    segment = rng.integers(1, 7, rows)
    previous = np.where(rng.random(rows) < 0.1, None, np.array([f"S{s}" for s in range(7)], dtype=object)[segment])
    frame = pd.DataFrame({
        "customer_id": np.char.add("C", np.arange(rows).astype(str)),
        "segment_id": np.array([f"S{s}" for s in range(7)], dtype=object)[segment],
        "segment_name": np.array([f"Segment {s}" for s in range(7)], dtype=object)[segment],
        "segment_probability": rng.random(rows),
        "recency_days": rng.integers(1, 700, rows), "frequency": rng.integers(1, 50, rows),
        "monetary": rng.lognormal(5, 1, rows).round(2), "tenure_days": rng.integers(1, 1500, rows),
        "avg_order_value": rng.lognormal(3, 1, rows).round(2),
        "previous_segment_id": previous,
        "segment_changed": pd.array([None if p is None else bool(rng.random() < 0.2) for p in previous], dtype="boolean"),
        "as_of": dt.date(2024, 1, 1), "run_id": "benchmark", "model_version": 1,
    })
    return frame[CRM_COLUMNS]


def measure(engine: sa.Engine, frame: pd.DataFrame) -> tuple[float, float]:
    timings = []
    for _ in range(2):  # first publication, then the same as-of date again
        start = time.perf_counter()
        publish_assignments(engine, "benchmark", dt.date(2024, 1, 1), frame, CATALOGUE, "benchmark", 1)
        timings.append(time.perf_counter() - start)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    frame = make_assignments(args.rows)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        results.append(("SQLite (file)", *measure(engine, frame)))
        engine.dispose()
    schema = f"segml_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.postgres)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL skipped: {str(exc.orig).splitlines()[0]}")
    else:
        engine = sa.create_engine(args.postgres, connect_args={"options": f"-csearch_path={schema}"})
        try:
            results.append(("PostgreSQL (COPY)", *measure(engine, frame)))
        finally:
            engine.dispose()
            with admin.begin() as connection:
                connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()
    print(f"\n{args.rows:,} assignments")
    print(f"{'database':<20}{'first publish':>16}{'rows/s':>12}{'republish':>14}{'rows/s':>12}")
    for name, first, again in results:
        print(f"{name:<20}{first:>15.1f}s{args.rows / first:>12,.0f}{again:>13.1f}s{args.rows / again:>12,.0f}")


if __name__ == "__main__":
    main()
