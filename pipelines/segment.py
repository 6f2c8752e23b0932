"""The segmentation flow: purchases in, a reviewed and published segmentation out.

Each step is a small task over a ``segml`` function. Only the I/O steps
(reading the source, reading the champion, publishing) retry, and only on
errors that may pass; a failed step fails the flow run with its message,
marks the MLflow run failed, and nothing is published.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import segml
from pipelines import publication
from segml import drawing, prefect_server, progress
from segml import report as report_pages
from segml import tracking
from segml.config import SegmlConfig, load_config
from segml.errors import QualityGateError, SegmlError
from segml.identity import (
    Identity,
    Migration,
    assign_identities,
    crm_table,
    customer_overlap,
    drift,
    evaluate_gates,
    migrate,
    previous_rules,
    renames,
)
from segml.attributes import attribute_tables
from segml.features import EXCLUSION_REASONS
from segml.models import SegmentModel
from segml.outputs import publish_folder, stage_files, write_csv
from segml.secrets import mask_config, mask_config_text, mask_url
from segml.plots import plot_migration, segmentation_figures
from segml.segmentation import (
    Purchases,
    Quality,
    assess_quality,
    build_assignments,
    describe_segments,
    fit_model,
    frequency_unit,
    prepare_purchases,
)
from segml.validation import REJECTION_REASONS, USED_REASONS, WINDOW_REASONS


def is_transient(exc: BaseException) -> bool:
    """Whether an error may pass on a second try: a lost connection, a lock, a server not answering.

    Never segml's own errors (a missing column stays missing) nor a database refusing the data
    (a constraint, a value too long for its column: the same rows fail the same way every time).
    """
    if isinstance(exc, SegmlError):
        return False
    # Database errors by their DB-API class (SQLAlchemy's wrappers and the drivers' own share the names).
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if kinds & {"IntegrityError", "DataError", "ProgrammingError", "NotSupportedError"}:
        return False
    if kinds & {"OperationalError", "InterfaceError", "TimeoutError"} or isinstance(exc, OSError):
        return True
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "INTERNAL_ERROR")
    return False


def retry_if_transient(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's retry condition signature
    """Retry I/O failures that may pass (:func:`is_transient`), never deterministic ones."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified, not swallowed: the task fails either way
        return is_transient(exc)
    return False


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def load_purchases(config: SegmlConfig, as_of: dt.date | None, config_name: str,
                   rejected_file: Path | None = None) -> Purchases:
    """Read the source, apply the data contract and compute the features; with ``rejected_file`` the
    rejected lines are streamed to that CSV rather than held in memory."""
    purchases = prepare_purchases(config, as_of=as_of, config_name=config_name, rejected_file=rejected_file)
    r = purchases.report
    get_run_logger().info(
        "%s lines read: %s used, %s rejected %s, %s outside the window; %s customers as of %s",
        f"{r.rows_read:,}", f"{r.rows_used:,}", f"{r.rows_rejected:,}", r.rejected_by_reason,
        f"{r.rows_outside_window:,}", f"{len(purchases.features):,}", r.as_of)
    return purchases


@task(cache_policy=NO_CACHE)
def choose_and_fit(features: pd.DataFrame, config: SegmlConfig) -> tuple[SegmentModel, pd.DataFrame]:
    """Fit every candidate k and choose one."""
    model, candidates = fit_model(features, config)
    get_run_logger().info("chose k=%d by %s among %s", model.n_segments, config.model.criterion,
                          candidates["k"].tolist())
    return model, candidates


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def measure_forward(config: SegmlConfig, purchases: Purchases, scored: Quality, segments: pd.DataFrame,
                    config_name: str) -> tuple[pd.DataFrame, dict[str, float]] | None:
    """Forward validity (:mod:`segml.schemes`) when the data reach ``quality.forward_horizon_days`` past
    the as-of date: per segment the share who bought again and their spend, and how well segments
    separate that future."""
    from segml.forward import future_outcomes, horizon_closed
    from segml.schemes import forward_validity

    r = purchases.report
    horizon = config.quality.forward_horizon_days
    if not horizon_closed(r.last_valid_purchase, r.as_of, horizon):
        return None
    future = future_outcomes(config, r.as_of, horizon, config_name)
    ids = segments.set_index("segment")["segment_id"]
    by_customer = pd.Series(ids.loc[scored.labels].to_numpy(), index=purchases.features.sort_index().index)
    table, metrics = forward_validity(by_customer, future)
    # In the segments' order (largest first), as every other table and page: not by id, where S10
    # would come before S2.
    table = segments[["segment_id", "segment_name"]].merge(
        table.rename(columns={"segment": "segment_id"}), on="segment_id")
    get_run_logger().info("forward validity over %d days: %s", horizon,
                          {k: round(v, 3) for k, v in metrics.items()})
    return table[["segment_id", "segment_name", "customers", "repurchase_rate", "mean_spend"]], metrics


