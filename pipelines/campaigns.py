"""Campaign reports: the uplift of every campaign over its control group, measured from the purchases.

:func:`report_campaign` measures one recorded campaign: it reads the
purchases through the data contract with the window set to the days after
the sent date, compares the target and control groups per segment and
overall (:func:`segml.campaigns.measure_uplift`), writes the table and a plot
to ``<output.dir>/<name>/campaigns/<campaign>/<as-of>/`` and records an MLflow
run in the experiment ``<experiment>-campaigns``. The ``report-campaigns``
flow reports every open campaign; a campaign closes with its first report
after its window has passed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines.segment import resolve_as_of, retry_if_transient
from segml import tracking
from segml.campaigns import (
    OVERALL,
    CampaignError,
    close_campaign,
    measure_uplift,
    open_campaigns,
    plot_uplift,
    read_campaign,
    report_window,
    segment_names,
)
from segml.config import SegmlConfig, WindowConfig, load_config, publish_url
from segml.errors import NoUsableLinesError
from segml.outputs import publish_folder, save_figures, write_csv
from segml.publish import create_engine
from segml.segmentation import prepare_purchases


class _WindowWarning(logging.Filter):
    """Drops the data contract's warning that most lines fall outside the window: a campaign's window
    is a few weeks of a longer history by design, so it would be logged by every report. The
    warning stays in the contract's report (``contract.csv``'s counts show the lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "fall outside the window" not in record.getMessage()


@contextlib.contextmanager
def _quiet_window_warning():
    logger, quiet = logging.getLogger("segml.validation"), _WindowWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def campaign_outcomes(config: SegmlConfig, start: dt.date, end: dt.date, config_name: str = "the configuration",
                      frame: pd.DataFrame | None = None) -> tuple[pd.Series, pd.Series, Any]:
    """Net spend and whether each customer bought (at least one purchase, returns aside), from
    ``start`` up to (not including) ``end``, read through the data contract from the configured
    source (or ``frame``); returns ``(spend, bought, contract report)`` indexed by customer id."""
    plain = config.model_copy(update={
        "customers": None, "data": config.data.model_copy(update={"attributes": {}}),
        "features": ["recency_days", "frequency", "monetary"], "transform": config.transform.model_copy(
            update={"per_feature": {}}),
        "window": WindowConfig(as_of=end, lookback_days=(end - start).days)})
    try:
        with _quiet_window_warning():
            purchases = prepare_purchases(plain, frame=frame, config_name=config_name)
    except NoUsableLinesError as exc:  # nobody bought in the window (yet): an answer, not an error
        return pd.Series(dtype=float), pd.Series(dtype=bool), exc.report
    seen = pd.concat([purchases.features.reset_index(),
                      purchases.excluded[purchases.excluded["reason"] != "all_lines_rejected"]], ignore_index=True)
    seen = seen.set_index("customer_id")
    return seen["monetary"].astype(float).fillna(0.0), seen["frequency"].fillna(0).astype(int) > 0, purchases.report


