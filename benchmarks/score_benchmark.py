"""Scoring throughput: every customer assigned by a logged champion model, in chunks.

    python benchmarks/score_benchmark.py [--customers 1000000] [--chunk 100000]

Fits a KMeans segmentation on generated RFM features, logs it as the pyfunc
model the flow logs (temporary MLflow store), loads it back as a champion is
loaded, and scores every customer chunk by chunk. Prints customers per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def features(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"recency_days": rng.integers(1, 700, n), "frequency": rng.integers(1, 40, n),
                          "monetary": rng.lognormal(5, 1.2, n).round(2)})
    frame.index = pd.Index([f"C{i}" for i in range(n)], name="customer_id")
    return frame


def measure(customers: int = 1_000_000, chunk: int = 100_000) -> dict:
    """Seconds and customers per second of scoring ``customers`` with a logged champion pyfunc."""
    from pipelines.score import score_in_chunks
    from segml import tracking
    from segml.config import parse_config
    from segml.models import fit_segments

    X = features(customers)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        config = parse_config({"name": "score_bench", "data": {"path": "x.csv", "columns": {
            "customer_id": "c", "timestamp": "t", "amount": "a"}}, "model": {"n_clusters": 6},
            "tracking": {"uri": uri, "artifact_location": str(Path(tmp) / "art")}})
        model, _ = fit_segments(X, list(config.features), config.transform, config.model)
        handle = tracking.start_run(config)
        names = {s: (f"S{s + 1}", f"Segment {s + 1}") for s in range(model.n_segments)}
        model_uri, _ = tracking.log_model(handle, config, model, names, X)
        tracking.end_run(handle)
        champion = tracking.load_model(model_uri, uri)
        start = time.perf_counter()
        scored = score_in_chunks(champion, X, chunk)
        seconds = time.perf_counter() - start
    assert len(scored) == len(X)
    return {"customers": len(X), "chunk": chunk, "seconds": seconds, "per_second": len(X) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    args = parser.parse_args()
    r = measure(args.customers, args.chunk)
    print(f"{r['customers']:,} customers scored in {r['seconds']:.1f} s with chunks of {r['chunk']:,}: "
          f"{r['per_second']:,.0f} customers/s")


if __name__ == "__main__":
    main()