@task(cache_policy=NO_CACHE)
def score_quality(model: SegmentModel, candidates: pd.DataFrame, features: pd.DataFrame,
                  config: SegmlConfig) -> Quality:
    """Homogeneity, separation and stability."""
    return assess_quality(model, candidates, features, config)


@task(cache_policy=NO_CACHE)
def profile_segments(features: pd.DataFrame, scored: Quality, config: SegmlConfig,
                     published: tracking.Published | None, model: SegmentModel,
                     overlap: pd.DataFrame | None) -> pd.DataFrame:
    """Profiles and names; a segment matching a published one keeps its name while it still holds."""
    unnamed = describe_segments(features, scored, config)
    if published is None:
        return unnamed
    preferred = previous_rules(unnamed, published.catalogue, model.features, model.transform,
                               config.identity.max_distance, overlap, config.identity.min_overlap)
    return describe_segments(features, scored, config, preferred) if preferred else unnamed


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def fetch_champion(config: SegmlConfig) -> tracking.Published | None:
    """The last published segmentation (the model version aliased ``champion``), if any."""
    published = tracking.load_champion(config)
    logger = get_run_logger()
    if published is None:
        logger.info("no published segmentation yet: segment ids start at S1")
    else:
        logger.info("matching against the published segmentation as of %s (model version %d)",
                    published.as_of, published.version)
    return published


@task(cache_policy=NO_CACHE)
def carry_identities(segments: pd.DataFrame, published: tracking.Published | None, model: SegmentModel,
                     config: SegmlConfig, as_of: dt.date, overlap: pd.DataFrame | None) -> Identity:
    """Keep the ids of segments that match the published ones (by shared customers, then medians);
    new ids for the others."""
    identity = assign_identities(segments, published.catalogue if published else None, model.features,
                                 model.transform, config.identity.max_distance, as_of, overlap,
                                 config.identity.min_overlap)
    outcomes = identity.matching["outcome"].value_counts().to_dict()
    logger = get_run_logger()
    logger.info("segment identity: %s", outcomes)
    for change in renames(identity):
        logger.info("%s renamed from %r to %r: %s", change["segment_id"], change["from"], change["to"],
                    change["why"])
    return identity


@task(cache_policy=NO_CACHE)
def compare_with_published(published: tracking.Published | None, assignments: pd.DataFrame,
                           identity: Identity, config: SegmlConfig) -> tuple[Migration, dict[str, float]]:
    """Migration of customers and drift of features and shares against the published run."""
    previous = published.assignments if published else None
    if published is not None:
        previous = publication.crm_assignments(config, published)  # what the CRM holds now
    migration = migrate(previous, assignments)
    shifts = drift(previous, assignments, published.catalogue if published else None, identity.segments)
    return migration, shifts


def run_warnings(purchases: Purchases, model: SegmentModel, config: SegmlConfig) -> list[str]:
    """What a reviewer should know before trusting the run: the data contract's warnings (most lines
    outside the window, an as-of date far past the last purchase) and a k at either end of ``k_range``."""
    warnings = list(getattr(purchases.report, "warnings", []))
    low, high = config.model.k_range
    k = model.n_segments
    if config.model.n_clusters is None and low < high and (k == high or (k == low and low > 2)):
        side, move = ("lowest", f"lower the first bound of model.k_range (now {low})") if k == low else \
            ("highest", f"raise the second bound of model.k_range (now {high})")
        warnings.append(f"k = {k} is the {side} number of segments tried; a better k may lie outside "
                        f"[{low}, {high}]: {move} to compare more")
    return warnings


def run_metrics(purchases: Purchases, scored: Quality, segments: pd.DataFrame) -> dict[str, float]:
    """Every metric of the run under its documented name."""
    r = purchases.report
    metrics = dict(scored.metrics)
    metrics.update(rows_read=r.rows_read, rows_used=r.rows_used, rows_rejected=r.rows_rejected,
                   rows_outside_window=r.rows_outside_window, customers_excluded=len(purchases.excluded))
    for row in segments.itertuples():
        metrics[f"homogeneity.{row.segment_id}"] = row.homogeneity
        metrics[f"share.{row.segment_id}"] = row.share
        metrics[f"stability_jaccard.{row.segment_id}"] = row.stability_jaccard
    return {k: float(v) for k, v in metrics.items()}


