"""segml against a real Spark standalone cluster: a master and one worker on loopback, started from
PySpark's own scripts, so executors run in their own JVMs with their own Python workers (unlike
``local[*]``): the fitted model travels to them, they write the Parquet, and they write to
PostgreSQL over JDBC.

Skips with the reason when PySpark or Java is missing; the JDBC part needs PostgreSQL on
127.0.0.1:5432 and the driver jar (``libpostgresql-jdbc-java``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_flow_config

pytestmark = [pytest.mark.spark, pytest.mark.slow]

AS_OF = "2024-01-01"  # the sample's as-of date: both engines score the same day


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_workers(webui: int) -> int:
    """The workers the master's web UI reports alive; 0 while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{webui}/json/", timeout=2) as response:
            return int(json.load(response).get("aliveworkers", 0))
    except OSError:
        return 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``spark://127.0.0.1:<port>``: a standalone master and one worker (2 cores, 2 GB), stopped after
    the module. The worker's folder (``cluster.work``) keeps each executor's logs."""
    pyspark = pytest.importorskip("pyspark", reason="PySpark is not installed (pip install 'segml[spark]')")
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime: a Spark cluster needs Java 17 (java not on PATH, JAVA_HOME unset)")
    home = Path(pyspark.__file__).parent
    folder = tmp_path_factory.mktemp("spark-cluster")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(folder), "PYSPARK_PYTHON": sys.executable}
    port, webui, worker_ui = free_port(), free_port(), free_port()
    spark_class = str(home / "bin" / "spark-class")
    started = []
    try:
        with open(folder / "master.log", "w") as log:
            started.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(webui)], env=env, stdout=log, stderr=subprocess.STDOUT))
        with open(folder / "worker.log", "w") as log:
            started.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                 "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", str(worker_ui),
                 "--work-dir", str(folder / "work")], env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while alive_workers(webui) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in started):
                logs = "\n".join((folder / f).read_text()[-2000:] for f in ("master.log", "worker.log"))
                pytest.fail(f"the standalone cluster did not start within 120 s:\n{logs}")
            time.sleep(1)
        url = f"spark://127.0.0.1:{port}"
        yield type("Cluster", (), {"url": url, "work": folder / "work", "env": env})
    finally:
        for process in reversed(started):
            process.terminate()
        for process in reversed(started):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def segml_cli(prefect_harness, cluster):
    """``segml`` in a process of its own, as a user runs it, with the executors' Python set."""
    from prefect.settings import PREFECT_API_URL

    env = {**cluster.env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "120"}

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "segml", *args], env={**env, **extra_env},
                              capture_output=True, text=True, timeout=600)
    return run


def applications(work: Path) -> int:
    """The applications whose executors the worker launched (a folder each, with every executor's logs)."""
    return len({p.parent.parent for p in work.glob("app-*/*/stderr")})


@pytest.fixture(scope="module")
def published(cluster, segml_cli, tmp_path_factory):
    """The same sample purchases segmented by ``segml run`` on DuckDB and on the cluster:
    ``(spark config, duckdb config)``."""
    folder = tmp_path_factory.mktemp("cluster-runs")
    # Customer attributes are read by the DuckDB engine only: both runs segment the purchases alone.
    on_duckdb = write_flow_config(folder / "duckdb", customers=None)
    on_spark = write_flow_config(folder / "spark", customers=None, engine="spark", spark={
        "master": cluster.url, "jdbc_table": "segml_cluster_scores",
        "conf": {"spark.executor.memory": "1g", "spark.ui.enabled": "false"}})
    for config in (on_duckdb, on_spark):
        done = segml_cli("run", str(config), "--as-of", AS_OF)
        assert done.returncode == 0, done.stderr[-3000:]
    return on_spark, on_duckdb


def assignments_of(config: Path) -> pd.DataFrame:
    """The assignment table ``segml run`` published for the as-of date, without its run id."""
    table = pd.read_csv(config.parent / "outputs" / "sample" / AS_OF / "assignments.csv", dtype={"customer_id": str})
    return table.drop(columns=["run_id"], errors="ignore")


def test_segml_run_on_a_standalone_cluster_publishes_what_duckdb_does(cluster, published):
    on_spark, on_duckdb = published
    assert applications(cluster.work) == 1, "segml run on Spark started no executor on the cluster"
    on_cluster, reference = assignments_of(on_spark), assignments_of(on_duckdb)
    assert len(reference) == 600
    pd.testing.assert_frame_equal(on_cluster, reference)


def test_segml_score_on_a_standalone_cluster_writes_parquet_and_postgres_from_the_executors(
        cluster, published, segml_cli, postgres_url):
    import sqlalchemy as sa

    from segml.contract import CRM_COLUMNS
    from segml.spark_engine import SYSTEM_POSTGRES_JAR

    if not SYSTEM_POSTGRES_JAR.exists():
        pytest.skip(f"no PostgreSQL JDBC driver at {SYSTEM_POSTGRES_JAR}: install libpostgresql-jdbc-java")
    on_spark, on_duckdb = published
    champion = assignments_of(on_duckdb).set_index("customer_id").sort_index()
    before = applications(cluster.work)

    done = segml_cli("score", str(on_spark), "--as-of", AS_OF, SEGML_PUBLISH_URL=postgres_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert applications(cluster.work) == before + 1, "segml score on Spark started no executor on the cluster"
    parquet = on_spark.parent / "outputs" / "sample" / "scores" / AS_OF / "assignments.parquet"
    assert list(parquet.glob("part-*.parquet")), "the executors wrote no Parquet part file"
    scores = pd.read_parquet(parquet).set_index("customer_id").sort_index()
    assert scores.reset_index().columns.tolist() == CRM_COLUMNS
    # Row for row what the DuckDB engine published for the same purchases and as-of date.
    assert scores.index.tolist() == champion.index.tolist()
    for column in ("segment_id", "segment_name"):
        assert scores[column].tolist() == champion[column].tolist(), column
    for column in ("segment_probability", "recency_days", "frequency", "monetary", "tenure_days",
                   "avg_order_value"):
        np.testing.assert_allclose(scores[column].astype(float), champion[column].astype(float), rtol=1e-12,
                                   err_msg=column)
    assert not scores["segment_changed"].any()

    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            in_db = pd.read_sql("SELECT * FROM segml_cluster_scores ORDER BY customer_id", connection)
            connection.exec_driver_sql("DROP TABLE segml_cluster_scores")
    finally:
        engine.dispose()
    in_db = in_db.set_index("customer_id")
    assert in_db.index.tolist() == champion.index.tolist()
    assert in_db["segment_id"].tolist() == champion["segment_id"].tolist()
    np.testing.assert_allclose(in_db["segment_probability"], champion["segment_probability"], rtol=1e-12)
