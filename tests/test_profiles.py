"""Profiles and names of segments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segml.config import NamingConfig, NamingRule
from segml.profiles import DEFAULT_RULES, name_segments, profile_segments

COLUMNS = ["recency_days", "frequency", "monetary", "tenure_days", "avg_order_value"]


def _customers(rows: list[tuple[int, int, float, int]], repeat: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``repeat`` identical customers per row of (recency, frequency, monetary, tenure)."""
    data = np.repeat(np.array(rows, dtype=float), repeat, axis=0)
    frame = pd.DataFrame(data, columns=COLUMNS[:4])
    frame["avg_order_value"] = frame["monetary"] / frame["frequency"]
    return frame, np.repeat(np.arange(len(rows)), repeat)


def test_profile_by_hand():
    features, labels = _customers([(10, 5, 500.0, 300), (200, 1, 100.0, 200)], repeat=2)
    profile = profile_segments(features, labels, 2).set_index("segment")
    assert profile["size"].tolist() == [2, 2]
    assert profile["revenue_share"].tolist() == pytest.approx([1000 / 1200, 200 / 1200])
    assert profile.loc[0, "median_recency_days"] == 10 and profile.loc[1, "mean_monetary"] == 100


def test_archetypes_get_their_names_and_plain_descriptions():
    features, labels = _customers([
        (5, 20, 5000.0, 700),     # recent, frequent, big: Champions
        (10, 1, 40.0, 12),        # recent, one order, just arrived: New
        (400, 1, 30.0, 420),      # long ago, once: Lost
        (200, 8, 900.0, 600),     # used to buy often, not lately: At risk
    ], repeat=10)
    named = name_segments(profile_segments(features, labels, 4), features, NamingConfig(currency="$"))
    assert named["segment_name"].tolist() == ["Champions", "New", "Lost", "At risk"]
    assert named.loc[0, "description"] == ("Buy often and recently, and spend the most: "
                                           "typically bought 5 days ago, 20 orders, $5,000 spent")
    assert "1 order," in named.loc[1, "description"]


def test_names_are_unique_when_two_segments_match_one_rule():
    rows = [(5, 20, 9000.0, 700), (5, 20, 3000.0, 700), (300, 2, 100.0, 400), (400, 1, 30.0, 420)]
    features, labels = _customers(rows, repeat=10)
    named = name_segments(profile_segments(features, labels, 4), features)
    assert named["rule"].tolist()[:2] == ["Champions", "Champions"]
    assert named["segment_name"].tolist()[:2] == ["Champions, higher spend", "Champions, lower spend"]
    assert named["segment_name"].is_unique


def test_names_are_deterministic_and_do_not_depend_on_segment_numbers():
    rows = [(5, 20, 9000.0, 700), (6, 19, 3000.0, 690), (400, 1, 30.0, 420), (100, 3, 200.0, 300)]
    features, labels = _customers(rows, repeat=5)
    first = name_segments(profile_segments(features, labels, 4), features)
    permuted = np.array([2, 0, 3, 1])[labels]
    second = name_segments(profile_segments(features, permuted, 4), features)
    assert dict(zip(first["segment"], first["segment_name"])) == {
        s: second.set_index("segment").loc[p, "segment_name"] for s, p in zip(range(4), [2, 0, 3, 1])}


def test_config_rules_replace_the_built_in_table():
    features, labels = _customers([(5, 20, 5000.0, 700), (400, 1, 30.0, 420)], repeat=3)
    rules = [NamingRule(name="VIP", description="our best", monetary=(0.5, 1)), NamingRule(name="Everyone else")]
    named = name_segments(profile_segments(features, labels, 2), features, NamingConfig(rules=rules))
    assert named["segment_name"].tolist() == ["VIP", "Everyone else"]
    assert named.loc[1, "description"].startswith("Typically bought 400 days ago")


def test_the_built_in_table_ends_with_a_rule_that_matches_everything():
    last = DEFAULT_RULES[-1]
    assert (last.recency, last.frequency, last.monetary, last.tenure) == ((0, 1),) * 4