@task(cache_policy=NO_CACHE)
def register_model(handle: tracking.RunHandle, config: SegmlConfig, purchases: Purchases, model: SegmentModel,
                   segments: pd.DataFrame, assignments: pd.DataFrame, migration: Migration,
                   gates: list | None = None) -> tuple[pd.DataFrame, int]:
    """Log and register the model, the version described (as-of date, k, segments, gates); returns the
    CRM table (with run id and model version) and the version."""
    names = {int(r.segment): (r.segment_id, r.segment_name) for r in segments.itertuples()}
    as_of = purchases.report.as_of.isoformat()
    failed = [g.describe() for g in gates or [] if not g.passed]
    gate_state = "failed: " + "; ".join(failed) if failed else ("passed" if gates else "none configured")
    description = (f"{config.model.algorithm} segmentation of {config.name} as of {as_of}, k = {model.n_segments}: "
                   + ", ".join(f"{r.segment_id} {r.segment_name} ({r.share:.0%})" for r in segments.itertuples())
                   + f". Quality gates: {gate_state}. Run {handle.run_id}.")
    tags = {"as_of": as_of, "k": str(model.n_segments), "gates": gate_state,
            "features": ",".join(model.features), "algorithm": config.model.algorithm}
    _, version = tracking.log_model(handle, config, model, names, purchases.features, description, tags)
    get_run_logger().info("registered model %r version %d", config.registered_model_name, version)
    return crm_table(assignments, migration, handle.run_id, version), version


@task(cache_policy=NO_CACHE)
def record_run(handle: tracking.RunHandle, config: SegmlConfig, purchases: Purchases, candidates: pd.DataFrame,
               metrics: dict[str, float]) -> None:
    """Log params, metrics and a child run per candidate k."""
    # The effective configuration: unset values left out, the tracking URI the one in force.
    params = {k: v for k, v in tracking.flatten(mask_config(config.model_dump(mode="json"))).items() if v != ""}
    params.update({"as_of": purchases.report.as_of.isoformat(), "input_fingerprint": purchases.report.fingerprint,
                   "segml_version": segml.__version__, "tracking.uri": mask_url(handle.uri)})
    tracking.log_params_and_metrics(handle, params, metrics)
    tracking.log_candidates(handle, candidates, config.model.algorithm)


def report_data(config: SegmlConfig, purchases: Purchases, model: SegmentModel, candidates: pd.DataFrame,
                scored: Quality, identity: Identity, migration: Migration, shifts: dict[str, float],
                published: tracking.Published | None, run_id: str, version: int | None,
                gate_lines: list[str], held_back: str | None, warnings: list[str]) -> report_pages.ReportData:
    """What the report, the MLflow run's description and the Prefect artifact say about the run."""
    r = purchases.report
    m = scored.metrics
    features = purchases.features
    excluded = purchases.excluded["reason"].value_counts()
    facts = [
        f"As of {r.as_of} ({'all history' if r.window_start is None else f'purchases since {r.window_start}'}): "
        f"{r.rows_read:,} purchase lines read, {r.rows_used:,} used, {r.rows_rejected:,} rejected, "
        f"{r.rows_outside_window:,} outside the window; {len(features):,} customers segmented"
        + (f", {len(purchases.excluded):,} left out ({', '.join(f'{n:,} {why}' for why, n in excluded.items())})"
           if len(purchases.excluded) else "") + ".",
        f"{config.model.algorithm} on {', '.join(model.features)}; k = {model.n_segments} chosen by "
        f"{config.model.criterion} from {candidates['k'].min()} to {candidates['k'].max()}. Homogeneity "
        f"{m['homogeneity']:.2f}, explained variance {m['explained_variance']:.2f}, silhouette "
        f"{m['silhouette']:.2f}, stability (ARI) {m['stability_ari']:.2f}.",
        f"MLflow run {run_id}" + (f", model {config.registered_model_name} version {version}." if version else "."),
        *gate_lines,
    ]
    return report_pages.ReportData(
        name=config.name, as_of=str(r.as_of), run_id=run_id, version=version, currency=config.naming.currency,
        unit=frequency_unit(config), segments=identity.segments,
        base_medians={c: float(features[c].median()) for c in features.columns
                      if pd.api.types.is_numeric_dtype(features[c])},
        beaten=report_pages.share_beaten(features, identity.segments),
        model_features=list(model.features), facts=facts, held_back=held_back, warnings=warnings,
        previous_as_of=(published.as_of or None) if published is not None else None, shifts=shifts,
        migration=migration.summary, matching=identity.matching)


