"""How good a segmentation is: homogeneity, separation and stability.

Homogeneity answers "do customers in one segment differ little?". For segment
``s`` and feature ``f``::

    ratio(s, f) = std of f within s / std of f over all segmented customers

with population standard deviations (``ddof=0``). A feature that does not vary
in the population at all has ratio 0. Ratios are computed in original units
and in the model's space (after the log/rank transform and scaling)::

    homogeneity(s) = 1 - mean over features of ratio(s, f)      (model space)
    homogeneity    = sum over s of share(s) * homogeneity(s)

so 1 means every segment holds identical customers and 0 means segments vary
as much as the whole population, i.e. no better than not segmenting. A segment
more spread out than the population scores below 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sklearn
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score, silhouette_samples

from segml.models import SILHOUETTE_MEMORY_MB, SegmentModel


def _std_ratios(values: np.ndarray, labels: np.ndarray, n_segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per segment and column: within std, population std and their ratio."""
    population = values.std(axis=0)
    within = np.zeros((n_segments, values.shape[1]))
    for s in range(n_segments):
        members = values[labels == s]
        if len(members):
            within[s] = members.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(population > 0, within / population, 0.0)
    return within, np.broadcast_to(population, within.shape), ratio


def score_homogeneity(X: pd.DataFrame, Z: np.ndarray, labels: np.ndarray, n_segments: int) -> pd.DataFrame:
    """Per segment and feature: within and population std and their ratio, in both spaces.

    ``X`` holds the model's features in original units, ``Z`` the same rows
    in the model's space, ``labels`` the segment numbers.
    """
    features = list(X.columns)
    w_orig, p_orig, r_orig = _std_ratios(X.to_numpy(dtype=float), labels, n_segments)
    w_model, p_model, r_model = _std_ratios(Z, labels, n_segments)
    segments = np.repeat(np.arange(n_segments), len(features))
    return pd.DataFrame({
        "segment": segments,
        "feature": features * n_segments,
        "std_within": w_orig.ravel(),
        "std_population": p_orig.ravel(),
        "ratio": r_orig.ravel(),
        "std_within_model": w_model.ravel(),
        "std_population_model": p_model.ravel(),
        "ratio_model": r_model.ravel(),
    })


def explained_variance(Z: np.ndarray, labels: np.ndarray) -> float:
    """``1 - within-segment sum of squares / total sum of squares`` in the model's space."""
    total = float(((Z - Z.mean(axis=0)) ** 2).sum())
    if total == 0:
        return 1.0
    within = sum(float(((Z[labels == s] - Z[labels == s].mean(axis=0)) ** 2).sum()) for s in np.unique(labels))
    return 1.0 - within / total


def segment_silhouettes(Z: np.ndarray, labels: np.ndarray, n_segments: int, sample_size: int,
                        random_state: int) -> np.ndarray:
    """Mean silhouette per segment, on a fixed-seed sample of at most ``sample_size`` customers."""
    rng = np.random.default_rng(random_state)
    idx = np.sort(rng.choice(len(labels), size=min(sample_size, len(labels)), replace=False))
    out = np.full(n_segments, np.nan)
    if len(np.unique(labels[idx])) < 2:
        return out
    with sklearn.config_context(working_memory=SILHOUETTE_MEMORY_MB):
        values = silhouette_samples(Z[idx], labels[idx])
    for s in range(n_segments):
        members = labels[idx] == s
        if members.any():
            out[s] = values[members].mean()
    return out


def score_stability(model: SegmentModel, Z: np.ndarray, labels: np.ndarray, n_resamples: int,
                    sample_size: int, random_state: int) -> tuple[float, np.ndarray]:
    """Bootstrap stability: mean adjusted Rand index and each segment's mean Jaccard match.

    On a fixed-seed sample of at most ``sample_size`` customers, the estimator
    is refitted on ``n_resamples`` bootstrap resamples with the same settings.
    Each refit labels the distinct resampled customers; the adjusted Rand index
    compares those labels with the full fit's, and for every segment of the
    full fit the best Jaccard similarity with a refitted segment is kept
    (Hennig 2007, cluster-wise stability). Returns ``(ari, jaccard)``, NaN when
    ``n_resamples`` is 0.
    """
    n_segments = model.n_segments
    if n_resamples == 0:
        return float("nan"), np.full(n_segments, np.nan)
    rng = np.random.default_rng(random_state)
    base = np.sort(rng.choice(len(labels), size=min(sample_size, len(labels)), replace=False))
    Zs, ls = Z[base], labels[base]
    aris, jaccards = [], []
    for _ in range(n_resamples):
        draw = rng.integers(0, len(base), size=len(base))
        refit = clone(model.estimator_).set_params(random_state=int(rng.integers(2**31 - 1))).fit(Zs[draw])
        points = np.unique(draw)
        new = refit.predict(Zs[points])
        old = ls[points]
        aris.append(adjusted_rand_score(old, new))
        row = np.full(n_segments, np.nan)
        for s in range(n_segments):
            in_old = old == s
            if not in_old.any():
                continue
            best = 0.0
            for c in np.unique(new):
                in_new = new == c
                best = max(best, (in_old & in_new).sum() / (in_old | in_new).sum())
            row[s] = best
        jaccards.append(row)
    return float(np.mean(aris)), np.nanmean(np.array(jaccards), axis=0)


def summarise_quality(homogeneity_table: pd.DataFrame, labels: np.ndarray, n_segments: int,
                      silhouettes: np.ndarray, jaccard: np.ndarray,
                      probability: np.ndarray | None = None) -> pd.DataFrame:
    """One row per segment: size, share, homogeneity (model space and original units),
    silhouette, stability Jaccard and, for mixtures, the mean membership probability."""
    sizes = np.bincount(labels, minlength=n_segments)
    by_segment = homogeneity_table.groupby("segment")
    table = pd.DataFrame({
        "segment": np.arange(n_segments),
        "size": sizes,
        "share": sizes / sizes.sum(),
        "homogeneity": 1.0 - by_segment["ratio_model"].mean().reindex(range(n_segments)).to_numpy(),
        "homogeneity_original": 1.0 - by_segment["ratio"].mean().reindex(range(n_segments)).to_numpy(),
        "silhouette": silhouettes,
        "stability_jaccard": jaccard,
    })
    if probability is not None:
        table["mean_probability"] = [probability[labels == s].mean() if sizes[s] else np.nan
                                     for s in range(n_segments)]
    return table


def overall_homogeneity(summary: pd.DataFrame, column: str = "homogeneity") -> float:
    """Size-weighted mean of the segments' homogeneity."""
    return float((summary[column] * summary["share"]).sum())
