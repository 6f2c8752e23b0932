"""A whole run logged over HTTP to a real `mlflow server`, and the Online Retail data through the flow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, write_flow_config
from segml import tracking
from pipelines.segment import segment_customers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_a_whole_run_is_logged_to_a_tracking_server_over_http(prefect_harness, mlflow_server, tmp_path):
    config_path = write_flow_config(tmp_path, tracking={"uri": mlflow_server, "artifact_location": None})
    summary = segment_customers(str(config_path))
    assert summary["tracking_uri"] == mlflow_server
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["n_segments"] == 5
    assert {"assignments.parquet", "segment_report.pdf", "plots"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    logged = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="assignments.parquet", tracking_uri=mlflow_server))
    model = tracking.load_model(f"models:/segml-sample/{summary['model_version']}", mlflow_server)
    scored = model.predict(logged[["recency_days", "frequency", "monetary"]])
    pd.testing.assert_frame_equal(scored, logged[["segment_id", "segment_name", "segment_probability"]],
                                  check_dtype=False)


@pytest.mark.slow
def test_online_retail_runs_through_the_flow_with_the_shipped_config(prefect_harness, online_retail_path, tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "online_retail.yaml").read_text())
    raw["data"]["path"] = str(online_retail_path)
    raw["output"] = {"dir": str(tmp_path / "outputs")}
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_location": str(tmp_path / "art")}
    config_path = tmp_path / "online_retail.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    summary = segment_customers(str(config_path))
    assert summary["rows_read"] == 240_007 and summary["as_of"] == "2011-06-27"
    assert 4 <= summary["n_segments"] <= 8
    folder = Path(summary["output_dir"])
    segments = pd.read_csv(folder / "segments.csv")
    assert segments["share"].min() >= 0.02 and segments["segment_name"].is_unique
    assert (folder / "segment_report.pdf").stat().st_size > 50_000
    rejected = pd.read_csv(folder / "rejected_lines.csv", low_memory=False)
    assert len(rejected) == summary["rows_rejected"]
