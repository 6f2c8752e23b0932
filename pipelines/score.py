"""Scoring without refitting: current customers assigned to the champion's segments.

Between refits, the scoring flow computes features for the current purchases
and assigns every customer, new ones included, with the registered model
version aliased ``champion``, so ids and names are the published ones. Each
scoring run is recorded in the MLflow experiment ``<experiment>-scores``, its
files go to ``<output.dir>/<name>/scores/<as-of date>/``, and its assignments
are published to the CRM database like a refit's (the same tables and
transaction, ``source = 'score'``), so the current view and ``segml target``
serve the newest publication of either kind.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines import publication
from pipelines.segment import (
    finish_publication,
    load_purchases,
    publish_files,
    resolve_as_of,
    retry_if_transient,
    run_name,
    settle_publications,
)
from segml import tracking
from segml.attributes import with_attributes
from segml.config import SegmlConfig, load_config
from segml.errors import SegmlError
from segml.identity import crm_table, migrate
from segml.outputs import write_csv, write_results
from segml.secrets import mask_url

SCORE_CHUNK_ROWS = 100_000


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def load_champion_model(config: SegmlConfig) -> tuple[Any, tracking.Published]:
    """The champion pyfunc model and its published segmentation."""
    published = tracking.load_champion(config)
    if published is None:
        raise SegmlError(
            f"no published segmentation for {config.registered_model_name!r} at "
            f"{mask_url(tracking.tracking_uri(config))}: run `segml run` on this configuration first"
        )
    model = tracking.load_model(f"models:/{config.registered_model_name}@{tracking.CHAMPION}",
                                tracking.tracking_uri(config))
    get_run_logger().info("scoring with %r version %d (published as of %s)", config.registered_model_name,
                          published.version, published.as_of)
    return model, published


def score_in_chunks(model: Any, features: pd.DataFrame, chunk: int = SCORE_CHUNK_ROWS) -> pd.DataFrame:
    """The pyfunc model's output for every row of ``features``, ``chunk`` rows at a time."""
    columns = model.metadata.get_input_schema().input_names()
    parts = [model.predict(features[columns].iloc[start:start + chunk].reset_index(drop=True))
             for start in range(0, len(features), chunk)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["segment_id", "segment_name", "segment_probability"])


