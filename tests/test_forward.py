"""segml.forward: reading what customers bought after the as-of date."""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import pytest

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


def test_the_forward_table_follows_the_segments_order_not_the_ids(tmp_path, monkeypatch):
    # Eleven segments, largest first: S2 is the largest, S10 and S11 come later. Sorted by id the table
    # read S1, S10, S11, S2..., unlike every other table and page of the run.
    import logging
    from types import SimpleNamespace

    import numpy as np

    import pipelines.segment as flow_module
    import segml.forward

    config = load_config(write_flow_config(tmp_path, n_customers=50))
    ids = ["S2", "S10", "S1", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S11"]
    segments = pd.DataFrame({"segment": range(11), "segment_id": ids, "segment_name": [f"n{i}" for i in ids],
                             "size": range(21, 10, -1)})
    labels = np.repeat(np.arange(11), segments["size"])
    customers = [f"c{i:04d}" for i in range(len(labels))]
    purchases = SimpleNamespace(report=SimpleNamespace(as_of=dt.date(2024, 1, 1),
                                                       last_valid_purchase=dt.date(2024, 6, 1)),
                                features=pd.DataFrame(index=pd.Index(customers, name="customer_id")))
    bought = pd.DataFrame({"bought": True, "spend": 10.0}, index=customers[::3])
    monkeypatch.setattr(segml.forward, "future_outcomes", lambda *args, **kwargs: bought)
    monkeypatch.setattr(flow_module, "get_run_logger", lambda: logging.getLogger("test"))

    table, metrics = flow_module.measure_forward.fn(config, purchases, SimpleNamespace(labels=labels), segments, "x")

    assert table["segment_id"].tolist() == ids
    assert table["customers"].tolist() == segments["size"].tolist()
    assert table["segment_name"].tolist() == segments["segment_name"].tolist()
    assert metrics["forward.repurchase_rate"] == pytest.approx(len(bought) / len(labels))
