"""segml against a bare pandas + scikit-learn script, on the Online Retail sample, in one run.

    python benchmarks/speed_benchmark.py [--data ../shared/data/online_retail_240k.parquet] [--repeat 3]

Measures, each ``--repeat`` times (the median is reported), in fresh processes:

- ``bare``: ``benchmarks/bare_segmentation.py`` (read, clean, RFM, KMeans k = 4..8 by silhouette, CSV);
- ``segml run`` cold: no Prefect server running, so the command starts Prefect's temporary server;
- ``segml run`` with a Prefect server already running (started here, once, before the measurements);
- ``segml score`` with the server running, against ``bare`` fitting the one chosen k (``--k K,K``);
- ``segml demo`` (a fresh folder each time: sample data, a new MLflow store, the flow, then a campaign
  and its report) with the server running, against ``bare demo``: the same sample purchases generated
  by segml's own generator, then ``bare`` on them (k = 2..8, as the demo);
- the time from starting ``segml run`` on a terminal (a pseudo-terminal here) to its first output.

Every number comes from the same run, on the same machine state; nothing is compared with a figure
measured another day.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return elapsed


def first_output(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds from starting ``command`` on a pseudo-terminal to its first byte of output; the command
    is then left to finish."""
    main, secondary = pty.openpty()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    ready, _, _ = select.select([main], [], [], 120)
    elapsed = time.perf_counter() - started
    while True:  # drain until the command ends
        try:
            if not os.read(main, 65536):
                break
        except OSError:
            break
    process.wait()
    os.close(main)
    return elapsed if ready else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prefect(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen([PYTHON, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(1)
    process.kill()
    raise SystemExit("prefect server did not start")


#: Writes ``segml demo``'s sample purchases (the same generator and seed) into the folder argv[1].
GENERATE = "import sys; from segml.sample import write_sample; write_sample(sys.argv[1])"


def bare_demo(folder: Path) -> list[str]:
    """The bare script on the demo's sample purchases, with the demo's columns, date and k range."""
    from segml.sample import SAMPLE_CONFIG

    data = SAMPLE_CONFIG["data"]
    columns = data["columns"]
    return [PYTHON, str(HERE / "bare_segmentation.py"), str(folder / data["path"]), str(folder / "bare.csv"),
            "--as-of", SAMPLE_CONFIG["window"]["as_of"], "--customer", columns["customer_id"],
            "--timestamp", columns["timestamp"], "--order", columns["order_id"], "--quantity", columns["quantity"],
            "--price", columns["unit_price"], "--timestamp-format", data["timestamp_format"],
            "--k", ",".join(str(k) for k in SAMPLE_CONFIG["model"]["k_range"])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "online_retail_240k.parquet"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segml-speed-"))
    raw = yaml.safe_load((REPO / "configs" / "online_retail.yaml").read_text())
    raw["data"]["path"] = str(Path(args.data).resolve())
    raw["output"] = {"dir": str(work / "outputs")}
    raw["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_location": str(work / "artifacts")}
    config = work / "online_retail.yaml"
    config.write_text(yaml.safe_dump(raw))
    segml = [PYTHON, "-m", "segml"]
    bare = [PYTHON, str(HERE / "bare_segmentation.py"), raw["data"]["path"], str(work / "bare.csv"),
            "--as-of", str(raw["window"]["as_of"])]
    cold_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    cold_env["PREFECT_HOME"] = str(work / "prefect-temporary")
    timed(segml + ["run", str(config)], cold_env, work)  # first run: creates the stores, publishes once

    server, url = start_prefect(work / "prefect-server")
    warm_env = {**cold_env, "PREFECT_API_URL": url}
    results: dict[str, list[float]] = {}
    try:
        for _ in range(args.repeat):
            results.setdefault("bare script", []).append(timed(bare, cold_env, work))
            results.setdefault("segml run, cold", []).append(timed(segml + ["run", str(config)], cold_env, work))
            results.setdefault("segml run, server running", []).append(
                timed(segml + ["run", str(config)], warm_env, work))
            results.setdefault("segml score, server running", []).append(
                timed(segml + ["score", str(config)], warm_env, work))
            results.setdefault("bare script, one k", []).append(timed(bare + ["--k", "4,4"], cold_env, work))
            results.setdefault("segml run, first output on a terminal", []).append(
                first_output(segml + ["run", str(config)], warm_env, work))
            demo = Path(tempfile.mkdtemp(prefix="demo-", dir=work))
            results.setdefault("bare demo (generate, then bare script)", []).append(
                timed([PYTHON, "-c", GENERATE, str(demo / "bare")], cold_env, work)
                + timed(bare_demo(demo / "bare"), cold_env, work))
            results.setdefault("segml demo, server running", []).append(
                timed(segml + ["demo", "--dir", str(demo / "segml")], warm_env, work))
    finally:
        server.terminate()
        server.wait(timeout=30)
    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"{'measurement':42} {'median s':>9}  runs")
    for name, value in median.items():
        print(f"{name:42} {value:9.1f}  {', '.join(f'{v:.1f}' for v in results[name])}")
    base = median["bare script"]
    print(f"\nsegml run cold / bare: {median['segml run, cold'] / base:.2f}x; with a server running: "
          f"{median['segml run, server running'] / base:.2f}x; segml score / bare one k: "
          f"{median['segml score, server running'] / median['bare script, one k']:.2f}x; segml demo / bare demo: "
          f"{median['segml demo, server running'] / median['bare demo (generate, then bare script)']:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
