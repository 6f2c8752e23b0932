"""The anchor of the speed benchmark: what a data scientist writes by hand with pandas and scikit-learn.

Reads the purchases, drops lines without a customer, with a zero or negative
price, unparseable dates and exact duplicates, nets cancellations, computes
recency, frequency and monetary as of a date, log-transforms and scales them,
fits KMeans for k = 4..8 and keeps the best silhouette, writes one CSV.
No validation report, no MLflow, no Prefect, no report, no publication.

    python benchmarks/bare_segmentation.py PURCHASES.parquet OUT.csv [--as-of YYYY-MM-DD]
      [--customer CustomerID --timestamp InvoiceDate --order InvoiceNo --quantity Quantity
       --price UnitPrice --timestamp-format "%m/%d/%y %H:%M"]
"""

from __future__ import annotations

import argparse
import time

started = time.perf_counter()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--as-of")
    parser.add_argument("--customer", default="CustomerID")
    parser.add_argument("--timestamp", default="InvoiceDate")
    parser.add_argument("--order", default="InvoiceNo")
    parser.add_argument("--quantity", default="Quantity")
    parser.add_argument("--price", default="UnitPrice")
    parser.add_argument("--timestamp-format", default="%m/%d/%y %H:%M")
    parser.add_argument("--k", default="4,8")
    args = parser.parse_args()

    lines = pd.read_parquet(args.source) if args.source.endswith(".parquet") else pd.read_csv(args.source)
    lines = lines.drop_duplicates()
    lines = lines[lines[args.customer].notna() & (lines[args.price] > 0)].copy()
    lines["when"] = pd.to_datetime(lines[args.timestamp], format=args.timestamp_format, errors="coerce")
    lines = lines[lines["when"].notna()]
    lines["customer"] = lines[args.customer].astype(str).str.replace(r"\.0$", "", regex=True)
    lines["amount"] = lines[args.quantity] * lines[args.price]
    as_of = pd.Timestamp(args.as_of) if args.as_of else lines["when"].max().normalize() + pd.Timedelta(days=1)
    lines = lines[lines["when"] < as_of]
    orders = lines.groupby(["customer", args.order]).agg(when=("when", "min"), amount=("amount", "sum"))
    orders = orders.reset_index()
    bought = orders[orders["amount"] > 0]
    rfm = pd.DataFrame({
        "recency_days": (as_of - bought.groupby("customer")["when"].max()).dt.days,
        "frequency": bought.groupby("customer").size(),
        "monetary": orders.groupby("customer")["amount"].sum(),
    }).dropna()
    rfm = rfm[rfm["monetary"] > 0]
    X = StandardScaler().fit_transform(np.log1p(rfm.to_numpy(dtype=float)))
    low, high = (int(v) for v in args.k.split(","))
    best = None
    for k in range(low, high + 1):
        model = KMeans(n_clusters=k, n_init=4, random_state=0).fit(X)
        score = silhouette_score(X, model.labels_, sample_size=min(10_000, len(X)), random_state=0)
        if best is None or score > best[0]:
            best = (score, k, model.labels_)
    rfm.assign(segment=best[2]).to_csv(args.out)
    print(f"{len(lines):,} lines used, {len(rfm):,} customers, k={best[1]}, "
          f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
