"""The Spark engine against the DuckDB engine: the same contract, features and assignments.

Runs Spark in local mode; skips with the reason when PySpark or Java is missing.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import HAND_FEATURES, hand_config, hand_frame

from segml.config import load_config, parse_config
from segml.dialects import java_datetime_pattern
from segml.errors import ConfigError
from segml.quality import score_homogeneity
from segml.segmentation import fit_model, prepare_purchases

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark():
    pyspark = pytest.importorskip("pyspark", reason="PySpark is not installed (pip install 'segml[spark]')")
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime: Spark needs Java 17 (java not on PATH, JAVA_HOME unset)")
    from segml.config import SparkConfig
    from segml.spark_engine import session

    spark = session(SparkConfig(master="local[2]", partitions=4))
    spark.sparkContext.setLogLevel("ERROR")
    assert pyspark.__version__
    yield spark


@pytest.fixture
def jdbc_driver(postgres_url):
    """The PostgreSQL URL, when Spark has a JDBC driver for it."""
    from segml.config import SparkConfig
    from segml.spark_engine import jdbc_jars

    if not any(Path(j).exists() for j in jdbc_jars(SparkConfig())):
        pytest.skip("no PostgreSQL JDBC driver: install libpostgresql-jdbc-java or set spark.jdbc_jars")
    return postgres_url


def read_and_drop(url: str, table: str, columns: str = "*") -> pd.DataFrame:
    """The rows of a table Spark wrote, sorted by customer, then the table dropped."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            rows = pd.read_sql(f"SELECT {columns} FROM {table} ORDER BY customer_id", connection)
            connection.exec_driver_sql(f"DROP TABLE {table}")
    finally:
        engine.dispose()
    return rows


def spark_twin(config):
    # The Spark engine reads no customer attributes (the configuration refuses them with engine: spark).
    return config.model_copy(update={"engine": "spark", "customers": None,
                                     "data": config.data.model_copy(update={"attributes": {}})})


def assert_same_purchases(on_spark, on_duckdb):
    assert on_spark.report == on_duckdb.report
    pd.testing.assert_frame_equal(on_spark.features, on_duckdb.features)
    pd.testing.assert_frame_equal(on_spark.excluded, on_duckdb.excluded)
    assert on_spark.rejected["line"].tolist() == on_duckdb.rejected["line"].tolist()
    assert on_spark.rejected["reason"].tolist() == on_duckdb.rejected["reason"].tolist()


@pytest.mark.parametrize("strptime, java", [
    ("%Y-%m-%d %H:%M:%S", "yyyy-M-d H:m:s"),
    ("%m/%d/%y %H:%M", "M/d/yy H:m"),
    ("%Y%m%d", "yyyyMMdd"),
    ("%d.%m.%Y at %H", "d.M.yyyy' at 'H"),
])
def test_strptime_formats_translate_to_spark_patterns(strptime, java):
    assert java_datetime_pattern(strptime) == java


def test_a_format_spark_cannot_parse_is_a_config_error():
    raw = {"engine": "spark", "data": {"path": "x.csv", "timestamp_format": "%Y-%W",
                                       "columns": {"customer_id": "c", "timestamp": "t", "amount": "a"}}}
    with pytest.raises(ConfigError, match="%W has no Spark equivalent"):
        parse_config(raw)


def test_an_engine_segml_does_not_have_is_a_config_error():
    raw = {"engine": "polars", "data": {"path": "x.csv",
                                        "columns": {"customer_id": "c", "timestamp": "t", "amount": "a"}}}
    with pytest.raises(ConfigError, match="engine: Input should be 'duckdb' or 'spark'"):
        parse_config(raw)


def test_a_url_data_path_is_left_for_spark_to_read(tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({"engine": "spark", "spark": {"master": "spark://head:7077"}, "data": {
        "path": "s3a://shop/purchases/2024.parquet", "columns": {"customer_id": "c", "timestamp": "t", "amount": "a"}}}))
    loaded = load_config(config)
    assert loaded.data.path == "s3a://shop/purchases/2024.parquet"
    assert loaded.spark.master == "spark://head:7077"