def report_campaign(config_path: str | Path, name: str, days: int | None = None,
                    as_of: dt.date | None = None) -> dict[str, Any]:
    """Measure campaign ``name`` of the configuration as of ``as_of`` (today by default: purchases
    before it) over ``days`` after its sent date (the days recorded with it by default); returns a
    summary. A window not closed yet is measured as far as it goes (``missing_days`` says how far
    it still has to go); the first report after it has closed closes the campaign."""
    config_path = Path(config_path)
    cfg = load_config(config_path)
    engine = create_engine(publish_url(cfg, dict(os.environ)))
    try:
        campaign, members = read_campaign(engine, cfg.name, name)
        days = days or int(campaign["report_days"])
        as_of = as_of or dt.date.today()
        window = report_window(campaign["sent_date"], days, as_of)
        spend, bought, contract = campaign_outcomes(cfg, window.start, window.end, str(config_path))
        table = measure_uplift(members, spend, bought)
        table.insert(1, "segment_name", table["segment_id"].map(segment_names(engine, cfg.name)))
        experiment = f"{cfg.experiment_name}-campaigns"
        handle = tracking.start_run(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
            update={"experiment": experiment})}), run_name=f"{name} as of {as_of}")
        overall = table[table["segment_id"] == OVERALL].iloc[0]
        destination = Path(cfg.output.dir) / cfg.name / "campaigns" / name / as_of.isoformat()
        try:
            params = {"campaign": name, "segmentation": cfg.name, "sent_date": campaign["sent_date"].isoformat(),
                      "window_days": str(days), "as_of": as_of.isoformat(), "measured_days": str(window.days),
                      "missing_days": str(window.missing_days), "control_share": str(campaign["control_share"]),
                      "seed": str(campaign["seed"]), "selection": campaign["selection"][:500],
                      "input_fingerprint": contract.fingerprint}
            metrics = {f"{key}.{row.segment_id}": float(getattr(row, key)) for row in table.itertuples()
                       for key in ("uplift", "uplift_low", "uplift_high", "relative_uplift", "spend_uplift",
                                   "incremental_revenue") if pd.notna(getattr(row, key))}
            metrics.update(missing_days=float(window.missing_days), rows_read=float(contract.rows_read),
                           rows_used=float(contract.rows_used), rows_rejected=float(contract.rows_rejected))
            tracking.log_params_and_metrics(handle, params, metrics)
            title = (f"Campaign {name}: {window.days} of {days} days after {campaign['sent_date']}"
                     + (f" ({window.missing_days} still to come)" if window.missing_days else ""))
            with tempfile.TemporaryDirectory(prefix="segml-campaign-") as tmp:
                staging = Path(tmp)
                write_csv(table, staging / "campaign_report.csv")
                write_csv(contract.as_frame(), staging / "contract.csv")
                save_figures(staging, {"uplift": plot_uplift(table, title)})
                tracking.log_artifacts(handle, staging)
                publish_folder(staging, destination)
            tracking.end_run(handle)
        except BaseException as exc:
            tracking.end_run(handle, exc)
            raise
        if window.missing_days == 0:
            close_campaign(engine, cfg.name, name)
    finally:
        engine.dispose()
    return {"campaign": name, "as_of": as_of.isoformat(), "sent_date": campaign["sent_date"].isoformat(),
            "days": days, "measured_days": window.days, "missing_days": window.missing_days,
            "closed": window.missing_days == 0, "run_id": handle.run_id, "experiment": experiment,
            "output_dir": str(destination), "table": table, "overall": overall.to_dict()}


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def list_open_campaigns(config: SegmlConfig) -> list[str]:
    """The campaigns of the configuration whose final report is not made yet."""
    engine = create_engine(publish_url(config, dict(os.environ)))
    try:
        return open_campaigns(engine, config.name)
    finally:
        engine.dispose()


@task(cache_policy=NO_CACHE)
def report_one(config_path: str, name: str, as_of: dt.date | None) -> dict[str, Any]:
    """One campaign's report (see :func:`report_campaign`)."""
    summary = report_campaign(config_path, name, as_of=as_of)
    overall = summary["overall"]
    get_run_logger().info(
        "campaign %s: uplift %+.1f points (95%% interval %+.1f to %+.1f), incremental revenue %.0f; %s",
        name, 100 * overall["uplift"], 100 * overall["uplift_low"], 100 * overall["uplift_high"],
        overall["incremental_revenue"],
        f"{summary['missing_days']} days of the window still to come" if summary["missing_days"] else "closed")
    return {k: v for k, v in summary.items() if k != "table"}


@flow(name="report-campaigns", log_prints=False)
def report_campaigns(config: str | Path, as_of: dt.date | None = None) -> list[dict[str, Any]]:
    """Report every open campaign of a configuration (see :func:`report_campaign`); a scheduled run
    reports as of its scheduled day."""
    cfg = load_config(config)
    as_of = resolve_as_of(as_of, cfg)
    names = list_open_campaigns(cfg)
    if not names:
        get_run_logger().info("no open campaign for %s", cfg.name)
    return [report_one(str(config), name, as_of) for name in names]


__all__ = ["CampaignError", "campaign_outcomes", "report_campaign", "report_campaigns"]
