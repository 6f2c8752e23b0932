"""Publishing to SQLite and PostgreSQL: one transaction, no duplicates, failures leave the last state."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pandas as pd
import pytest
import sqlalchemy as sa

from segml.contract import CRM_COLUMNS
from segml.publish import (
    SCHEMA_VERSION,
    StalePublicationError,
    create_engine,
    current_publication,
    ensure_schema,
    publish_assignments,
    read_current,
)

AS_OF = dt.date(2024, 1, 1)


def assignments(n: int, as_of: dt.date = AS_OF, segment: str = "S1", run_id: str = "run-1") -> pd.DataFrame:
    frame = pd.DataFrame({
        "customer_id": [f"c{i:07d}" for i in range(n)],
        "segment_id": segment, "segment_name": "Champions", "segment_probability": 1.0,
        "recency_days": 5, "frequency": 3, "monetary": 120.5, "tenure_days": 300, "avg_order_value": 40.17,
        "previous_segment_id": [None if i % 3 == 0 else "S2" for i in range(n)],
        "segment_changed": [None if i % 3 == 0 else True for i in range(n)],
        "as_of": as_of, "run_id": run_id, "model_version": 1,
    })
    return frame[CRM_COLUMNS]


CATALOGUE = pd.DataFrame({"segment_id": ["S1", "S2"], "segment_name": ["Champions", "Lost"],
                          "status": ["active", "retired"], "first_as_of": ["2023-12-01", "2023-12-01"],
                          "last_as_of": ["2024-01-01", "2023-12-01"], "description": ["best", "gone"]})


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
        yield engine
        engine.dispose()
        return
    base_url = request.getfixturevalue("postgres_url")
    schema = f"segml_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base_url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = sa.create_engine(base_url, connect_args={"options": f"-csearch_path={schema}"})
    yield engine
    engine.dispose()
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


def _count(engine, where: str = "") -> int:
    with engine.connect() as connection:
        return connection.exec_driver_sql(f"SELECT count(*) FROM segml_assignments {where}").scalar_one()


def test_tables_are_created_on_first_use_with_a_schema_version(engine):
    assert ensure_schema(engine) == SCHEMA_VERSION
    assert ensure_schema(engine) == SCHEMA_VERSION  # idempotent
    tables = set(sa.inspect(engine).get_table_names())
    assert {"segml_assignments", "segml_segments", "segml_publications", "segml_schema"} <= tables
    assert "segml_current_assignments" in sa.inspect(engine).get_view_names()


def test_publishing_an_as_of_twice_replaces_it(engine):
    publish_assignments(engine, "shop", AS_OF, assignments(100), CATALOGUE, "run-1", 1)
    publish_assignments(engine, "shop", AS_OF, assignments(80, run_id="run-2"), CATALOGUE, "run-2", 2)
    assert _count(engine) == 80
    current = read_current(engine, "shop")
    assert len(current) == 80 and set(current["run_id"]) == {"run-2"}
    assert current["segment_changed"].isna().sum() == 27 and current["previous_segment_id"].isna().sum() == 27
    with engine.connect() as connection:
        segments = pd.read_sql("SELECT * FROM segml_segments ORDER BY segment_id", connection)
    assert segments["retired"].tolist() == [False, True] and segments["description"].tolist() == ["best", "gone"]


def test_the_current_view_follows_the_latest_as_of_of_each_segmentation(engine):
    publish_assignments(engine, "shop", AS_OF, assignments(10), CATALOGUE, "run-1", 1)
    publish_assignments(engine, "shop", dt.date(2024, 2, 1), assignments(7, dt.date(2024, 2, 1), "S3"),
                        CATALOGUE, "run-2", 2)
    publish_assignments(engine, "other", AS_OF, assignments(5), CATALOGUE, "run-3", 1)
    assert _count(engine) == 22  # history is kept
    current = read_current(engine, "shop")
    assert len(current) == 7 and set(current["segment_id"]) == {"S3"}
    assert pd.to_datetime(current["as_of"]).dt.date.unique().tolist() == [dt.date(2024, 2, 1)]
    assert len(read_current(engine, "other")) == 5


def test_a_failure_midway_leaves_the_previous_rows_intact(engine):
    publish_assignments(engine, "shop", AS_OF, assignments(120_000), CATALOGUE, "run-1", 1)

    def explode(rows_written: int) -> None:
        if rows_written >= 50_000:
            raise ConnectionError(f"connection lost after {rows_written} rows")

    with pytest.raises(ConnectionError):
        publish_assignments(engine, "shop", AS_OF, assignments(120_000, segment="S9", run_id="run-2"), CATALOGUE,
                            "run-2", 2, after_chunk=explode)
    current = read_current(engine, "shop")
    assert len(current) == 120_000 and set(current["run_id"]) == {"run-1"} and set(current["segment_id"]) == {"S1"}


def test_a_constraint_error_rolls_the_whole_publication_back(engine):
    publish_assignments(engine, "shop", AS_OF, assignments(50), CATALOGUE, "run-1", 1)
    broken = pd.concat([assignments(60, run_id="run-2"), assignments(1, run_id="run-2")])  # a duplicate customer
    with pytest.raises(Exception, match="UNIQUE constraint failed|duplicate key value"):
        publish_assignments(engine, "shop", AS_OF, broken, CATALOGUE, "run-2", 2)
    assert set(read_current(engine, "shop")["run_id"]) == {"run-1"} and _count(engine) == 50


def test_concurrent_publishes_give_a_consistent_result(engine):
    errors = []

    def publish(name: str, run: str, n: int) -> None:
        try:
            publish_assignments(engine, name, AS_OF, assignments(n, run_id=run), CATALOGUE, run, 1)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=args) for args in
               [("shop", "run-a", 30_000), ("shop", "run-b", 20_000), ("other", "run-c", 10_000)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    shop = read_current(engine, "shop")
    # One of the two publishes of "shop" wins whole: never a mix, never both.
    assert (set(shop["run_id"]), len(shop)) in [({"run-a"}, 30_000), ({"run-b"}, 20_000)]
    assert len(read_current(engine, "other")) == 10_000
    with engine.connect() as connection:
        runs = connection.exec_driver_sql(
            "SELECT run_id, rows FROM segml_publications WHERE segmentation = 'shop'").all()
    assert len(runs) == 1 and runs[0][1] == len(shop)


def test_a_past_date_never_demotes_a_newer_publication_unless_forced(engine):
    later = dt.date(2024, 2, 1)
    publish_assignments(engine, "shop", later, assignments(7, later, "S3", "run-new"), CATALOGUE, "run-new", 2)
    with pytest.raises(StalePublicationError, match="as of 2024-02-01.*--force"):
        publish_assignments(engine, "shop", AS_OF, assignments(10, run_id="run-old"), CATALOGUE, "run-old", 1)
    assert set(read_current(engine, "shop")["run_id"]) == {"run-new"} and _count(engine) == 7
    publish_assignments(engine, "shop", AS_OF, assignments(10, run_id="run-old"), CATALOGUE, "run-old", 1, force=True)
    assert set(read_current(engine, "shop")["run_id"]) == {"run-old"}
    assert current_publication(engine, "shop")["as_of"] == AS_OF


def test_one_far_future_publication_does_not_hide_later_publications(engine):
    # Version 1's view followed the largest as-of date: one run dated 3000-01-01 hid every later run.
    far = dt.date(3000, 1, 1)
    publish_assignments(engine, "shop", far, assignments(3, far, run_id="run-far"), CATALOGUE, "run-far", 1)
    publish_assignments(engine, "shop", AS_OF, assignments(10, run_id="run-fixed"), CATALOGUE, "run-fixed", 2,
                        force=True)
    assert set(read_current(engine, "shop")["run_id"]) == {"run-fixed"}


def test_a_scoring_publication_becomes_current_and_keeps_the_catalogue(engine):
    publish_assignments(engine, "shop", AS_OF, assignments(10), CATALOGUE, "run-1", 1)
    later = dt.date(2024, 1, 8)
    publish_assignments(engine, "shop", later, assignments(12, later, run_id="score-1"), None, "score-1", 1,
                        source="score")
    current = read_current(engine, "shop")
    assert len(current) == 12 and set(current["source"]) == {"score"} and set(current["run_id"]) == {"score-1"}
    assert current_publication(engine, "shop")["source"] == "score"
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM segml_segments").scalar_one() == 2
        sources = dict(connection.exec_driver_sql("SELECT run_id, source FROM segml_publications").all())
    assert sources == {"run-1": "refit", "score-1": "score"}


def test_a_version_1_database_is_migrated_in_place(engine):
    # The version 1 schema as it was created, with one publication in it.
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE segml_schema (version INTEGER PRIMARY KEY, applied_at TIMESTAMP WITH TIME ZONE NOT NULL)")
        connection.exec_driver_sql("INSERT INTO segml_schema VALUES (1, '2024-01-01 00:00:00+00')")
        connection.exec_driver_sql(
            "CREATE TABLE segml_assignments (segmentation VARCHAR(200), as_of DATE, customer_id VARCHAR(200), "
            "segment_id VARCHAR(20) NOT NULL, segment_name VARCHAR(200) NOT NULL, segment_probability FLOAT NOT NULL, "
            "recency_days INTEGER NOT NULL, frequency INTEGER NOT NULL, monetary FLOAT NOT NULL, "
            "tenure_days INTEGER NOT NULL, avg_order_value FLOAT NOT NULL, previous_segment_id VARCHAR(20), "
            "segment_changed BOOLEAN, run_id VARCHAR(64) NOT NULL, model_version INTEGER NOT NULL, "
            "published_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (segmentation, as_of, customer_id))")
        connection.exec_driver_sql(
            "CREATE TABLE segml_segments (segmentation VARCHAR(200), segment_id VARCHAR(20), segment_name VARCHAR(200) "
            "NOT NULL, description TEXT, first_as_of DATE NOT NULL, last_as_of DATE NOT NULL, retired BOOLEAN NOT NULL, "
            "PRIMARY KEY (segmentation, segment_id))")
        connection.exec_driver_sql(
            "CREATE TABLE segml_publications (segmentation VARCHAR(200), as_of DATE, run_id VARCHAR(64) NOT NULL, "
            "model_version INTEGER NOT NULL, rows INTEGER NOT NULL, published_at TIMESTAMP WITH TIME ZONE NOT NULL, "
            "PRIMARY KEY (segmentation, as_of))")
        connection.exec_driver_sql(
            "INSERT INTO segml_assignments VALUES ('shop', '2024-01-01', 'c1', 'S1', 'Champions', 1.0, 5, 3, 120.5, "
            "300, 40.17, NULL, NULL, 'run-v1', 1, '2024-01-01 00:00:00+00')")
        connection.exec_driver_sql(
            "INSERT INTO segml_publications VALUES ('shop', '2024-01-01', 'run-v1', 1, 1, '2024-01-01 00:00:00+00')")
        connection.exec_driver_sql(
            "CREATE VIEW segml_current_assignments AS SELECT a.* FROM segml_assignments a JOIN (SELECT segmentation, "
            "max(as_of) AS as_of FROM segml_publications GROUP BY segmentation) latest "
            "ON a.segmentation = latest.segmentation AND a.as_of = latest.as_of")
        if engine.dialect.name == "postgresql":  # a CRM's own view on segml's (PostgreSQL keeps it)
            connection.exec_driver_sql("CREATE VIEW crm_feed AS SELECT customer_id, segment_id "
                                       "FROM segml_current_assignments")
    assert ensure_schema(engine) == SCHEMA_VERSION == 3
    current = read_current(engine, "shop")
    assert current["customer_id"].tolist() == ["c1"] and current["source"].tolist() == ["refit"]
    assert current_publication(engine, "shop")["run_id"] == "run-v1"
    later = dt.date(2024, 2, 1)
    publish_assignments(engine, "shop", later, assignments(4, later, run_id="run-v2"), CATALOGUE, "run-v2", 2)
    assert set(read_current(engine, "shop")["run_id"]) == {"run-v2"}
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM crm_feed").scalar_one() == 4


def test_a_deterministic_database_error_is_not_retried_and_a_lost_connection_is(engine):
    from pipelines.segment import is_transient

    too_long = assignments(3)
    too_long.loc[0, "customer_id"] = "x" * 300
    if engine.dialect.name == "postgresql":
        with pytest.raises(Exception, match="value too long") as refused:
            publish_assignments(engine, "shop", AS_OF, too_long, CATALOGUE, "run-1", 1)
        assert not is_transient(refused.value)
    broken = pd.concat([assignments(2), assignments(1)])
    with pytest.raises(Exception, match="UNIQUE constraint failed|duplicate key value") as duplicate:
        publish_assignments(engine, "shop", AS_OF, broken, CATALOGUE, "run-1", 1)
    assert not is_transient(duplicate.value)
    gone = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    with pytest.raises(sa.exc.OperationalError) as lost:
        ensure_schema(gone)
    assert is_transient(lost.value)


def test_a_run_started_from_an_older_refit_is_not_published_over_a_newer_one(engine):
    # Two overlapping runs both started from run-1; the first to commit wins, the other is refused.
    publish_assignments(engine, "shop", AS_OF, assignments(5, run_id="run-1"), CATALOGUE, "run-1", 1, based_on="none")
    later = dt.date(2024, 2, 1)
    publish_assignments(engine, "shop", later, assignments(5, later, run_id="run-2"), CATALOGUE, "run-2", 2,
                        based_on="run-1")
    with pytest.raises(StalePublicationError, match=r"another refit \(run run-2\) was published after this run "
                                                    r"started from run run-1: its segment ids"):
        publish_assignments(engine, "shop", later, assignments(5, later, run_id="run-3"), CATALOGUE, "run-3", 3,
                            based_on="run-1")
    with pytest.raises(StalePublicationError, match="the model it scored with"):
        publish_assignments(engine, "shop", later, assignments(5, later, run_id="score-1"), None, "score-1", 1,
                            source="score", based_on="run-1")
    assert current_publication(engine, "shop")["run_id"] == "run-2"
    # A retry of run-2's own publication (its commit went through, the answer was lost) is not refused.
    publish_assignments(engine, "shop", later, assignments(5, later, run_id="run-2"), CATALOGUE, "run-2", 2,
                        based_on="run-1")
    # A scoring run of the refit's own date would replace the refit's record.
    with pytest.raises(StalePublicationError, match="the refit of 2024-02-01 .* is published"):
        publish_assignments(engine, "shop", later, assignments(5, later, run_id="score-2"), None, "score-2", 2,
                            source="score", based_on="run-2")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM segml_publications").scalar_one() == 2
