"""Backfill: run the segmentation for a series of as-of dates, in order.

Each step is a full refit run of :func:`pipelines.segment.segment_customers`:
it matches its segments to the one promoted before it, records migration and
drift, and is promoted when it passes the gates, so the id and migration
history come out as if the schedule had run all along. A step that fails a
quality gate, or dated before the publication the CRM reads (without
``force``), is recorded and skipped (the next step matches against the last
promoted one); any other error stops the backfill. The flow fails at the end
when a step failed its gates.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from pipelines.segment import segment_customers
from segml.errors import ConfigError, QualityGateError
from segml.publish import StalePublicationError

_PERIOD = re.compile(r"^(?:(\d+)\s*)?(d|day|days|w|week|weeks|m|month|months)$")


def as_of_dates(start: dt.date, end: dt.date, every: str) -> list[dt.date]:
    """Dates from ``start`` to ``end`` inclusive, every ``every`` (``day``, ``week``, ``month``, ``7d``, ``2w``, ``3m``)."""
    match = _PERIOD.match(every.strip().lower())
    if not match:
        raise ConfigError(f"--every {every!r} is not a period; use day, week, month or a count such as 7d, 2w, 3m")
    if end < start:
        raise ConfigError(f"--to {end} is before --from {start}")
    count = int(match.group(1) or 1)
    if count < 1:
        raise ConfigError(f"--every {every!r} must step forward by at least one")
    unit = {"d": "days", "w": "weeks", "m": "months"}[match.group(2)[0]]
    dates: list[dt.date] = []
    # Each date is counted from the start, so month ends stay month ends (Jan 31, Feb 28, Mar 31).
    while (date := (pd.Timestamp(start) + pd.DateOffset(**{unit: count * len(dates)})).date()) <= end:
        dates.append(date)
    return dates


@flow(name="backfill-segments", log_prints=False)
def backfill(config: str | Path, start: dt.date, end: dt.date, every: str = "month",
             force: bool = False) -> list[dict[str, Any]]:
    """Run the segmentation for every as-of date from ``start`` to ``end``; returns one summary per date.

    With ``force`` the steps are published even when the CRM reads a later date (rebuilding a history
    from its start); otherwise such a step is recorded but not published, like a failed gate.
    """
    logger = get_run_logger()
    dates = as_of_dates(start, end, every)
    logger.info("backfilling %d as-of dates: %s", len(dates), ", ".join(d.isoformat() for d in dates))
    results, failed = [], []
    for as_of in dates:
        try:
            summary = segment_customers(str(config), as_of, force)
        except (QualityGateError, StalePublicationError) as exc:
            logger.warning("as of %s: %s", as_of, exc)
            reason = str(exc).split(". The run is recorded")[0]
            failed.append(f"{as_of}: {reason}")
            results.append({"as_of": as_of.isoformat(), "promoted": False, "error": reason})
            continue
        results.append({**summary, "promoted": True})
    if failed:
        raise BackfillError(f"{len(failed)} of {len(dates)} backfill steps were not published (each is recorded "
                            "in MLflow): " + " | ".join(failed), results)
    return results


class BackfillError(QualityGateError):
    """Some steps of a backfill were not published; ``results`` holds every step's outcome."""

    def __init__(self, message: str, results: list[dict[str, Any]]):
        super().__init__(message)
        self.results = results

    def __reduce__(self):
        return (BackfillError, (self.args[0], self.results))