def test_hand_worked_lines_give_the_same_answer_on_both_engines(spark):
    config = hand_config()
    on_spark = prepare_purchases(spark_twin(config), frame=hand_frame())
    on_duckdb = prepare_purchases(config, frame=hand_frame())
    assert_same_purchases(on_spark, on_duckdb)
    pd.testing.assert_frame_equal(on_spark.features, HAND_FEATURES, check_dtype=False)
    assert on_spark.report.rejected_by_reason["duplicate_line"] == 1
    # The rejected line keeps its own values.
    assert on_spark.rejected.set_index("reason").loc["non_numeric_amount", "price"] == "abc"


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    from segml.sample import write_sample

    folder = tmp_path_factory.mktemp("spark-sample")
    config_path = write_sample(folder, n_customers=1500, seed=3)
    # Customer attributes are read by the DuckDB engine only: the purchases alone are compared.
    raw = yaml.safe_load(config_path.read_text())
    raw.pop("customers", None)
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    csv = folder / "data" / "sample_purchases.csv"
    # The same lines as Parquet, in two files (a folder), to check line numbers across files.
    lines = pd.read_csv(csv, dtype=str, keep_default_na=False)
    parquet = folder / "data" / "parquet"
    parquet.mkdir()
    half = len(lines) // 2
    lines.iloc[:half].to_parquet(parquet / "part-0.parquet", index=False)
    lines.iloc[half:].to_parquet(parquet / "part-1.parquet", index=False)
    return config_path, parquet


@pytest.mark.parametrize("source", ["csv", "parquet folder"])
def test_generated_purchases_give_identical_contract_and_features(spark, sample_files, source):
    config_path, parquet = sample_files
    # A look-back window, so that lines fall outside it too.
    reference = load_config(config_path)
    reference = reference.model_copy(update={"window": reference.window.model_copy(update={"lookback_days": 300})})
    config = reference
    if source != "csv":
        config = config.model_copy(update={"data": config.data.model_copy(
            update={"path": str(parquet), "format": "parquet"})})
    on_duckdb = prepare_purchases(reference)  # the CSV through DuckDB is the reference
    on_spark = prepare_purchases(spark_twin(config))
    assert_same_purchases(on_spark, on_duckdb)
    assert on_spark.report.rows_rejected > 0 and on_spark.report.rows_outside_window > 0
    assert len(on_spark.features) > 1000


@pytest.mark.slow
def test_online_retail_gives_identical_contract_and_features(spark, online_retail_path, tmp_path):
    from conftest import REPO

    config = load_config(REPO / "configs" / "online_retail.yaml")
    on_duckdb = prepare_purchases(config)
    on_spark = prepare_purchases(spark_twin(config))
    assert_same_purchases(on_spark, on_duckdb)
    assert on_spark.report.rows_read == 240_007
    assert on_spark.report.rejected_by_reason == {"missing_customer_id": 67_225, "zero_price": 13,
                                                  "duplicate_line": 1_946}


