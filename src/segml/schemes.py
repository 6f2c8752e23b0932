"""Comparing segmentation schemes: a rule-based RFM baseline, one common space, forward validity.

Everything here takes frames and returns frames.

**RFM baseline.** Every customer gets three quintile scores from 1 to 5:
``R`` (5 = bought most recently), ``F`` and ``M`` (5 = most orders, most
spend). Quintiles are cut on percentile ranks, tied values taking their
average rank, so ties share a score and each score holds a fifth of the
customers as nearly as ties allow. Two baselines
follow from them:

- ``rfm_score``: the RFM score ``R + F + M`` (3 to 15) cut into ``k``
  groups of as equal size as its ties allow (a group never splits a score);
- ``rfm_grid``: the classic named grid on ``R`` and ``FM = round((F + M) / 2)``:
  Champions (R 4-5, FM 4-5), Loyal (R 3-5, FM 3-5), Recent (R 4-5, FM 1-2),
  Needs attention (R 3, FM 1-2), At risk (R 1-2, FM 3-5), Lapsed (R 1-2, FM 1-2).

**Common space.** Schemes with different features and transforms are scored
in one space, the baseline's: ``log(1 + x)`` of ``recency_days``,
``frequency`` and ``monetary``, each standardised over the customers.
Homogeneity there is the size-weighted mean over segments of ``1 - std
within / std overall`` (see :mod:`segml.quality`), so every scheme answers
the same question about the same customers.

**Forward validity.** Given what each customer did in the ``horizon`` days
after the as-of date (``bought``: any purchase; ``spend``: net spend, 0
without purchases), per segment the share who bought again and their mean
spend, and overall:

- ``r2_spend``: the share of the variance of next-horizon spend between
  segments (``1 - within / total`` sum of squares);
- ``auc_repurchase``: the AUC of ranking customers by their segment's
  repurchase rate for "bought again" (the Mann-Whitney statistic with ties
  counted half: 0.5 is no better than chance, 1 a perfect separation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RFM = ["recency_days", "frequency", "monetary"]

#: The named RFM grid: (name, R range, FM range), checked in this order.
RFM_GRID = [
    ("Champions", (4, 5), (4, 5)),
    ("Loyal", (3, 5), (3, 5)),
    ("Recent", (4, 5), (1, 2)),
    ("Needs attention", (3, 3), (1, 2)),
    ("At risk", (1, 2), (3, 5)),
    ("Lapsed", (1, 2), (1, 2)),
]


def quintile(values: pd.Series) -> pd.Series:
    """Scores 1 to 5 by quintile of ``values`` (5 = highest); tied values share the score of their
    average rank."""
    ranks = values.rank(method="average", pct=True)
    return np.ceil(ranks * 5).clip(1, 5).astype(int)


def rfm_scores(features: pd.DataFrame) -> pd.DataFrame:
    """``R``, ``F`` and ``M`` quintile scores per customer (``R`` 5 = most recent)."""
    return pd.DataFrame({"R": quintile(-features["recency_days"]), "F": quintile(features["frequency"]),
                         "M": quintile(features["monetary"])}, index=features.index)


def rfm_score_groups(features: pd.DataFrame, k: int) -> np.ndarray:
    """The RFM score ``R + F + M`` cut into at most ``k`` groups of near-equal size, 0 = lowest score;
    customers with one score always share a group."""
    total = rfm_scores(features).sum(axis=1).to_numpy()
    edges = np.unique(np.quantile(total, np.linspace(0, 1, k + 1)[1:-1]))
    groups = np.searchsorted(edges, total, side="right")
    return pd.factorize(groups, sort=True)[0]


def rfm_grid(features: pd.DataFrame) -> pd.Series:
    """The classic named RFM grid (:data:`RFM_GRID`) per customer."""
    scores = rfm_scores(features)
    fm = np.floor((scores["F"] + scores["M"]) / 2 + 0.5).astype(int)
    names = pd.Series("Lapsed", index=features.index, dtype=object)
    assigned = pd.Series(False, index=features.index)
    for name, (r_low, r_high), (fm_low, fm_high) in RFM_GRID:
        hit = ~assigned & scores["R"].between(r_low, r_high) & fm.between(fm_low, fm_high)
        names[hit] = name
        assigned |= hit
    return names


def common_space(features: pd.DataFrame) -> np.ndarray:
    """The customers in the baseline's space: ``log(1 + x)`` of the RFM features, standardised."""
    logged = np.log1p(features[RFM].to_numpy(dtype=float).clip(min=0))
    std = logged.std(axis=0)
    std[std == 0] = 1.0
    return (logged - logged.mean(axis=0)) / std


def _homogeneity(ratios: pd.DataFrame, column: str, sizes: np.ndarray) -> float:
    """Size-weighted mean over segments of ``1 - mean ratio``, from a :func:`segml.quality.score_homogeneity`
    table."""
    per_segment = 1.0 - ratios.groupby("segment")[column].mean().reindex(range(len(sizes))).to_numpy()
    return float(np.nansum(sizes * per_segment))


