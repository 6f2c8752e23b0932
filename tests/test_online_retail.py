"""The real, messy Online Retail purchases with the shipped configuration."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import REPO
from segml.config import load_config
from segml.segmentation import prepare_purchases, segment_customers


@pytest.fixture(scope="module")
def config(online_retail_path):
    return load_config(REPO / "configs" / "online_retail.yaml")


@pytest.fixture(scope="module")
def purchases(config):
    return prepare_purchases(config, config_name="configs/online_retail.yaml")


@pytest.fixture(scope="module")
def raw(online_retail_path):
    return pd.read_parquet(online_retail_path)


def test_counts_reconcile_and_every_reason_has_its_count(purchases, raw):
    report = purchases.report
    assert report.rows_read == len(raw) == 240_007
    assert report.rows_used + report.rows_rejected + report.rows_outside_window == report.rows_read
    # Expected counts recomputed independently with pandas, in segml's order of precedence.
    has_customer = raw["CustomerID"].notna()
    priced = raw["UnitPrice"] != 0
    expected = {
        "missing_customer_id": int((~has_customer).sum()),
        "zero_price": int((has_customer & ~priced).sum()),
        "duplicate_line": int((has_customer & priced & raw.duplicated(keep="first")).sum()),
    }
    assert expected["missing_customer_id"] == 67_225
    assert report.rejected_by_reason == expected
    assert purchases.rejected["reason"].value_counts().to_dict() == expected


def test_features_match_an_independent_pandas_computation(purchases, raw):
    used = raw[raw["CustomerID"].notna() & (raw["UnitPrice"] != 0) & ~raw.duplicated(keep="first")].copy()
    used["customer_id"] = used["CustomerID"].astype("int64").astype(str)
    used["amount"] = used["Quantity"] * used["UnitPrice"]
    used["day"] = pd.to_datetime(used["InvoiceDate"], format="%m/%d/%y %H:%M").dt.normalize()
    is_return = (used["Quantity"] < 0) | used["InvoiceNo"].str.startswith("C")
    bought = used[~is_return]
    as_of = pd.Timestamp(purchases.report.as_of)
    expected = pd.DataFrame({
        "recency_days": (as_of - bought.groupby("customer_id")["day"].max()).dt.days,
        "frequency": bought.groupby("customer_id")["InvoiceNo"].nunique(),
        "monetary": used.groupby("customer_id")["amount"].sum(),
        "tenure_days": (as_of - bought.groupby("customer_id")["day"].min()).dt.days,
    })
    expected = expected[expected["frequency"].notna() & (expected["monetary"].round(6) > 0)]
    got = purchases.features
    assert sorted(got.index) == sorted(expected.index)
    expected = expected.loc[got.index]
    for column in ("recency_days", "frequency", "tenure_days"):
        assert (got[column].to_numpy() == expected[column].to_numpy()).all(), column
    pd.testing.assert_series_equal(got["monetary"], expected["monetary"], check_names=False, rtol=1e-9)
    excluded = purchases.excluded["reason"].value_counts().to_dict()
    assert set(excluded) <= {"no_purchases", "non_positive_spend"} and sum(excluded.values()) > 0


@pytest.mark.slow
def test_segmenting_gives_actionable_segments(purchases, config):
    result = segment_customers(purchases.features, config, purchases.report.as_of)
    assert result.segments["share"].min() >= config.model.min_segment_share
    assert result.segments["segment_name"].is_unique
    assert 4 <= result.model.n_segments <= 8
    assert result.metrics["homogeneity"] > 0.3
    assert result.metrics["explained_variance"] > 0.5
    # The top segment by revenue per customer is the one named for frequent, recent, big buyers.
    top = result.segments.sort_values("median_monetary").iloc[-1]
    assert top["segment_name"].startswith("Champions")
