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


def summary_fingerprint(run: dict) -> str:
    return {p["key"]: p["value"] for p in run["data"]["params"]}["input_fingerprint"]


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


def _rest(url: str, path: str, **query) -> dict:
    """A GET on the tracking server's REST API, as the MLflow UI makes it."""
    import json
    import urllib.parse

    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.load(r)


@pytest.mark.slow
def test_a_whole_run_is_logged_to_a_tracking_server_over_http(prefect_harness, mlflow_server, tmp_path, capfd):
    config_path = write_flow_config(tmp_path, tracking={"uri": mlflow_server, "artifact_location": None})
    summary = segment_customers(str(config_path))
    assert "View run" not in capfd.readouterr().out  # MLflow's own lines stay out of what segml prints

    # What a reviewer finds on the run's page, read through the server's REST API.
    run = _rest(mlflow_server, "runs/get", run_id=summary["run_id"])["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    description = tags["mlflow.note.content"]
    assert "| id | segment | customers | share |" in description and "Champions" in description
    assert "Published." in description
    assert tags["segml.as_of"] == "2024-01-01" and tags["mlflow.source.type"] == "JOB"
    assert tags["mlflow.user"] and tags["segml.data_source"].endswith("purchases.csv")
    assert len(tags["segml.prefect.flow_run_id"]) == 36  # the Prefect flow run that made it
    (dataset,) = run["inputs"]["dataset_inputs"]
    assert dataset["dataset"]["digest"] == summary_fingerprint(run)[:36]
    assert '"lines_read": ' in dataset["dataset"]["profile"] and dataset["dataset"]["source_type"] == "local"
    assert {"key": "mlflow.data.context", "value": "training"} in dataset["tags"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert "" not in params.values() and "tracking_uri" not in params
    assert params["tracking.uri"] == mlflow_server and params["window.as_of"] == "2024-01-01"
    history = _rest(mlflow_server, "metrics/get-history", run_id=summary["run_id"],
                    metric_key="candidate.silhouette")["metrics"]
    assert sorted(m["step"] for m in history) == [2, 3, 4, 5, 6, 7, 8]
    version = _rest(mlflow_server, "model-versions/get", name="segml-sample",
                    version=str(summary["model_version"]))["model_version"]
    assert "as of 2024-01-01, k = 5" in version["description"] and version["run_id"] == summary["run_id"]
    version_tags = {t["key"]: t["value"] for t in version["tags"]}
    assert version_tags["as_of"] == "2024-01-01" and version_tags["k"] == "5" and version_tags["gates"]

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
def test_online_retail_runs_quietly_through_the_command_line(online_retail_path, tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "online_retail.yaml").read_text())
    raw["data"]["path"] = str(online_retail_path)
    raw["output"] = {"dir": str(tmp_path / "outputs")}
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_location": str(tmp_path / "art")}
    config_path = tmp_path / "online_retail.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "segml", "run", str(config_path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    # Quiet by default: no Prefect states, no MLflow lines, on either stream; the results on stdout.
    for noise in ("Finished in state", "Task run", "Flow run", "INFO mlflow", "WARNING mlflow", "mlflow.store",
                  "mlflow.pyfunc", "MLflow database", "View run", "Registered model", "Created version",
                  "CloudPickle", "integer column", "temporary server"):
        assert noise not in done.stderr and noise not in done.stdout, noise
    assert "segments as of 2011-06-27" in done.stdout and "240,007 read" in done.stdout
    assert "Review it in the MLflow UI: mlflow ui --backend-store-uri sqlite:///" in done.stdout
    folder = next((tmp_path / "outputs").glob("*/2011-06-27"))
    segments = pd.read_csv(folder / "segments.csv")
    assert 4 <= len(segments) <= 8
    assert segments["share"].min() >= 0.02 and segments["segment_name"].is_unique
    assert (folder / "segment_report.pdf").stat().st_size > 50_000
    contract = pd.read_csv(folder / "contract.csv")
    rejected = pd.read_csv(folder / "rejected_lines.csv", low_memory=False)
    assert len(rejected) == contract.loc[contract["status"] == "rejected", "lines"].sum()
    assert contract["lines"].sum() == 240_007
