"""Scheme comparison worked out by hand: RFM quintiles and groups, forward validity, the common space."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segml.schemes import (auc, common_space, forward_validity, homogeneity_of, quintile, rfm_grid,
                           rfm_score_groups, rfm_scores)


def _ten() -> pd.DataFrame:
    # Customer c0 bought most recently, most often and spent most; c9 the opposite.
    return pd.DataFrame({"recency_days": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                         "frequency": [10, 9, 8, 7, 6, 5, 4, 3, 2, 1],
                         "monetary": [1000.0, 900, 800, 700, 600, 500, 400, 300, 200, 100]},
                        index=[f"c{i}" for i in range(10)])


def test_quintiles_give_two_customers_each_and_the_most_recent_an_r_of_5():
    scores = rfm_scores(_ten())
    assert scores["R"].tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert scores["F"].tolist() == scores["M"].tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    # ties share the score of their average rank: four equal values of five rank 2.5 of 5, the 3rd quintile
    assert quintile(pd.Series([1, 1, 1, 1, 9])).tolist() == [3, 3, 3, 3, 5]


def test_rfm_score_groups_cut_the_summed_score_and_never_split_a_score():
    groups = rfm_score_groups(_ten(), 5)
    assert groups.tolist() == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]  # scores 15, 15, 12, 12, ... 3, 3
    tied = _ten().assign(recency_days=5, frequency=3, monetary=50.0)  # everyone alike: one group
    assert set(rfm_score_groups(tied, 4)) == {0}


def test_the_named_grid_by_hand():
    frame = _ten()
    names = rfm_grid(frame)
    # R = F = M for these customers: FM = R
    assert names.tolist() == ["Champions", "Champions", "Champions", "Champions", "Loyal", "Loyal",
                              "Lapsed", "Lapsed", "Lapsed", "Lapsed"]
    lapsing_big = frame.assign(recency_days=frame["recency_days"][::-1].to_numpy())  # c0 now bought longest ago
    assert rfm_grid(lapsing_big)["c0"] == "At risk" and rfm_grid(lapsing_big)["c9"] == "Recent"


def test_auc_counts_ties_half():
    assert auc(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 1, 0, 0])) == 1.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 1, 0])) == 0.5
    assert auc(np.array([0.8, 0.2, 0.8, 0.2]), np.array([1, 1, 0, 0])) == 0.5
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_forward_validity_by_hand():
    segments = pd.Series(["A", "A", "B", "B"], index=["c1", "c2", "c3", "c4"])
    future = pd.DataFrame({"bought": [True, True, True], "spend": [10.0, 30.0, 40.0]}, index=["c1", "c2", "c3"])
    table, metrics = forward_validity(segments, future)
    assert table["repurchase_rate"].tolist() == [1.0, 0.5] and table["mean_spend"].tolist() == [20.0, 20.0]
    # spend 10, 30, 40, 0: mean 20, total SS 100 + 100 + 400 + 400 = 1000; within A 200, within B 800
    assert metrics["forward.r2_spend"] == pytest.approx(0.0)
    # ranking by rate (A 1.0, A 1.0, B 0.5, B 0.5) for bought (1, 1, 1, 0): positives' ranks 3.5, 3.5, 1.5
    assert metrics["forward.auc_repurchase"] == pytest.approx((3.5 + 3.5 + 1.5 - 6) / 3)
    assert metrics["forward.repurchase_rate"] == 0.75


def test_segments_that_differ_in_repurchase_score_higher_than_random_labels():
    rng = np.random.default_rng(0)
    n = 3_000
    segment = rng.integers(0, 3, n)
    rate = np.array([0.1, 0.4, 0.8])[segment]
    bought = rng.random(n) < rate
    spend = np.where(bought, rng.gamma(2.0, 50.0 * (1 + segment)), 0.0)
    ids = [f"c{i}" for i in range(n)]
    future = pd.DataFrame({"bought": bought, "spend": spend}, index=ids)[bought]
    _, real = forward_validity(pd.Series(segment, index=ids), future)
    _, noise = forward_validity(pd.Series(rng.permutation(segment), index=ids), future)
    assert real["forward.auc_repurchase"] > 0.75 > 0.55 > noise["forward.auc_repurchase"]
    assert real["forward.r2_spend"] > 0.2 > 0.01 > noise["forward.r2_spend"]


def test_common_space_homogeneity_is_one_for_identical_segments_and_near_zero_for_random_ones():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"recency_days": rng.integers(1, 400, 900), "frequency": rng.integers(1, 20, 900),
                          "monetary": rng.gamma(2, 100, 900)})
    Z = common_space(frame)
    assert np.allclose(Z.mean(axis=0), 0) and np.allclose(Z.std(axis=0), 1)
    assert homogeneity_of(Z, rng.integers(0, 3, 900)) == pytest.approx(0.0, abs=0.05)
    twins = pd.concat([frame.iloc[:3]] * 100, ignore_index=True)
    assert homogeneity_of(common_space(twins), np.tile([0, 1, 2], 100)) == pytest.approx(1.0)
