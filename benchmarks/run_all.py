"""Every speed and scale comparison in one go, printed as one table with the targets beside it.

    python benchmarks/run_all.py [--lines 10000000] [--large 100000000] [--spark]

1. Features on ``--lines`` generated purchase lines: a plain pandas script,
   lifetimes and Polars (when installed), one bare DuckDB query, and segml's
   whole path (data contract and features, ``duckdb.memory_limit: 500MB``),
   each in a fresh process. Beside them, the two passes any path that keeps
   the contract's promises must make, without the contract itself: the
   aggregation per order and then per customer (``duckdb_orders``) and the
   sorted line hashes that find exact duplicates (``hash_pass``).
2. Out of core: segml and those two passes on ``--large`` lines with
   ``duckdb.memory_limit: 2500MB`` (``--large 0`` leaves it out; generating
   100M lines takes about 2 minutes and 1 GB of disk).
3. The whole flow against the bare script, KMeans and a Gaussian mixture,
   k from 2 to 10, with the sampled fit compared to a fit on every customer.
4. Scoring 1,000,000 customers with a logged champion, in chunks.
5. With ``--spark``: segml's contract and features on Spark in local mode, beside the same
   aggregation as ``duckdb_orders`` written for Spark (``spark_bare``), in the same settings.

Uses the scripts beside it (``features_benchmark.py``, ``flow_benchmark.py``,
``score_benchmark.py``); the generated data stays in ``benchmarks/data/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: duckdb.memory_limit of the out-of-core run; the process peaks about 1 GB above it
#: (the features of millions of customers, as Arrow and as pandas).
LARGE_LIMIT = "2500MB"
sys.path.insert(0, str(HERE))
import features_benchmark
import flow_benchmark
import score_benchmark


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}"


#: The two passes a path that keeps the contract's promises cannot skip (see ``features_benchmark``).
FLOOR = ("duckdb_orders", "hash_pass")


def measure_features(methods: tuple[str, ...], lines: int, memory_limit: str | None,
                     rows: list[tuple[str, str, str, str]]) -> dict[str, dict]:
    """Each method on ``lines`` generated lines; a row each in ``rows``, the results by method."""
    path, results = features_benchmark.data_path(lines), {}
    limit = f", memory_limit {memory_limit}" if memory_limit else ""
    for method in methods:
        result = features_benchmark.measure(method, path, memory_limit)
        if result:
            results[method] = result
            counted = "lines" if method == "hash_pass" else "customers"
            rows.append((f"features {lines / 1e6:g}M lines: {method}{limit}", f"{result['seconds']:.1f}",
                         f"{result['peak_mb']:,.0f}", f"{result['customers']:,} {counted}"))
    return results


def floor_seconds(results: dict[str, dict]) -> float | None:
    """The two unavoidable passes' time, when both ran."""
    return sum(results[m]["seconds"] for m in FLOOR) if all(m in results for m in FLOOR) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--large", type=int, default=100_000_000)
    parser.add_argument("--spark", action="store_true")
    args = parser.parse_args()

    rows: list[tuple[str, str, str, str]] = []  # what, seconds, peak, notes
    path = features_benchmark.data_path(args.lines)
    methods = ("pandas", "lifetimes", "polars", "duckdb_sql", *FLOOR, "segml", *(["spark_bare", "spark"] if args.spark else []))
    features = measure_features(methods, args.lines, None, rows)
    large = measure_features((*FLOOR, "segml"), args.large, LARGE_LIMIT, rows) if args.large else {}
    flows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ("kmeans", "gmm"):
            for r in flow_benchmark.measure(path, algorithm, Path(tmp)):
                flows[(algorithm, r["kind"])] = r
                notes = (f"k={r['k']}, ARI sampled vs full fit {r['ari_sample_vs_full']:.3f}" if r["kind"] == "bare"
                         else f"k={r['k']}, + {r['prefect_startup']:.0f} s Prefect start-up, "
                              f"{r['store_setup']:.1f} s new MLflow store")
                rows.append((f"whole flow {args.lines / 1e6:g}M lines: {algorithm} {r['kind']}", f"{r['seconds']:.1f}",
                             f"{r['peak_mb']:,.0f}", notes))
    scoring = score_benchmark.measure()
    rows.append((f"scoring {scoring['customers']:,} customers (chunks of {scoring['chunk']:,})",
                 f"{scoring['seconds']:.2f}", "", f"{scoring['per_second']:,.0f} customers/s"))

    print(f"\nMachine: {machine()}\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'seconds':>8}  {'peak MB':>8}  notes")
    for what, seconds, peak, notes in rows:
        print(f"{what:<{width}}  {seconds:>8}  {peak:>8}  {notes}")

    print("\nTargets")
    segml = features.get("segml")
    if segml and "pandas" in features:
        print(f"  features vs pandas: {features['pandas']['seconds'] / segml['seconds']:.1f}x faster (target >= 2), "
              f"peak {segml['peak_mb']:,.0f} MB (target < 1,000)")
    floor = floor_seconds(features)
    if segml and "lifetimes" in features:
        lifetimes = features["lifetimes"]["seconds"]
        print(f"  features vs lifetimes: {lifetimes / segml['seconds']:.1f}x faster (target >= 8, "
              f"that is <= {lifetimes / 8:.1f} s here)"
              + (f"; the order aggregation and the hash pass alone took {floor:.1f} s" if floor else ""))
    if segml and "segml" in large:
        big = large["segml"]
        growth = big["seconds"] / segml["seconds"]
        print(f"  {args.large / 1e6:g}M lines: peak {big['peak_mb']:,.0f} MB (target < 4,000), "
              f"{growth:.1f}x the time of {args.lines / 1e6:g}M for {args.large / args.lines:g}x the lines")
        big_floor = floor_seconds(large)
        if floor and big_floor:
            print(f"    the order aggregation and the hash pass: {big_floor:.1f} s, {big_floor / floor:.1f}x their "
                  f"{args.lines / 1e6:g}M time")
    for algorithm in ("kmeans", "gmm"):
        bare, flow = flows.get((algorithm, "bare")), flows.get((algorithm, "flow"))
        if bare and flow:
            print(f"  flow {algorithm}: {flow['seconds']:.1f} s (target <= 60), "
                  f"{flow['seconds'] / bare['seconds']:.2f}x the bare script (target <= 1.5)")


if __name__ == "__main__":
    main()