def test_executors_assign_every_customer_as_the_fitted_model_does(spark, sample_files, tmp_path):
    from segml import spark_engine

    config_path, _ = sample_files
    config = load_config(config_path)
    purchases = prepare_purchases(config)
    model, _ = fit_model(purchases.features, config)
    segments = pd.DataFrame({"segment": range(model.n_segments),
                             "segment_id": [f"S{s + 1}" for s in range(model.n_segments)],
                             "segment_name": [f"name {s}" for s in range(model.n_segments)]})

    spark_engine.read_purchases(spark, config.data)
    report = spark_engine.classify_lines(spark, config.data, config.window)
    features = spark_engine.compute_features(spark, report.as_of)
    assigned = spark_engine.assign_segments(features, model, segments, with_model_space=True).cache()
    on_executors = assigned.toPandas().set_index("customer_id").sort_index()

    expected = model.predict(purchases.features)
    assert on_executors.index.tolist() == purchases.features.index.tolist()
    np.testing.assert_array_equal(on_executors["segment"].to_numpy(), expected)
    assert (on_executors["segment_id"] == [f"S{s + 1}" for s in expected]).all()
    np.testing.assert_allclose(on_executors["segment_probability"], model.predict_proba(purchases.features).max(axis=1))

    stats = spark_engine.segment_statistics(assigned, model.features, model.n_segments)
    Z = model.transform(purchases.features)
    reference = score_homogeneity(purchases.features[model.features], Z, expected, model.n_segments)
    assert stats[["segment", "feature"]].equals(reference[["segment", "feature"]])
    numbers = [c for c in reference.columns if c not in ("segment", "feature")]
    np.testing.assert_allclose(stats[numbers].to_numpy(), reference[numbers].to_numpy(), rtol=1e-9, atol=1e-12)

    spark_engine.write_assignments(assigned.drop("z_recency_days", "z_frequency", "z_monetary"),
                                   path=tmp_path / "assignments")
    back = pd.read_parquet(tmp_path / "assignments").set_index("customer_id").sort_index()
    assert back["segment_id"].tolist() == on_executors["segment_id"].tolist()
    assigned.unpersist()


def test_both_engines_score_and_write_every_customer_alike(spark, sample_files, tmp_path):
    from segml.duckdb_engine import open_engine as open_duckdb
    from segml.spark_engine import SparkEngine

    config_path, _ = sample_files
    config = load_config(config_path)
    model, _ = fit_model(prepare_purchases(config).features, config)
    segments = pd.DataFrame({"segment": range(model.n_segments),
                             "segment_id": [f"S{s + 1}" for s in range(model.n_segments)],
                             "segment_name": [f"name {s}" for s in range(model.n_segments)]})
    written = {}
    for name, engine in (("duckdb", open_duckdb(config)), ("spark", SparkEngine(spark, spark_twin(config).spark))):
        with engine:
            engine.read(config.data, str(config_path))
            report = engine.classify_lines(config.data, config.window)
            engine.write(engine.score(model, segments, report.as_of), path=tmp_path / f"{name}.parquet")
        written[name] = pd.read_parquet(tmp_path / f"{name}.parquet").sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(written["spark"], written["duckdb"], check_dtype=False)
    assert len(written["duckdb"]) > 1000
    assert written["duckdb"]["segment_id"].nunique() == model.n_segments


def test_rejected_lines_written_to_a_file_match_on_both_engines(spark, sample_files, tmp_path):
    config_path, _ = sample_files
    config = load_config(config_path)
    for name, twin in (("duckdb", config), ("spark", spark_twin(config))):
        purchases = prepare_purchases(twin, rejected_file=tmp_path / f"{name}.csv")
        assert purchases.rejected is None and purchases.rejected_table == tmp_path / f"{name}.csv"
    on_spark, on_duckdb = (pd.read_csv(tmp_path / f"{n}.csv", dtype=str, keep_default_na=False)
                           for n in ("spark", "duckdb"))
    assert len(on_duckdb) == purchases.report.rows_rejected > 0
    pd.testing.assert_frame_equal(on_spark, on_duckdb)


def test_every_read_of_the_order_summary_comes_from_the_cache(spark, sample_files, capsys):
    from segml import spark_engine
    from segml.dialects import SPARK
    from segml.features import features_sql
    from segml.validation import ORDERS, REJECTED, counts_sql

    config_path, _ = sample_files
    config = load_config(config_path)
    spark_engine.read_purchases(spark, config.data)
    report = spark_engine.classify_lines(spark, config.data, config.window)
    try:
        for sql in (features_sql(report.as_of, SPARK), counts_sql(), f"SELECT * FROM {REJECTED}"):
            spark.sql(sql).explain()
            plan = capsys.readouterr().out
            assert plan.count("InMemoryTableScan") == max(sql.count(ORDERS), 1), sql
    finally:
        spark_engine.uncache(spark)