def report_figures(config: SegmlConfig, purchases: Purchases, candidates: pd.DataFrame, scored: Quality,
                   identity: Identity, migration: Migration, model: SegmentModel) -> dict:
    """The run's figures (matplotlib), by name: the PNG files and most of the report's appendix."""
    figures = segmentation_figures(purchases.features.sort_index(), scored.space, scored.labels, identity.segments,
                                   candidates, model.features, config.model.criterion,
                                   config.model.min_segment_share, config.naming.currency)
    if not migration.counts.empty:
        names = dict(zip(identity.catalogue["segment_id"], identity.catalogue["segment_name"]))
        figures["migration"] = plot_migration(migration.shares, migration.counts, names)
    return figures


def report_document(data: report_pages.ReportData, figures: dict, contract: pd.DataFrame) -> list:
    """The PDF report's pages, in order."""
    descriptions = {**REJECTION_REASONS, **WINDOW_REASONS, **USED_REASONS, "": "counted in the features"}
    return [*report_pages.overview_pages(data), figures["segment_sizes"],
            *[report_pages.segment_page(data, row) for _, row in data.segments.iterrows()],
            report_pages.changes_page(data), *([figures["migration"]] if "migration" in figures else []),
            report_pages.appendix_divider(data.facts),
            *[figures[f] for f in ("k_selection", "silhouette_by_segment", "snake_plot", "feature_distributions",
                                   "projection_2d")],
            *([report_pages.forward_page(data)] if data.forward is not None else []),
            report_pages.contract_page(contract, descriptions), report_pages.glossary_page()]


def report_footer(config: SegmlConfig, data: report_pages.ReportData) -> str:
    return f"segml · {config.name} · as of {data.as_of} · MLflow run {data.run_id}"


def start_drawing(staging: Path, config: SegmlConfig, purchases: Purchases, candidates: pd.DataFrame,
                  scored: Quality, identity: Identity, migration: Migration, model: SegmentModel,
                  data: report_pages.ReportData) -> drawing.Drawing:
    """The run's figures made, and their drawing (PNG files and the PDF report) started into ``staging``:
    :func:`render_files` waits for it. Started before the model is registered, so the report is drawn
    on the other core meanwhile (``data`` names the version the registration is expected to give; a
    different one has the report drawn again, :func:`redraw`). Not a Prefect task: what it returns is a
    drawing under way, which no result store could keep."""
    figures = report_figures(config, purchases, candidates, scored, identity, migration, model)
    pages = report_document(data, figures, purchases.report.as_frame())
    return drawing.render(staging, figures, pages, report_footer(config, data))


def redraw(staging: Path, config: SegmlConfig, purchases: Purchases, candidates: pd.DataFrame, scored: Quality,
           identity: Identity, migration: Migration, model: SegmentModel, under_way: drawing.Drawing,
           data: report_pages.ReportData) -> drawing.Drawing:
    """The drawing again, its report from ``data``, once the first drawing has ended (so this one's
    files are written last). The figures are made again too: a report drawn in this process lays its
    figures out as pages (A4, a footer)."""
    under_way.abandon()
    return start_drawing(staging, config, purchases, candidates, scored, identity, migration, model, data)