def homogeneity_of(Z: np.ndarray, labels: np.ndarray) -> float:
    """Size-weighted mean over segments of ``1 - mean over columns of std within / std overall``."""
    from segml import quality

    k = int(labels.max()) + 1
    ratios = quality.score_homogeneity(pd.DataFrame(Z), Z, labels, k)
    return _homogeneity(ratios, "ratio_model", np.bincount(labels, minlength=k) / len(labels))


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count half); NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def forward_validity(segments: pd.Series, future: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """How well segments foretell the next horizon.

    ``segments`` maps customer id to segment; ``future`` (indexed by customer
    id) has ``bought`` (bool) and ``spend`` for customers who bought in the
    horizon; customers missing from it did not buy (spend 0). Returns the
    per-segment table (``segment``, ``customers``, ``repurchase_rate``,
    ``mean_spend``) and the overall ``forward.*`` metrics.
    """
    frame = pd.DataFrame({"segment": segments})
    joined = frame.join(future[["bought", "spend"]], how="left")
    joined["bought"] = joined["bought"].astype("boolean").fillna(False).astype(bool)
    joined["spend"] = joined["spend"].fillna(0.0).astype(float)
    grouped = joined.groupby("segment", sort=True)
    table = pd.DataFrame({"customers": grouped.size(), "repurchase_rate": grouped["bought"].mean(),
                          "mean_spend": grouped["spend"].mean()}).reset_index()
    spend = joined["spend"].to_numpy()
    total = float(((spend - spend.mean()) ** 2).sum())
    means = grouped["spend"].transform("mean").to_numpy()
    within = float(((spend - means) ** 2).sum())
    rate = grouped["bought"].transform("mean").to_numpy()
    metrics = {
        "forward.repurchase_rate": float(joined["bought"].mean()),
        "forward.r2_spend": 1.0 - within / total if total > 0 else 0.0,
        "forward.auc_repurchase": auc(rate, joined["bought"].to_numpy()),
    }
    return table, metrics


#: The comparison table's score columns, all higher-is-better, in order: first those measured alike for
#: every scheme (original units, the common space, the customers' future), then those in each scheme's
#: own space, which describe the scheme but do not rank schemes with other features or transforms.
SCORES = ["homogeneity_common", "explained_variance_common", "silhouette_common", "homogeneity_original",
          "stability_ari", "segment_share_min", "forward.r2_spend", "forward.auc_repurchase",
          "homogeneity", "explained_variance", "silhouette"]
#: The columns whose best value is marked: the ones comparable across schemes.
COMPARABLE = SCORES[:8]


def score_labels(features: pd.DataFrame, labels: np.ndarray, future: pd.DataFrame | None,
                 sample: int = 10_000, random_state: int = 0) -> dict[str, float]:
    """The scores every scheme and baseline share, from its labels alone: homogeneity in original units
    and in the common space, the share of the common space's variance explained, the silhouette there
    (on a fixed-seed sample), the smallest segment's share and, with ``future``, forward validity."""
    from segml import quality

    Z = common_space(features)
    k = int(labels.max()) + 1
    X = features[RFM]
    ratios = quality.score_homogeneity(X, Z, labels, k)
    sizes = np.bincount(labels, minlength=k) / len(labels)
    silhouettes = quality.segment_silhouettes(Z, labels, k, sample, random_state)
    scores = {
        "k": float(len(np.unique(labels))),
        "homogeneity_original": _homogeneity(ratios, "ratio", sizes),
        "homogeneity_common": _homogeneity(ratios, "ratio_model", sizes),  # Z is the common space
        "explained_variance_common": quality.explained_variance(Z, labels),
        "silhouette_common": float(np.nansum(sizes * np.nan_to_num(silhouettes))),
        "segment_share_min": float(sizes[sizes > 0].min()),
    }
    if future is not None:
        scores.update(forward_validity(pd.Series(labels, index=features.index), future)[1])
    return scores


def baselines(features: pd.DataFrame, k: int, future: pd.DataFrame | None) -> dict[str, tuple[np.ndarray, dict]]:
    """The two rule-based references, scored like the schemes: (labels, scores) by name. Their own space
    is the common space, so their model-space scores are the common ones."""
    out = {}
    grid = pd.factorize(rfm_grid(features), sort=True)[0]
    for name, labels in ((f"RFM score, {k} groups", rfm_score_groups(features, k)), ("RFM grid", grid)):
        scores = score_labels(features, labels, future)
        scores.update(homogeneity=scores["homogeneity_common"], explained_variance=scores["explained_variance_common"],
                      silhouette=scores["silhouette_common"], stability_ari=float("nan"))
        out[name] = (labels, scores)
    return out


def comparison_table(rows: dict[str, dict[str, float]], kinds: dict[str, str]) -> pd.DataFrame:
    """One row per scheme (``kind``: ``scheme`` or ``baseline``) with its scores, and ``best_<score>``
    marking the best scheme or baseline of each comparable score column (:data:`COMPARABLE`; ties all
    marked)."""
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "scheme"
    table.insert(0, "kind", pd.Series(kinds))
    columns = [c for c in COMPARABLE if c in table]
    for column in columns:
        best = table[column].max()
        table[f"best_{column}"] = table[column].eq(best) & table[column].notna()
    return table.reset_index()