def test_the_hash_pass_shuffles_the_hashes_once_and_finds_repeats_across_partitions(spark, capsys):
    from segml import spark_engine

    rng = np.random.default_rng(7)
    lines = pd.DataFrame({"customer": rng.integers(0, 500, 3000).astype(str),
                          "amount": rng.integers(1, 10**6, 3000).astype(str)})
    # Repeats far apart (the first and last lines of the frame), one line three times.
    lines = pd.concat([lines, lines.iloc[[0, 1, 1, 2500]]], ignore_index=True)
    source = spark.createDataFrame(lines)  # in slices of the frame: the first and last lines apart
    assert source.rdd.getNumPartitions() > 1
    source.createOrReplaceTempView("raw_purchases")
    columns = list(lines.columns)
    summaries = spark_engine.hash_summaries(spark, columns)
    summaries.explain()
    plan = capsys.readouterr().out
    assert plan.count("Exchange") == 1 and "Aggregate" not in plan, plan
    rows, hash_sum, repeated = spark_engine.hash_pass(spark, columns)
    # Against Spark's own grouping and an exact decimal sum of the same hashes.
    truth = spark.sql("SELECT xxhash64(customer, amount) AS h, count(*) AS n FROM raw_purchases GROUP BY 1").toPandas()
    exact = spark.sql("SELECT sum(CAST(xxhash64(customer, amount) AS DECIMAL(38, 0))) FROM raw_purchases").first()[0]
    assert rows == len(lines) == 3004
    assert hash_sum == int(exact) % 2**64
    assert repeated == sorted(truth.loc[truth["n"] > 1, "h"].tolist()) and len(repeated) == 3


def test_spark_is_sized_before_reading_and_keeps_what_the_configuration_sets(spark, tmp_path, monkeypatch):
    from segml import spark_engine
    from segml.config import DataConfig, SparkConfig
    from segml.spark_engine import INPUT_BYTES_PER_PARTITION, SparkEngine, size_partitions

    data = DataConfig(path=str(tmp_path / "purchases.csv"), columns={
        "customer_id": "c", "timestamp": "t", "amount": "a"})
    before = {key: spark.conf.get(key) for key in ("spark.sql.shuffle.partitions", "spark.sql.files.maxPartitionBytes")}
    try:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
        size_partitions(spark, SparkConfig(), data)
        # Input files in splits of 16 MB: the map-side aggregation of 128 MB splits spilled in local mode.
        assert int(spark.conf.get("spark.sql.files.maxPartitionBytes")) == INPUT_BYTES_PER_PARTITION
        assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
        size_partitions(spark, SparkConfig(partitions=3, conf={"spark.sql.files.maxPartitionBytes": "1m"}), data)
        assert int(spark.conf.get("spark.sql.files.maxPartitionBytes")) == INPUT_BYTES_PER_PARTITION
        assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
        # The engine sizes the splits before it reads: a CSV's line numbers follow them.
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
        seen = []
        monkeypatch.setattr(spark_engine, "read_purchases", lambda session, *_: seen.append(
            session.conf.get("spark.sql.files.maxPartitionBytes")))
        SparkEngine(spark, SparkConfig()).read(data)
        assert seen == [str(INPUT_BYTES_PER_PARTITION)]
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)


@pytest.mark.parametrize("cores, size, expected", [
    (2, None, 4),                 # no file to measure (a database table): twice the cores
    (2, 10 << 20, 4),             # 10 MB of input: still twice the cores
    (2, 100 << 20, 7),            # 100 MB: one partition per 16 MB
    (64, 100 << 20, 128),         # a big cluster: twice its cores
], ids=["no size", "small file", "bigger file", "many cores"])
def test_shuffle_partitions_follow_the_cores_and_the_input(cores, size, expected):
    from segml.spark_engine import shuffle_partitions

    assert shuffle_partitions(cores, size) == expected