@task(cache_policy=NO_CACHE)
def render_files(staging: Path, config: SegmlConfig, config_path: Path | None, purchases: Purchases,
                 candidates: pd.DataFrame, scored: Quality, identity: Identity, migration: Migration,
                 assignments: pd.DataFrame, run_tables: dict[str, pd.DataFrame],
                 under_way: drawing.Drawing) -> dict[str, Path]:
    """The run's tables into the staging folder, beside its figures and PDF report (being drawn,
    ``under_way``: waited for here)."""
    segments = identity.segments
    r = purchases.report
    tables = {
        "segments": segments,
        "candidates": candidates,
        "homogeneity": scored.homogeneity.assign(
            segment_id=segments.set_index("segment")["segment_id"].loc[scored.homogeneity["segment"]].to_numpy(),
            segment_name=segments.set_index("segment")["segment_name"].loc[scored.homogeneity["segment"]].to_numpy()),
        "contract": r.as_frame(),
        "rejected_lines": purchases.rejected_table,
        "excluded_customers": purchases.excluded.assign(
            meaning=purchases.excluded["reason"].map(EXCLUSION_REASONS)),
        "catalogue": identity.catalogue,
        "segment_matching": identity.matching,
        **run_tables,
    }
    if not migration.counts.empty:
        tables["migration_counts"] = migration.counts.reset_index()
        tables["migration_shares"] = migration.shares.reset_index()
    if config.publish.changes_file:
        changes = assignments[assignments["segment_changed"].fillna(True).astype(bool)]
        tables["changes"] = changes
    written = stage_files(staging, assignments, tables, under_way)
    if config.publish.column_map:
        # The same tables under the CRM's import field names.
        renamed = {"assignments": assignments, **({"changes": tables["changes"]} if "changes" in tables else {})}
        for stem, frame in renamed.items():
            written[f"crm_{stem}"] = write_csv(frame.rename(columns=config.publish.column_map),
                                               staging / "crm" / f"{stem}.csv")
    config_dir = staging / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    if config_path is not None:  # the file as given, its comments kept, its secrets masked
        (config_dir / Path(config_path).name).write_text(
            mask_config_text(Path(config_path).read_text(encoding="utf-8")), encoding="utf-8")
    (config_dir / "resolved.yaml").write_text(
        yaml.safe_dump(mask_config(config.model_dump(mode="json")), sort_keys=False), encoding="utf-8")
    return written


@task(cache_policy=NO_CACHE)
def log_files(handle: tracking.RunHandle, staging: Path) -> None:
    tracking.log_artifacts(handle, staging)


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def publish_files(staging: Path, destination: Path) -> dict[str, Path]:
    """Copy the run's files into the output folder, each atomically."""
    return publish_folder(staging, destination)


def resolve_as_of(as_of: dt.date | None, config: SegmlConfig) -> dt.date | None:
    """The as-of date of a flow run.

    An explicit ``as_of`` wins. A run created by a deployment's schedule takes
    the date of its *scheduled* time in the schedule's timezone, so a late or
    re-run schedule computes exactly what the on-time run would have. Otherwise
    ``window.as_of`` from the configuration (or its default) applies.
    """
    if as_of is not None:
        return as_of
    from prefect.runtime import deployment, flow_run

    if deployment.id and flow_run.scheduled_start_time:
        scheduled = pd.Timestamp(flow_run.scheduled_start_time)
        scheduled = scheduled.tz_localize("UTC") if scheduled.tzinfo is None else scheduled
        return scheduled.tz_convert(config.schedule.timezone).date()
    return None


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def publish_database(config: SegmlConfig, as_of: dt.date, assignments: pd.DataFrame, identity: Identity,
                     run_id: str, version: int, force: bool = False, based_on: str | None = None) -> str | None:
    """The commit point: the assignments and the catalogue in the CRM database in one transaction
    (without a database, the alias ``champion``); refused when another refit was published since
    ``based_on``, the run this one was compared with."""
    import os

    from segml.config import publish_url

    descriptions = identity.segments.set_index("segment_id")["description"]
    catalogue = identity.catalogue.assign(description=identity.catalogue["segment_id"].map(descriptions))
    rows = publication.commit(config, as_of, assignments, catalogue, run_id, version, "refit", force, based_on)
    if not config.publish.database:
        return None
    safe = mask_url(publish_url(config, dict(os.environ)))
    get_run_logger().info("published %d assignments to %s", rows, safe)
    return safe


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def finish_publication(config: SegmlConfig, handle: tracking.RunHandle, staging: Path, destination: Path,
                       as_of: dt.date, version: int, source: str = "refit", database: bool = True) -> None:
    """After the commit: the files into the output folder, the alias, the run finished."""
    publication.finish(config, handle.uri, handle.run_id, staging, destination, as_of, version, source,
                       database)


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def settle_publications(config: SegmlConfig) -> list[str]:
    """Converge what an earlier crash left half done (see pipelines/publication.py)."""
    done = publication.settle(config)
    for line in done:
        get_run_logger().warning("repaired: %s", line)
    return done


def segments_artifact(config: SegmlConfig, data: report_pages.ReportData, links: dict[str, str]) -> None:
    """The run's summary as a Prefect markdown artifact (``segments-<name>``): the segment table with
    shares as percentages and their change, what changed, whether the run was published (a run held
    back by its gates gets one too, saying why), and links to the MLflow run and the report."""
    create_markdown_artifact(key=_artifact_key(config.name), markdown=report_pages.markdown_summary(data, links),
                             description=f"Segments of {config.name} as of {data.as_of}"
                                         + (" (not published)" if data.held_back else ""))


