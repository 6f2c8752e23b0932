"""The whole flow against a bare script doing the same computations, on generated purchases.

    python benchmarks/flow_benchmark.py [--lines 10000000] [--algorithms kmeans,gmm]

For each algorithm (k chosen from 2 to 10): the bare script reads and checks
the purchases, computes features, fits and chooses k, scores quality, names
the segments and writes the CRM outputs (assignment table as CSV and Parquet,
the SQLite table), with no Prefect and no MLflow; the flow does the same plus
the Prefect run and the MLflow record (params, metrics, child runs, model,
plots, PDF report, artifacts). Both run in fresh processes; the flow uses a temporary MLflow store
and Prefect's temporary server (its start-up is reported apart). The sampled
fit is also compared with a fit on every customer (adjusted Rand index).
Uses the data of ``features_benchmark.py`` (generated when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from features_benchmark import data_path


def config_for(path: Path, algorithm: str, folder: Path) -> Path:
    raw = {
        "name": f"bench_{algorithm}",
        "data": {"path": str(path), "timestamp_format": "%Y-%m-%d %H:%M:%S", "columns": {
            "customer_id": "customer_id", "timestamp": "purchased_at", "order_id": "order_id",
            "quantity": "quantity", "unit_price": "unit_price"}},
        "window": {"as_of": "2024-01-01"},
        "model": {"algorithm": algorithm, "k_range": [2, 10],
                  "criterion": "bic" if algorithm == "gmm" else "silhouette", "covariance_type": "diag"},
        "output": {"dir": str(folder / "outputs")},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "artifact_location": str(folder / "mlartifacts")},
    }
    config = folder / f"bench_{algorithm}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def bare(config_path: str) -> dict:
    """The same computations and the same CRM outputs (CSV, Parquet, SQLite table), no Prefect, no MLflow."""
    from segml.config import load_config
    from segml.contract import CRM_COLUMNS
    from segml.outputs import write_results
    from segml.publish import create_engine, publish_assignments
    from segml.segmentation import prepare_purchases, segment_customers

    config = load_config(config_path)
    start = time.perf_counter()
    purchases = prepare_purchases(config)
    as_of = purchases.report.as_of
    result = segment_customers(purchases.features, config, as_of)
    table = result.assignments.assign(previous_segment_id=None, segment_changed=None, run_id="bare",
                                      model_version=0)[CRM_COLUMNS]
    folder = Path(config.output.dir) / "bare"
    write_results(folder, table, {"segments": result.segments, "candidates": result.candidates,
                                  "rejected_lines": purchases.rejected})
    catalogue = result.segments[["segment_id", "segment_name", "description"]].assign(
        status="active", first_as_of=as_of, last_as_of=as_of)
    engine = create_engine(f"sqlite:///{folder / 'crm.db'}")
    publish_assignments(engine, config.name, as_of, table, catalogue, "bare", 0)
    engine.dispose()
    seconds = time.perf_counter() - start

    # The sampled choice against a fit on every customer, same k.
    from sklearn.metrics import adjusted_rand_score

    from segml.models import fit_segments

    full_model = config.model.model_copy(update={"fit_sample": None, "selection_sample": None, "min_segment_share": 0.0,
                                                 "n_clusters": result.model.n_segments})
    full, _ = fit_segments(purchases.features.sort_index(), list(config.features), config.transform, full_model)
    ari = adjusted_rand_score(result.model.predict(purchases.features.sort_index()),
                              full.predict(purchases.features.sort_index()))
    return {"seconds": seconds, "k": result.model.n_segments, "customers": len(purchases.features),
            "ari_sample_vs_full": ari}


def flow(config_path: str) -> dict:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from prefect import flow as prefect_flow

    @prefect_flow
    def warm_up() -> None:
        """Starts Prefect's temporary server, timed apart from the segmentation."""

    start = time.perf_counter()
    warm_up()
    startup = time.perf_counter() - start
    # A scheduled rerun finds its MLflow store in place: creating a fresh one (its schema
    # migrations) is timed apart, like Prefect's start-up.
    from mlflow.tracking import MlflowClient

    from pipelines.segment import segment_customers
    from segml.config import load_config

    start = time.perf_counter()
    MlflowClient(tracking_uri=load_config(config_path).tracking.uri).search_experiments()
    store = time.perf_counter() - start

    start = time.perf_counter()
    summary = segment_customers(config_path)
    return {"seconds": time.perf_counter() - start, "prefect_startup": startup, "store_setup": store,
            "k": summary["n_segments"]}


def child(kind: str, config_path: str) -> None:
    result = {"bare": bare, "flow": flow}[kind](config_path)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def measure(path: Path, algorithm: str, folder: Path) -> list[dict]:
    """The bare script and the flow for one algorithm, each in a fresh process."""
    config = config_for(path, algorithm, folder)
    rows = []
    for kind in ("bare", "flow"):
        done = subprocess.run([sys.executable, __file__, "--child", kind, str(config)],
                              capture_output=True, text=True, check=False)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{algorithm} {kind} failed:\n{done.stderr[-3000:]}")
            continue
        rows.append({"algorithm": algorithm, "kind": kind, **json.loads(lines[-1][7:])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--algorithms", default="kmeans,gmm")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    path = data_path(args.lines)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in args.algorithms.split(","):
            rows += measure(path, algorithm, Path(tmp))
    print(f"\n{args.lines:,} purchase lines, k from 2 to 10")
    print(f"{'algorithm':<10}{'run':<6}{'seconds':>9}{'peak MB':>9}{'k':>4}  notes")
    for r in rows:
        notes = (f"ARI sampled vs full fit {r['ari_sample_vs_full']:.3f}" if r["kind"] == "bare"
                 else f"+ {r['prefect_startup']:.0f} s Prefect start-up, {r['store_setup']:.1f} s new MLflow store")
        print(f"{r['algorithm']:<10}{r['kind']:<6}{r['seconds']:>9.1f}{r['peak_mb']:>9,.0f}{r['k']:>4}  {notes}")
    for algorithm in args.algorithms.split(","):
        pair = {r["kind"]: r["seconds"] for r in rows if r["algorithm"] == algorithm}
        if len(pair) == 2:
            print(f"{algorithm}: flow / bare = {pair['flow'] / pair['bare']:.2f}")


if __name__ == "__main__":
    main()
