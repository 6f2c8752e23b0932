"""Homogeneity, explained variance and stability on segmentations whose quality is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segml import quality
from segml.config import ModelConfig, TransformConfig
from segml.models import fit_segments
from test_models import FEATURES, rfm_blobs


def _homogeneity(X: pd.DataFrame, Z: np.ndarray, labels: np.ndarray) -> float:
    k = labels.max() + 1
    table = quality.score_homogeneity(X, Z, labels, k)
    summary = quality.summarise_quality(table, labels, k, np.full(k, np.nan), np.full(k, np.nan))
    return quality.overall_homogeneity(summary)


def test_segments_of_identical_customers_score_one():
    # Three kinds of customer, each repeated: every segment holds identical customers.
    kinds = np.array([[5.0, 10.0, 900.0], [200.0, 1.0, 30.0], [60.0, 3.0, 250.0]])
    labels = np.repeat([0, 1, 2], [40, 30, 30])
    X = pd.DataFrame(kinds[labels], columns=FEATURES)
    assert _homogeneity(X, np.log1p(X.to_numpy()), labels) == pytest.approx(1.0)
    assert quality.explained_variance(np.log1p(X.to_numpy()), labels) == pytest.approx(1.0)


def test_random_labels_score_about_zero():
    X, _ = rfm_blobs()
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=len(X))
    Z = np.log1p(X.to_numpy())
    assert abs(_homogeneity(X, Z, labels)) < 0.05
    assert abs(quality.explained_variance(Z, labels)) < 0.02


def test_homogeneity_table_by_hand():
    # Feature a: population [0, 2, 4, 6] has std sqrt(5); segment 0 = [0, 2] has std 1.
    X = pd.DataFrame({"a": [0.0, 2.0, 4.0, 6.0], "b": [1.0, 1.0, 1.0, 1.0]})
    labels = np.array([0, 0, 1, 1])
    table = quality.score_homogeneity(X, X.to_numpy(), labels, 2)
    row = table[(table["segment"] == 0) & (table["feature"] == "a")].iloc[0]
    assert row["std_within"] == pytest.approx(1.0)
    assert row["std_population"] == pytest.approx(np.sqrt(5))
    assert row["ratio"] == pytest.approx(1 / np.sqrt(5))
    # A feature with no variation anywhere does not count against homogeneity.
    assert table.loc[table["feature"] == "b", "ratio"].tolist() == [0.0, 0.0]


def test_well_separated_blobs_are_stable():
    X, _ = rfm_blobs()
    model, _ = fit_segments(X, FEATURES, TransformConfig(), ModelConfig(n_clusters=4))
    Z, labels = model.transform(X), model.predict(X)
    ari, jaccard = quality.score_stability(model, Z, labels, n_resamples=5, sample_size=500, random_state=0)
    assert ari > 0.95
    assert jaccard.shape == (4,) and (jaccard > 0.9).all()
    silhouettes = quality.segment_silhouettes(Z, labels, 4, sample_size=500, random_state=0)
    assert (silhouettes > 0.5).all()


def test_too_many_segments_on_one_blob_are_unstable():
    rng = np.random.default_rng(0)
    X = pd.DataFrame(np.expm1(rng.normal(3, 0.3, size=(600, 3))), columns=FEATURES)
    model, _ = fit_segments(X, FEATURES, TransformConfig(), ModelConfig(n_clusters=6, min_segment_share=0))
    Z, labels = model.transform(X), model.predict(X)
    ari, jaccard = quality.score_stability(model, Z, labels, n_resamples=8, sample_size=600, random_state=0)
    assert ari < 0.9
    assert jaccard.min() < 0.8


def test_no_resamples_gives_nan():
    X, _ = rfm_blobs()
    model, _ = fit_segments(X, FEATURES, TransformConfig(), ModelConfig(n_clusters=4))
    ari, jaccard = quality.score_stability(model, model.transform(X), model.predict(X), 0, 100, 0)
    assert np.isnan(ari) and np.isnan(jaccard).all()
