"""Fitting and choosing k on data whose segments are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from segml import models
from segml.config import ModelConfig, TransformConfig
from segml.errors import SegmentationError
from segml.models import fit_segments

FEATURES = ["recency_days", "frequency", "monetary"]
NO_TRANSFORM = TransformConfig(default="none", scaler="standard")


def rfm_blobs(n_per_group=(300, 250, 200, 150), seed=0) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers from well separated groups in log-RFM space; returns features and true groups."""
    centres = np.array([[2.0, 3.0, 8.0], [5.5, 1.0, 4.0], [3.5, 2.0, 6.0], [6.0, 2.5, 8.5]])
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(n_per_group)), n_per_group)
    logs = centres[groups] + rng.normal(0, 0.25, size=(len(groups), 3))
    frame = pd.DataFrame(np.expm1(logs), columns=FEATURES)
    frame.index = pd.Index([f"c{i:05d}" for i in range(len(frame))], name="customer_id")
    return frame, groups


@pytest.mark.parametrize("algorithm", ["kmeans", "gmm"])
def test_recovers_known_groups_and_picks_the_true_k(algorithm):
    X, truth = rfm_blobs()
    model, candidates = fit_segments(X, FEATURES, TransformConfig(),
                                     ModelConfig(algorithm=algorithm, k_range=(2, 7)))
    assert model.n_segments == 4
    assert adjusted_rand_score(truth, model.predict(X)) >= 0.9
    assert candidates["k"].tolist() == [2, 3, 4, 5, 6, 7]
    assert candidates["chosen"].sum() == 1
    assert candidates.loc[candidates["chosen"], "silhouette"].item() == candidates["silhouette"].max()


def test_bic_chooses_the_true_k_for_mixtures():
    X, truth = rfm_blobs()
    model, candidates = fit_segments(X, FEATURES, TransformConfig(),
                                     ModelConfig(algorithm="gmm", criterion="bic", k_range=(2, 6),
                                                 covariance_type="diag"))
    assert model.n_segments == 4
    assert candidates["bic"].notna().all()


@pytest.mark.parametrize("criterion", ["calinski_harabasz", "davies_bouldin"])
def test_other_criteria_agree_on_a_clear_case(criterion):
    X, _ = rfm_blobs()
    model, _ = fit_segments(X, FEATURES, TransformConfig(), ModelConfig(criterion=criterion, k_range=(2, 7)))
    assert model.n_segments == 4


def test_segments_are_numbered_from_the_largest():
    X, truth = rfm_blobs()
    model, _ = fit_segments(X, FEATURES, TransformConfig(), ModelConfig(n_clusters=4))
    sizes = np.bincount(model.predict(X))
    assert sizes.tolist() == [300, 250, 200, 150]


def test_minimum_share_rules_out_candidates_with_a_tiny_segment():
    X, _ = rfm_blobs(n_per_group=(490, 490, 10, 10))   # two groups of 1% each
    model, candidates = fit_segments(X, FEATURES, TransformConfig(), ModelConfig(k_range=(2, 4)))
    assert (candidates["eligible"] == (candidates["min_share"] >= 0.02)).all()
    assert candidates.set_index("k").loc[4, ["eligible", "min_share"]].tolist() == [False, 0.01]
    assert model.n_segments in (2, 3)
    lenient, _ = fit_segments(X, FEATURES, TransformConfig(), ModelConfig(n_clusters=4, min_segment_share=0.005))
    assert np.bincount(lenient.predict(X)).tolist() == [490, 490, 10, 10]


def test_no_eligible_candidate_explains_the_shares_seen():
    X, _ = rfm_blobs(n_per_group=(490, 490, 10, 10))
    with pytest.raises(SegmentationError, match=r"smaller than model.min_segment_share=0.02 .*k=4: 1\.0%"):
        fit_segments(X, FEATURES, TransformConfig(), ModelConfig(n_clusters=4))


def test_too_few_customers_is_a_clear_error():
    X, _ = rfm_blobs(n_per_group=(3, 2, 1, 1))
    with pytest.raises(SegmentationError, match="7 customers are too few for 8 segments"):
        fit_segments(X, FEATURES, TransformConfig(), ModelConfig())


@pytest.mark.parametrize("algorithm", ["kmeans", "gmm"])
def test_same_data_and_config_give_the_same_segments(algorithm):
    X, _ = rfm_blobs()
    config = ModelConfig(algorithm=algorithm, k_range=(3, 5))
    first, c1 = fit_segments(X, FEATURES, TransformConfig(), config)
    second, c2 = fit_segments(X, FEATURES, TransformConfig(), config)
    np.testing.assert_array_equal(first.predict(X), second.predict(X))
    pd.testing.assert_frame_equal(c1, c2)


