"""segml.forward: reading what customers bought after the as-of date."""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd

from conftest import write_flow_config
from segml.config import load_config
from segml.forward import future_outcomes


def test_the_horizon_is_read_quietly_and_without_attributes(tmp_path, caplog):
    # Two years of sample purchases and a customers file: the 90 days after the as-of date hold a small
    # part of the lines, and the customers file names customers who never bought in the horizon. Neither
    # is something to warn the user about: the run's own read warns about its own window and attributes.
    config = load_config(write_flow_config(tmp_path, n_customers=300, customers=True))
    as_of = dt.date(2023, 9, 1)
    frame = pd.read_csv(tmp_path / "data" / "sample_purchases.csv", dtype=str)
    when = pd.to_datetime(frame["purchased_at"], errors="coerce")
    inside = (when >= pd.Timestamp(as_of)) & (when < pd.Timestamp(as_of + dt.timedelta(days=90)))
    assert inside.sum() < 0.5 * len(frame)  # the horizon's window would be "mostly outside"

    with caplog.at_level(logging.INFO):
        future = future_outcomes(config, as_of, 90)

    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert future["bought"].all() and len(future) > 0
    assert list(future.columns) == ["bought", "spend"]
    assert set(future.index) <= set(frame.loc[inside, "customer_id"].dropna())
    # The filter is gone afterwards: the loggers warn again.
    assert not logging.getLogger("segml.validation").filters
    assert not logging.getLogger("segml.attributes").filters