def test_the_core_imports_no_engine_and_the_spark_engine_not_the_core():
    import subprocess
    import sys

    check = ("import sys, segml.segmentation; assert 'segml.spark_engine' not in sys.modules; "
             "assert 'pyspark' not in sys.modules; import segml.spark_engine, importlib; "
             "print(sorted(m for m in sys.modules if m.startswith('segml.')))")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    check = "import sys, segml.spark_engine; assert 'segml.segmentation' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.postgres
def test_assignments_are_written_to_postgres_over_jdbc(spark, jdbc_driver):
    from segml.spark_engine import write_assignments

    frame = spark.createDataFrame(pd.DataFrame({"customer_id": ["a", "b", "c"], "segment_id": ["S1", "S2", "S1"],
                                                "as_of": [dt.date(2024, 1, 1)] * 3}))
    write_assignments(frame, url=jdbc_driver, table="segml_spark_jdbc_check")
    back = read_and_drop(jdbc_driver, "segml_spark_jdbc_check")
    assert back["segment_id"].tolist() == ["S1", "S2", "S1"]
    assert str(back["as_of"].iloc[0]) == "2024-01-01"


@pytest.mark.slow
def test_the_flow_on_spark_records_and_publishes_what_duckdb_does(spark, prefect_harness, tmp_path):
    from conftest import write_flow_config

    from pipelines.segment import segment_customers

    # Customer attributes are read by the DuckDB engine only: both flows segment the purchases alone.
    on_duckdb = segment_customers(str(write_flow_config(tmp_path / "duckdb", customers=None)))
    on_spark = segment_customers(str(write_flow_config(tmp_path / "spark", customers=None, engine="spark",
                                                       spark={"master": "local[2]"})))
    for key in ("rows_read", "rows_used", "rows_rejected", "rows_outside_window", "customers", "n_segments",
                "homogeneity", "as_of"):
        assert on_spark[key] == on_duckdb[key], key
    assert [s["segment_name"] for s in on_spark["segments"]] == [s["segment_name"] for s in on_duckdb["segments"]]
    published = [pd.read_csv(s["assignments"]).drop(columns=["run_id"]) for s in (on_spark, on_duckdb)]
    pd.testing.assert_frame_equal(*published)
    assert load_config(tmp_path / "spark" / "segml.yaml").engine == "spark"


@pytest.mark.slow
def test_scoring_on_spark_assigns_like_the_champion_and_writes_parquet_and_jdbc(spark, prefect_harness, tmp_path,
                                                                                jdbc_driver, monkeypatch):
    from conftest import write_flow_config

    from pipelines.score import score_customers
    from pipelines.segment import segment_customers
    from segml.contract import CRM_COLUMNS

    config_path = write_flow_config(tmp_path, customers=None,
                                    spark={"master": "local[2]", "jdbc_table": "segml_spark_scores"})
    refit = segment_customers(str(config_path))  # fitted and published with DuckDB
    raw = yaml.safe_load(config_path.read_text())
    raw["engine"] = "spark"
    config_path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("SEGML_PUBLISH_URL", jdbc_driver)

    scored = score_customers(str(config_path))
    table = pd.read_parquet(scored["assignments"]).set_index("customer_id").sort_index()
    champion = pd.read_csv(refit["assignments"], dtype={"customer_id": str}).set_index("customer_id")
    assert table.reset_index().columns.tolist() == CRM_COLUMNS
    assert scored["customers"] == len(champion) == 600 and scored["customers_new"] == 0
    pd.testing.assert_series_equal(table["segment_id"], champion["segment_id"])
    np.testing.assert_allclose(table["segment_probability"], champion["segment_probability"])
    assert not table["segment_changed"].any() and (table["model_version"] == refit["model_version"]).all()
    in_db = read_and_drop(jdbc_driver, "segml_spark_scores", "customer_id, segment_id")
    assert in_db.set_index("customer_id").sort_index()["segment_id"].equals(table["segment_id"])