def run_links(handle: tracking.RunHandle, report: Path | None) -> dict[str, str]:
    """Where to look at the run: its MLflow page (on a tracking server) and the published PDF report
    (a run not published has its report among the MLflow run's files only)."""
    links = {}
    page = tracking.run_url(handle)
    if page:
        links["MLflow run"] = page
    if report is not None:
        links["report (PDF)"] = report.resolve().as_uri()
    return links


def run_tags(config: SegmlConfig, config_path: Path) -> dict[str, str]:
    """Who ran what from where: MLflow's user and source tags, the configuration, the data source, and
    the Prefect flow run (its id, and its page when Prefect has a UI address)."""
    import getpass

    from prefect.runtime import flow_run

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        user = "unknown"
    tags = {"mlflow.user": user, "mlflow.source.type": "JOB",
            "mlflow.source.name": f"segml segment-customers {config_path.name}",
            "segml.config": str(config_path), "segml.data_source": data_source(config)[0]}
    if flow_run.id:
        tags["segml.prefect.flow_run_id"] = str(flow_run.id)
        url = flow_run.ui_url
        # A temporary server's pages are gone once the command ends: no link to them.
        if url and url.startswith("http") and not os.environ.get(prefect_server.TEMPORARY):
            tags["segml.prefect.flow_run_url"] = url
    return tags


def data_source(config: SegmlConfig) -> tuple[str, str]:
    """Where the purchases come from, for the record (a database URL masked): (source, kind)."""
    import os

    from segml.config import data_url

    data = config.data
    if data.path:
        return data.path, "local"
    where = f"table {data.table}" if data.table else "query"
    return f"{mask_url(data_url(data, dict(os.environ)) or '')} {where}", "database"


def _artifact_key(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"segments-{name}".lower()).strip("-")


def run_name(prefix: str = "") -> str:
    """A flow run's name: ``<name> as of <date>`` (the date ``latest`` when the data decides it), so
    runs can be told apart in the Prefect UI. Called by Prefect when the run starts."""
    from prefect.runtime import deployment, flow_run

    params = flow_run.parameters or {}
    configured = None
    try:
        config = load_config(params.get("config", ""))
        name, configured = config.name, config.window.as_of
    except SegmlError:
        name = Path(str(params.get("config", "segml"))).stem
    as_of = params.get("as_of")
    if as_of is None and deployment.id and flow_run.scheduled_start_time:
        as_of = pd.Timestamp(flow_run.scheduled_start_time).date()
    return f"{prefix}{name} as of {as_of or configured or 'latest'}"