def test_transform_is_part_of_the_model_and_scores_new_customers_the_same_way():
    X, _ = rfm_blobs()
    model, _ = fit_segments(X, FEATURES, TransformConfig(per_feature={"recency_days": "rank"}),
                            ModelConfig(n_clusters=4))
    new = X.iloc[[5, 400, 700]].copy()
    np.testing.assert_array_equal(model.predict(new), model.predict(X)[[5, 400, 700]])
    Z = model.transform(X)
    assert Z[:, 0].min() >= -2 and abs(Z.mean(axis=0)).max() < 1e-9   # ranks, then standardised


def test_probabilities_are_in_segment_order():
    X, _ = rfm_blobs()
    model, _ = fit_segments(X, FEATURES, TransformConfig(), ModelConfig(algorithm="gmm", n_clusters=4))
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(proba.argmax(axis=1), model.predict(X))


@pytest.mark.parametrize("algorithm", ["kmeans", "gmm"])
def test_candidates_fitted_on_a_sample_still_assign_everyone(algorithm):
    X, truth = rfm_blobs(n_per_group=(1200, 1000, 800, 600))
    model, candidates = fit_segments(X, FEATURES, TransformConfig(),
                                     ModelConfig(algorithm=algorithm, k_range=(3, 5), fit_sample=1000))
    assert (candidates["fitted_on"] == 1000).all()
    assert model.n_segments == 4
    labels = model.predict(X)
    assert len(labels) == 3600 and adjusted_rand_score(truth, labels) >= 0.9
    assert np.bincount(labels).tolist() == sorted(np.bincount(labels).tolist(), reverse=True)


@pytest.mark.parametrize("algorithm", ["kmeans", "gmm"])
def test_fits_side_by_side_match_fits_one_after_another(algorithm, monkeypatch):
    monkeypatch.setattr(models, "PARALLEL_MIN_ROWS", 500)  # real worker processes, on small samples
    X, truth = rfm_blobs(n_per_group=(1200, 1000, 800, 600))
    # Candidates compared on 1,000 customers, the chosen k refitted on 2,000 with n_init runs.
    config = ModelConfig(algorithm=algorithm, k_range=(3, 5), n_init=2, fit_sample=2000, selection_sample=1000)
    serial, serial_candidates = fit_segments(X, FEATURES, TransformConfig(), config.model_copy(update={"n_jobs": 1}))
    parallel, parallel_candidates = fit_segments(X, FEATURES, TransformConfig(), config.model_copy(update={"n_jobs": 2}))
    pd.testing.assert_frame_equal(serial_candidates, parallel_candidates)
    assert (serial.predict(X) == parallel.predict(X)).all()
    assert adjusted_rand_score(truth, parallel.predict(X)) >= 0.9


@pytest.mark.parametrize("algorithm", ["kmeans", "gmm"])
def test_the_chosen_k_refitted_on_the_fit_sample_matches_a_fit_on_everyone(algorithm):
    X, truth = rfm_blobs(n_per_group=(3000, 2500, 2000, 1500))
    sampled, candidates = fit_segments(X, FEATURES, NO_TRANSFORM, ModelConfig(
        algorithm=algorithm, k_range=(3, 5), fit_sample=6000, selection_sample=1500))
    full, _ = fit_segments(X, FEATURES, NO_TRANSFORM, ModelConfig(
        algorithm=algorithm, n_clusters=4, fit_sample=None, selection_sample=None))
    assert (candidates["fitted_on"] == 1500).all() and sampled.n_segments == 4
    assert adjusted_rand_score(full.predict(X), sampled.predict(X)) >= 0.99
    assert adjusted_rand_score(truth, sampled.predict(X)) >= 0.9


def test_the_faster_mixture_fits_what_scikit_learn_fits():
    # Groups so far apart that most log-responsibilities are minus thousands: the floored E-step's case.
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [40.0, 0.0], [0.0, 40.0], [40.0, 40.0]])
    Z = np.vstack([c + rng.normal(0, 1.0, size=(500, 2)) for c in centres])
    params = {"n_components": 4, "covariance_type": "diag", "n_init": 2, "random_state": 0, "reg_covar": 1e-5}
    ours, theirs = models.Mixture(**params).fit(Z), GaussianMixture(**params).fit(Z)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=1e-9)
    np.testing.assert_allclose(ours.means_, theirs.means_, atol=1e-8)
    np.testing.assert_array_equal(ours.predict(Z), theirs.predict(Z))
    proba = ours.predict_proba(Z)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba, theirs.predict_proba(Z), atol=1e-12)
    assert ours.bic(Z) == pytest.approx(theirs.bic(Z), rel=1e-9)
    # Without the floor the far log-responsibilities would be far below it.
    assert theirs._estimate_log_prob_resp(Z)[1].min() < models.LOG_FLOOR
    assert isinstance(clone(ours), models.Mixture) and clone(ours).get_params() == ours.get_params()
