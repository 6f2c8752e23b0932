"""Peak memory of the data contract on a file whose lines are mostly rejected.

    python benchmarks/rejected_memory.py [--lines 2020000] [--memory-limit 500MB]

Writes a CSV of purchase lines of which 95% are rejected for mixed reasons
(missing customer id, zero price, unparseable date, non-numeric price), then
reads it twice, each in a fresh process: once keeping the rejected lines as
a frame (as ``prepare_purchases`` returns them to a caller who asks), once
streaming them to a CSV file (as the flows and ``segml validate`` do). Prints
each process's peak resident memory and wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHILD = """
import resource
import sys
from pathlib import Path
from segml.config import load_config
from segml.segmentation import prepare_purchases
config, mode = sys.argv[1], sys.argv[2]
target = Path(config).parent / "rejected_lines.csv" if mode == "file" else None
purchases = prepare_purchases(load_config(config), rejected_file=target)
print(purchases.report.rows_read, purchases.report.rows_rejected, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_lines(path: Path, lines: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 20, lines)  # 0: a valid line (5%); 1-19: rejected
    customer = np.char.add("C", rng.integers(0, 50_000, lines).astype(str)).astype(object)
    minutes = rng.integers(0, 365 * 24 * 60, lines)
    when = (pd.Timestamp("2023-01-01") + pd.to_timedelta(minutes, unit="min")).strftime("%Y-%m-%d %H:%M")
    when = when.to_numpy(dtype=object)
    price = np.round(rng.uniform(1, 50, lines), 2).astype(str).astype(object)
    customer[kind % 4 == 1] = ""
    price[kind % 4 == 2] = "0"
    when[kind % 4 == 3] = "not a date"
    price[(kind != 0) & (kind % 4 == 0)] = "abc"
    pd.DataFrame({"invoice": np.char.add("I", np.arange(lines).astype(str)), "customer": customer, "when": when,
                  "qty": rng.integers(1, 10, lines), "price": price,
                  "note": "free text about the product " + pd.Series(rng.integers(0, 1000, lines)).astype(str),
                  }).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2_020_000)
    parser.add_argument("--memory-limit", default="500MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segml-rejected-") as tmp:
        folder = Path(tmp)
        write_lines(folder / "lines.csv", args.lines)
        (folder / "config.yaml").write_text(
            "name: rejected\ndata:\n  path: lines.csv\n  columns: {customer_id: customer, timestamp: when, "
            "order_id: invoice, quantity: qty, unit_price: price}\n  timestamp_format: '%Y-%m-%d %H:%M'\n"
            f"window: {{as_of: 2024-01-01}}\nduckdb: {{memory_limit: {args.memory_limit}}}\n")
        for mode in ("frame", "file"):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD, str(folder / "config.yaml"), mode],
                                  capture_output=True, text=True, check=True)
            wall = time.perf_counter() - start
            read, rejected, peak_kb = done.stdout.split()[-3:]
            print(f"{mode:>5}: {int(read):,} lines, {int(rejected):,} rejected, {wall:.1f} s, "
                  f"peak memory {int(peak_kb) / 1024 ** 2:.2f} GB")


if __name__ == "__main__":
    main()