@flow(name="segment-customers", log_prints=False, flow_run_name=run_name)
def segment_customers(config: str | Path, as_of: dt.date | None = None, force: bool = False) -> dict[str, Any]:
    """Segment the customers of a configuration's purchases, record the run in MLflow and publish the files.

    Parameters
    ----------
    config : path to the YAML configuration.
    as_of : features as of this date; overrides ``window.as_of``.
    force : publish even when the CRM reads a publication of a later as-of date (which a rerun of a
        past date otherwise leaves current).

    Returns a summary: MLflow run id, counts, k, homogeneity and output paths.
    """
    logger = get_run_logger()
    config_path = Path(config)
    cfg = load_config(config_path)
    as_of = resolve_as_of(as_of, cfg)
    progress.step("checking earlier publications")
    repaired = [f"repaired: {line}" for line in settle_publications(cfg)]
    handle = tracking.start_run(cfg, run_name=f"{cfg.name} as of {as_of or cfg.window.as_of or 'latest'}")
    tracking.set_tags(handle.uri, handle.run_id, {**publication.process_tags(), **run_tags(cfg, config_path)})
    database, begun, committed = None, False, False
    work = Path(tempfile.mkdtemp(prefix="segml-work-"))
    try:
        progress.step("reading and checking the purchases")
        purchases = load_purchases(cfg, as_of, str(config_path), work / "rejected_lines.csv")
        as_of = purchases.report.as_of
        r = purchases.report
        tracking.set_tags(handle.uri, handle.run_id, {"segml.as_of": as_of.isoformat()})
        source, kind = data_source(cfg)
        tracking.log_dataset(handle, cfg.name, source, kind, r.fingerprint, list(cfg.features),
                             {"lines_read": r.rows_read, "lines_used": r.rows_used, "lines_rejected": r.rows_rejected,
                              "lines_outside_window": r.rows_outside_window, "customers": len(purchases.features)})
        cfg = cfg.model_copy(update={"window": cfg.window.at(as_of)})  # the run's own date, as recorded
        if not force:
            publication.check_date(cfg, as_of)  # before fitting: a past date would not be published
        features = purchases.features
        low, high = cfg.model.k_range
        progress.step(f"fitting {cfg.model.algorithm}" + ("" if cfg.model.n_clusters else f" for k = {low} to {high}")
                      + f" on {len(features):,} customers")
        model, candidates = choose_and_fit(features, cfg)
        progress.step("scoring homogeneity and stability")
        scored = score_quality(model, candidates, features, cfg)
        progress.step("matching with the published segmentation")
        published = fetch_champion(cfg)
        compared_with = published.run_id if published else "none"
        tracking.set_tags(handle.uri, handle.run_id, {"segml.compared_with": compared_with})
        overlap = (customer_overlap(published.assignments, features.sort_index().index, scored.labels)
                   if published is not None else None)
        segments = profile_segments(features, scored, cfg, published, model, overlap)
        identity = carry_identities(segments, published, model, cfg, as_of, overlap)
        segments = identity.segments
        base = build_assignments(features, scored, segments, as_of, purchases.attributes)
        migration, shifts = compare_with_published(published, base, identity, cfg)
        forward = measure_forward(cfg, purchases, scored, segments, str(config_path))
        metrics = {**run_metrics(purchases, scored, segments), **migration.summary, **shifts,
                   **(forward[1] if forward else {})}
        gates = evaluate_gates(cfg.gates.thresholds(), metrics, cfg.gates.psi_features or list(cfg.features))
        failed = [g for g in gates if not g.passed]
        metrics.update({f"gate.{g.gate}": float(g.passed) for g in gates}, gates_passed=float(not failed))
        warnings = repaired + run_warnings(purchases, model, cfg)
        for line in warnings:
            logger.warning(line)
        if warnings:
            tracking.set_tags(handle.uri, handle.run_id, {"segml.warnings": " | ".join(warnings)})
        gate_lines = ([f"Quality gates: {'; '.join(g.describe() for g in gates)}; "
                       + ("FAILED, not published." if failed else "all passed.")] if gates else [])
        held_back = ("quality gates failed: " + "; ".join(g.describe() for g in failed)) if failed else None
        run_tables = {**(attribute_tables(base, purchases.attributes) if purchases.attributes is not None else {}),
                      **({"forward_validity": forward[0]} if forward else {})}

        def describe(version: int | None) -> report_pages.ReportData:
            data = report_data(cfg, purchases, model, candidates, scored, identity, migration, shifts, published,
                               handle.run_id, version, gate_lines, held_back, warnings)
            data.attributes = run_tables.get("segment_attributes")
            if forward:
                data.forward, data.forward_metrics = forward
                data.forward_days = cfg.quality.forward_horizon_days
            return data

        with tempfile.TemporaryDirectory(prefix="segml-") as tmp, contextlib.ExitStack() as drawings:
            staging = Path(tmp)
            under_way, expected = None, None
            # Whatever ends this block, a drawing still under way ends before its folder is removed (it
            # would write the report again into a folder made anew, and leave it behind); after
            # render_files has waited for it, this costs nothing.
            drawings.callback(lambda: under_way is not None and under_way.abandon())

            def draw(version: int | None) -> tuple[report_pages.ReportData, drawing.Drawing]:
                data = describe(version)
                return data, start_drawing(staging, cfg, purchases, candidates, scored, identity, migration,
                                           model, data)

            # With the drawing worker, the report is drawn on the other core while the model is registered;
            # it names the model version, so it is drawn with the version expected, and again should
            # another one be given. Drawn in a thread, it would only slow the registration down: it is
            # then drawn once the version is known, while the tables are written.
            if drawing.has_worker() and (expected := tracking.next_version(cfg)) is not None:
                progress.step("drawing the figures and the report; registering the model")
                data, under_way = draw(expected)
            else:
                progress.step("registering the model")
            assignments, version = register_model(handle, cfg, purchases, model, segments, base, migration, gates)
            record_run(handle, cfg, purchases, candidates, metrics)
            if under_way is None:
                progress.step("drawing the figures and the report")
                data, under_way = draw(version)
            elif version != expected:
                logger.info("model version %d registered where %s was expected: drawing the report again",
                            version, expected)
                data = describe(version)
                under_way = redraw(staging, cfg, purchases, candidates, scored, identity, migration, model,
                                   under_way, data)
            destination = publication.destination_of(cfg, as_of, "refit")
            links = run_links(handle, destination / "segment_report.pdf")
            tracking.set_tags(handle.uri, handle.run_id, {"mlflow.note.content": report_pages.markdown_summary(
                data, links, "Passed its gates; not published yet (see the tag segml.publication).")})
            render_files(staging, cfg, config_path, purchases, candidates, scored, identity, migration,
                         assignments, run_tables, under_way)
            log_files(handle, staging)
            if failed:
                tracking.tag_failed_gates(handle, [g.describe() for g in failed])
                segments_artifact(cfg, data, run_links(handle, None))
                error = QualityGateError(
                    f"{len(failed)} quality gate{'s' if len(failed) > 1 else ''} failed: "
                    + "; ".join(g.describe() for g in failed)
                    + f". The run is recorded in MLflow ({handle.run_id}) but neither promoted nor published; "
                    f"change the gates in the configuration, look into the data, or publish it after review "
                    f"with `segml promote {config_path} {handle.run_id} --reason ...`.")
                error.summary = run_summary(cfg, handle, version, purchases, model, scored, gates, migration,
                                            identity, shifts, warnings, None, destination, segments, forward)
                raise error
            # Every file is logged before the commit, so a crash after it can be finished from MLflow.
            progress.step("publishing")
            publication.begin(handle.uri, handle.run_id, as_of, "refit", version, destination)
            begun = True
            database = publish_database(cfg, as_of, assignments, identity, handle.run_id, version, force,
                                        None if force else compared_with)
            committed = True
            finish_publication(cfg, handle, staging, destination, as_of, version, "refit", cfg.publish.database)
    except BaseException as exc:
        publication.record_failure(handle, exc, begun, committed)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    segments_artifact(cfg, data, links)
    tracking.set_tags(handle.uri, handle.run_id, {"mlflow.note.content": report_pages.markdown_summary(data, links)})
    summary = run_summary(cfg, handle, version, purchases, model, scored, gates, migration, identity, shifts,
                          warnings, database, destination, segments, forward)
    logger.info("segmentation published to %s (MLflow run %s)", destination, handle.run_id)
    return summary


