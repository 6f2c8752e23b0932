"""The whole segmentation on generated purchases from known behavioural groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from segml.config import parse_config
from segml.sample import GROUPS, SAMPLE_CONFIG, generate_purchases
from segml.segmentation import ASSIGNMENT_COLUMNS, prepare_purchases, segment_customers


def _config(**model):
    raw = {**SAMPLE_CONFIG, "model": {**SAMPLE_CONFIG["model"], **model}, "quality": {"stability_resamples": 3}}
    raw.pop("customers")  # these tests read purchase frames only
    return parse_config(raw)


@pytest.fixture(scope="module")
def sample():
    lines, truth = generate_purchases(n_customers=1500, seed=3)
    return lines, truth.set_index("customer_id")["group"]


@pytest.fixture(scope="module")
def sample_features(sample):
    purchases = prepare_purchases(_config(), frame=sample[0])
    return purchases


@pytest.mark.parametrize("algorithm", ["kmeans", "gmm"])
def test_generated_groups_are_recovered_with_the_true_k(sample, sample_features, algorithm):
    result = segment_customers(sample_features.features, _config(algorithm=algorithm), sample_features.report.as_of)
    assignments = result.assignments.set_index("customer_id")
    truth = sample[1].loc[assignments.index]
    assert result.model.n_segments == len(GROUPS)
    assert adjusted_rand_score(truth, assignments["segment_id"]) >= 0.9
    # Each generated group lands in the segment named after its archetype.
    names = pd.crosstab(truth, assignments["segment_name"]).idxmax(axis=1).to_dict()
    assert names == {"champions": "Champions", "new": "New", "at_risk": "At risk", "lost": "Lost",
                     "big_spenders": "Big spenders"}


def test_the_messy_lines_are_rejected_and_accounted_for(sample_features):
    report = sample_features.report
    assert set(report.rejected_by_reason) == {"missing_customer_id", "unparseable_timestamp", "zero_price",
                                              "duplicate_line"}
    assert report.rows_used + report.rows_rejected + report.rows_outside_window == report.rows_read
    assert len(sample_features.rejected) == report.rows_rejected


def test_shuffled_rows_change_nothing(sample):
    lines, _ = sample
    config = _config(k_range=[4, 6])
    base = prepare_purchases(config, frame=lines)
    shuffled = prepare_purchases(config, frame=lines.sample(frac=1.0, random_state=7))
    pd.testing.assert_frame_equal(base.features, shuffled.features)
    first = segment_customers(base.features, config, base.report.as_of)
    second = segment_customers(shuffled.features.sample(frac=1.0, random_state=1), config, base.report.as_of)
    pd.testing.assert_frame_equal(first.assignments, second.assignments)
    assert first.metrics == second.metrics


def test_renamed_customers_change_nothing_but_label_order(sample):
    lines, _ = sample
    config = _config(k_range=[4, 6])
    renamed = lines.assign(customer_id=lines["customer_id"].map(lambda c: None if c is None or c != c
                                                                else f"X{int(c) * 7919 % 100003}"))
    base = prepare_purchases(config, frame=lines)
    other = prepare_purchases(config, frame=renamed)
    a = segment_customers(base.features, config, base.report.as_of).assignments
    b = segment_customers(other.features, config, other.report.as_of).assignments
    mapping = dict(zip(lines["customer_id"], renamed["customer_id"]))
    a = a.assign(customer_id=a["customer_id"].map(mapping)).set_index("customer_id").sort_index()
    b = b.set_index("customer_id").sort_index()
    assert adjusted_rand_score(a["segment_id"], b["segment_id"]) == 1.0
    assert (a["segment_name"] == b["segment_name"]).all()


def test_result_tables_have_the_documented_shape(sample_features):
    result = segment_customers(sample_features.features, _config(), sample_features.report.as_of)
    assert result.assignments.columns.tolist() == ASSIGNMENT_COLUMNS
    assert result.assignments["customer_id"].is_unique
    assert len(result.assignments) == len(sample_features.features)
    assert result.segments["segment_name"].is_unique
    assert result.segments["share"].sum() == pytest.approx(1.0)
    assert set(result.homogeneity.columns) >= {"segment", "feature", "ratio", "ratio_model"}
    assert 0.5 < result.metrics["homogeneity"] <= 1.0
    assert result.metrics["stability_ari"] > 0.9
    assert np.isclose(result.metrics["segment_share_min"], result.segments["share"].min())