@task(cache_policy=NO_CACHE)
def assign_customers(model: Any, published: tracking.Published, features: pd.DataFrame, as_of: dt.date,
                     run_id: str, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every customer's champion segment, with the segment the CRM holds now beside it (``previous``:
    the current publication's assignments; the champion's own by default)."""
    features = features.sort_index()
    scored = score_in_chunks(model, features)
    table = features.reset_index()
    for column in ("segment_id", "segment_name", "segment_probability"):
        table[column] = scored[column].to_numpy()
    table["as_of"] = as_of
    before = published.assignments if previous is None else previous
    return crm_table(table, migrate(before, table), run_id, published.version)


@task(cache_policy=NO_CACHE)
def score_on_spark(cfg: SegmlConfig, model: Any, published: tracking.Published, as_of: dt.date | None,
                   run_id: str, config_name: str) -> tuple[Any, pd.DataFrame, pd.DataFrame, Path]:
    """``engine: spark``: features and assignments on the executors; the table written by Spark.

    The executors write ``assignments.parquet`` (a folder of part files) into
    the scores folder of the as-of date (on a cluster, ``output.dir`` must be
    storage they all reach) and, with ``spark.jdbc_table``, the same rows to
    that PostgreSQL table over JDBC. Returns the contract's report, the
    rejected lines, the customers per segment (new and changed) and the folder.
    """
    import os

    from pyspark.sql import functions as F

    from segml import spark_engine
    from segml.config import publish_url

    pyfunc = model.unwrap_python_model()
    segments = pd.DataFrame([(number, sid, name) for number, (sid, name) in pyfunc.segments.items()],
                            columns=["segment", "segment_id", "segment_name"])
    spark = spark_engine.session(cfg.spark)
    report, rejected, table = spark_engine.score_customers(
        spark, cfg, pyfunc.model, segments, published.assignments, as_of, run_id, published.version, config_name)
    destination = Path(cfg.output.dir) / cfg.name / "scores" / report.as_of.isoformat()
    table = table.cache()
    spark_engine.write_assignments(table, path=destination / "assignments.parquet")
    if cfg.spark.jdbc_table:
        spark_engine.write_assignments(table, url=publish_url(cfg, dict(os.environ)), table=cfg.spark.jdbc_table)
    counts = (table.groupBy("segment_id", "segment_name")
              .agg(F.count("*").alias("customers"),
                   F.sum(F.col("previous_segment_id").isNull().cast("int")).alias("customers_new"),
                   F.sum(F.coalesce(F.col("segment_changed"), F.lit(False)).cast("int")).alias("customers_changed"))
              .orderBy("segment_id").toPandas())
    table.unpersist()
    get_run_logger().info("scored %s customers on Spark; assignments in %s", f"{counts['customers'].sum():,}",
                          destination / "assignments.parquet")
    return report, rejected, counts, destination


def _score_run_name() -> str:
    return run_name("score ")


@flow(name="score-customers", log_prints=False, flow_run_name=_score_run_name)
def score_customers(config: str | Path, as_of: dt.date | None = None, force: bool = False) -> dict[str, Any]:
    """Assign every customer of the current purchases to the champion's segments, without fitting,
    and publish the assignments to the CRM like a refit (rows marked ``source = 'score'``)."""
    logger = get_run_logger()
    config_path = Path(config)
    cfg = load_config(config_path)
    as_of = resolve_as_of(as_of, cfg)
    settle_publications(cfg)
    model, published = load_champion_model(cfg)
    scores_cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"experiment": f"{cfg.experiment_name}-scores"})})
    handle = tracking.start_run(scores_cfg, run_name=f"score {cfg.name} as of {as_of or 'latest'}")
    tracking.set_tags(handle.uri, handle.run_id, publication.process_tags())
    if cfg.engine == "spark":
        return _score_with_spark(cfg, config_path, model, published, as_of, handle)
    begun, committed, held_back = False, False, None
    work = Path(tempfile.mkdtemp(prefix="segml-work-"))
    try:
        purchases = load_purchases(cfg, as_of, str(config_path), work / "rejected_lines.csv")
        r = purchases.report
        if not force:
            publication.check_date(cfg, r.as_of)
        previous = publication.crm_assignments(cfg, published)
        table = with_attributes(assign_customers(model, published, purchases.features, r.as_of, handle.run_id,
                                                 previous), purchases.attributes)
        known = table["previous_segment_id"].notna()
        shares = table["segment_id"].value_counts(normalize=True)
        metrics = {"customers": len(table), "customers_new": int((~known).sum()),
                   "customers_changed": int(table.loc[known, "segment_changed"].sum()),
                   "rows_read": r.rows_read, "rows_used": r.rows_used, "rows_rejected": r.rows_rejected,
                   "rows_outside_window": r.rows_outside_window,
                   **{f"share.{s}": v for s, v in shares.items()}}
        counts = (table.groupby(["segment_id", "segment_name"]).size().rename("customers").reset_index())
        destination = publication.destination_of(cfg, r.as_of, "score")
        tables = {"segment_counts": counts, "contract": r.as_frame(), "rejected_lines": purchases.rejected_table}
        if cfg.publish.changes_file:
            tables["changes"] = table[table["segment_changed"].fillna(True).astype(bool)]
        params = {"as_of": r.as_of.isoformat(), "model_version": str(published.version),
                  "input_fingerprint": purchases.report.fingerprint}
        tracking.log_params_and_metrics(handle, params, {k: float(v) for k, v in metrics.items()})
        with tempfile.TemporaryDirectory(prefix="segml-score-") as tmp:
            staging = Path(tmp)
            write_results(staging, table, tables)
            tracking.log_artifacts(handle, staging)
            publication.begin(handle.uri, handle.run_id, r.as_of, "score", published.version, destination)
            begun = True
            refit = None if force else publication.same_day_refit(cfg, r.as_of)
            if refit is not None:
                held_back = (f"the refit of {r.as_of} (run {refit}) is published and stays current; this scoring "
                             "run is recorded and its files written, but not published to the database (score a "
                             "later date, or use --force)")
                logger.warning(held_back)
            if cfg.publish.database and refit is None:
                publish_scores(cfg, r.as_of, table, handle.run_id, published.version, force,
                               None if force else published.run_id)
            committed = True
            finish_publication(cfg, handle, staging, destination, r.as_of, published.version, "score",
                               cfg.publish.database and refit is None)
    except BaseException as exc:
        publication.record_failure(handle, exc, begun, committed)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("%d customers scored (%d new) with model version %d; %s, files in %s", len(table),
                metrics["customers_new"], published.version,
                "published" if cfg.publish.database and held_back is None else "not published to the database",
                destination)
    return {"run_id": handle.run_id, "model_version": published.version, "as_of": r.as_of.isoformat(),
            "customers": len(table), "customers_new": metrics["customers_new"],
            "customers_changed": metrics["customers_changed"],
            "output_dir": str(destination), "assignments": str(destination / "assignments.csv"),
            "published": bool(cfg.publish.database) and held_back is None, "held_back": held_back,
            "segment_counts": counts.to_dict(orient="records")}


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def publish_scores(config: SegmlConfig, as_of: dt.date, table: pd.DataFrame, run_id: str, version: int,
                   force: bool, based_on: str | None = None) -> int:
    """The commit point of a scoring run: its assignments current in the CRM database (refused when
    another refit than ``based_on``, whose model scored, was published since)."""
    rows = publication.commit(config, as_of, table, None, run_id, version, "score", force, based_on)
    get_run_logger().info("published %d scored assignments as of %s", rows, as_of)
    return rows


def _score_with_spark(cfg: SegmlConfig, config_path: Path, model: Any, published: tracking.Published,
                      as_of: dt.date | None, handle: tracking.RunHandle) -> dict[str, Any]:
    """The scoring flow's body on Spark: the table stays on the cluster; counts and files come back."""
    try:
        report, rejected, counts, destination = score_on_spark(cfg, model, published, as_of, handle.run_id,
                                                               str(config_path))
        customers = int(counts["customers"].sum())
        metrics = {"customers": customers, "customers_new": int(counts["customers_new"].sum()),
                   "customers_changed": int(counts["customers_changed"].sum()),
                   "rows_read": report.rows_read, "rows_used": report.rows_used,
                   "rows_rejected": report.rows_rejected, "rows_outside_window": report.rows_outside_window,
                   **{f"share.{r.segment_id}": r.customers / customers for r in counts.itertuples()}}
        _record_and_publish(handle, {"as_of": report.as_of.isoformat(), "engine": "spark",
                                     "model_version": str(published.version)}, metrics,
                            {"segment_counts": counts[["segment_id", "segment_name", "customers"]],
                             "contract": report.as_frame(), "rejected_lines": rejected}, destination)
    except BaseException as exc:
        tracking.end_run(handle, exc)
        raise
    tracking.end_run(handle)
    return {"run_id": handle.run_id, "model_version": published.version, "as_of": report.as_of.isoformat(),
            "customers": customers, "customers_new": metrics["customers_new"],
            "customers_changed": metrics["customers_changed"], "output_dir": str(destination),
            "assignments": str(destination / "assignments.parquet"),
            "segment_counts": counts[["segment_id", "segment_name", "customers"]].to_dict(orient="records")}


def _record_and_publish(handle: tracking.RunHandle, params: dict[str, str], metrics: dict[str, float],
                        tables: dict[str, pd.DataFrame], destination: Path,
                        assignments: pd.DataFrame | None = None) -> None:
    """Log a scoring run's params, metrics and files to MLflow, then publish the files.

    ``assignments`` (CSV and Parquet) is left out when Spark has written the table itself.
    """
    tracking.log_params_and_metrics(handle, params, {k: float(v) for k, v in metrics.items()})
    with tempfile.TemporaryDirectory(prefix="segml-score-") as tmp:
        if assignments is not None:
            write_results(Path(tmp), assignments, tables)
        else:
            for stem, frame in tables.items():
                write_csv(frame, Path(tmp) / f"{stem}.csv")
        tracking.log_artifacts(handle, Path(tmp))
        publish_files(Path(tmp), destination)