def run_summary(cfg: SegmlConfig, handle: tracking.RunHandle, version: int, purchases: Purchases,
                model: SegmentModel,
                scored: Quality, gates: list, migration: Migration, identity: Identity, shifts: dict[str, float],
                warnings: list[str], database: str | None, destination: Path,
                segments: pd.DataFrame, forward: tuple[pd.DataFrame, dict[str, float]] | None = None) -> dict[str, Any]:
    """What the command line prints: counts, the segments with their change, what changed, gates."""
    r = purchases.report
    changes = {k.removeprefix("share_change."): v for k, v in shifts.items() if k.startswith("share_change.")}
    new_ids = set(identity.matching.loc[identity.matching["outcome"] == "new", "segment_id"])
    rows = segments[["segment_id", "segment_name", "size", "share", "revenue_share", "homogeneity",
                     "description"]].to_dict(orient="records")
    for row in rows:
        row["share_change"] = None if row["segment_id"] in new_ids else changes.get(row["segment_id"])
    return {
        "run_id": handle.run_id,
        "experiment": cfg.experiment_name,
        "tracking_uri": mask_url(handle.uri),
        "open_mlflow": tracking.how_to_open(handle),
        "model_name": cfg.registered_model_name,
        "model_version": version,
        "as_of": r.as_of.isoformat(),
        "rows_read": r.rows_read,
        "rows_used": r.rows_used,
        "rows_rejected": r.rows_rejected,
        "rows_outside_window": r.rows_outside_window,
        "customers": len(purchases.features),
        "n_segments": model.n_segments,
        "homogeneity": scored.metrics["homogeneity"],
        "gates": {g.gate: g.passed for g in gates},
        "gate_results": [g.describe() + (" passed" if g.passed else " FAILED") for g in gates],
        "migration": migration.summary,
        "psi": {f: shifts[f"psi.{f}"] for f in model.features if f"psi.{f}" in shifts},
        "forward": ({"days": cfg.quality.forward_horizon_days, **forward[1]} if forward else None),
        "renamed": renames(identity),
        "retired": identity.matching.loc[identity.matching["outcome"] == "retired",
                                         ["segment_id", "previous_segment_name"]].to_dict(orient="records"),
        "warnings": warnings,
        "output_dir": str(destination),
        "database": database,
        "assignments": str(destination / "assignments.csv"),
        "report": str(destination / "segment_report.pdf"),
        "segments": rows,
    }
