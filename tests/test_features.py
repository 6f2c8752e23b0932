"""RFM features, checked against values worked out by hand."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from conftest import HAND_FEATURES, hand_config
from segml.segmentation import prepare_purchases


def test_features_match_the_hand_worked_values(hand_lines):
    purchases = prepare_purchases(hand_config(), frame=hand_lines)
    pd.testing.assert_frame_equal(purchases.features, HAND_FEATURES, check_dtype=False)


def test_customers_without_positive_spend_are_left_out_with_their_reason(hand_lines):
    excluded = prepare_purchases(hand_config(), frame=hand_lines).excluded.set_index("customer_id")
    assert excluded["reason"].to_dict() == {"D": "no_purchases", "E": "non_positive_spend"}
    assert excluded.loc["E", "monetary"] == pytest.approx(-10.0)


def test_purchases_after_the_as_of_date_never_leak_in(hand_lines):
    later = hand_lines.copy()
    later.loc[len(later)] = ["O99", "A", "2024-03-05 10:00", "1", "1000"]   # after as-of
    later.loc[len(later)] = ["O98", "Z", "2024-06-01 10:00", "1", "1000"]   # a customer not yet born
    features = prepare_purchases(hand_config(), frame=later).features
    pd.testing.assert_frame_equal(features, HAND_FEATURES, check_dtype=False)


def test_an_earlier_as_of_date_gives_the_features_of_that_day(hand_lines):
    purchases = prepare_purchases(hand_config(), frame=hand_lines, as_of=dt.date(2024, 2, 1))
    a = purchases.features.loc["A"]
    # Only O1 (25) and its cancellation (-5) precede Feb 1.
    assert (a["recency_days"], a["frequency"], a["monetary"], a["tenure_days"]) == (31, 1, 20.0, 31)
    assert "B" not in purchases.features.index


def test_without_an_order_column_frequency_counts_purchase_days(hand_lines):
    config = hand_config()
    columns = config.data.columns.model_copy(update={"order_id": None})
    config = config.model_copy(update={"data": config.data.model_copy(update={"columns": columns})})
    features = prepare_purchases(config, frame=hand_lines.drop(columns="invoice")).features
    # Without order ids a cancellation is only known by its sign, so A's CO1 (+1 x 5 on Jan 5)
    # is now a purchase: A bought on Jan 1, Jan 5 and Feb 15. C's two orders share one day.
    assert features["frequency"].to_dict() == {"A": 3, "B": 1, "C": 1}
    assert features.loc["A", "monetary"] == pytest.approx(60.0)
