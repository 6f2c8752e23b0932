"""From purchases to named, scored segments: the steps in order.

:func:`prepare_purchases` is the I/O edge (it reads the source into the
configured engine, :mod:`segml.engine`, and applies the data contract);
:func:`segment_customers` is pure: it takes the feature table and returns
every result as frames. Flows and the command line
call these two.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from segml import duckdb_engine, quality
from segml.attributes import Attributes, attach_attributes, with_attributes
from segml.config import SegmlConfig
from segml.engine import open_engine
from segml.models import SegmentModel, fit_segments
from segml.profiles import name_segments, profile_segments
from segml.validation import ContractReport

log = logging.getLogger(__name__)

ASSIGNMENT_COLUMNS = ["customer_id", "segment_id", "segment_name", "segment_probability", "recency_days",
                      "frequency", "monetary", "tenure_days", "avg_order_value", "as_of"]


@dataclass
class Purchases:
    """Purchases read and checked: the features per customer and the contract's accounting."""

    report: ContractReport
    features: pd.DataFrame
    excluded: pd.DataFrame
    #: The rejected lines; or, when they were written to a file as they were read (``rejected_file``),
    #: None: millions of rejected lines are never held in memory.
    rejected: pd.DataFrame | None
    rejected_file: Path | None = None
    #: Customer attributes (``customers``, ``data.attributes``) and their accounting; None without any.
    attributes: Attributes | None = None

    @property
    def rejected_table(self) -> pd.DataFrame | Path:
        """The rejected lines for writing: the file they were streamed to, else the frame."""
        return self.rejected_file if self.rejected_file is not None else self.rejected


@dataclass
class SegmentationResult:
    """Everything one segmentation produces, as frames."""

    as_of: dt.date
    model: SegmentModel
    candidates: pd.DataFrame
    assignments: pd.DataFrame
    segments: pd.DataFrame
    homogeneity: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)


def prepare_purchases(config: SegmlConfig, frame: pd.DataFrame | None = None,
                      as_of: dt.date | None = None, config_name: str = "the configuration",
                      con: duckdb.DuckDBPyConnection | None = None,
                      rejected_file: Path | None = None) -> Purchases:
    """Read the configured source (or ``frame``), apply the data contract and compute features.

    The steps run on the engine ``config.engine`` names (:mod:`segml.engine`),
    or on DuckDB over ``con`` when one is given. ``as_of`` overrides
    ``window.as_of`` from the configuration. With ``rejected_file`` the
    rejected lines are written there as CSV instead of being returned as a
    frame (on DuckDB a batch at a time, so a file of mostly rejected lines
    needs no more memory than a clean one).
    """
    engine = duckdb_engine.open_engine(config, con) if con is not None else open_engine(config)
    with engine:
        engine.read(config.data, config_name, frame)
        report = engine.classify_lines(config.data, config.window.at(as_of))
        features, excluded = engine.features(report.as_of)
        attributes, features, excluded = attach_attributes(getattr(engine, "con", None), config, report.as_of,
                                                           features, excluded)
        log.info("%d customers to segment, %d left out (%s)", len(features), len(excluded),
                 excluded["reason"].value_counts().to_dict())
        rejected = engine.rejected_lines(rejected_file)
    return Purchases(report=report, features=features, excluded=excluded, rejected=rejected,
                     rejected_file=rejected_file, attributes=attributes)


def fit_model(features: pd.DataFrame, config: SegmlConfig) -> tuple[SegmentModel, pd.DataFrame]:
    """Fit every candidate k on ``features`` (sorted by customer id) and choose one."""
    return fit_segments(features.sort_index(), list(config.features), config.transform, config.model)


@dataclass
class Quality:
    """Quality of a fitted segmentation on its customers."""

    space: np.ndarray           # the customers (sorted by id) in the model's space
    labels: np.ndarray
    probability: np.ndarray
    homogeneity: pd.DataFrame
    summary: pd.DataFrame
    metrics: dict[str, float]


def assess_quality(model: SegmentModel, candidates: pd.DataFrame, features: pd.DataFrame,
                   config: SegmlConfig) -> Quality:
    """Homogeneity, explained variance, silhouettes and stability of ``model`` on ``features``."""
    features = features.sort_index()
    Z = model.transform(features)  # once: labels and probabilities both come from it
    labels = model.labels_of(Z)
    proba = model.proba_of(Z)
    k = model.n_segments
    homogeneity = quality.score_homogeneity(features[model.features], Z, labels, k)
    silhouettes = quality.segment_silhouettes(Z, labels, k, config.model.silhouette_sample,
                                              config.model.random_state)
    ari, jaccard = quality.score_stability(model, Z, labels, config.quality.stability_resamples,
                                           config.quality.stability_sample, config.model.random_state)
    is_mixture = config.model.algorithm == "gmm"
    best = proba.max(axis=1)
    summary = quality.summarise_quality(homogeneity, labels, k, silhouettes, jaccard,
                                        best if is_mixture else None)
    chosen = candidates[candidates["chosen"]].iloc[0]
    metrics = {
        "n_segments": float(k),
        "homogeneity": quality.overall_homogeneity(summary),
        "homogeneity_original": quality.overall_homogeneity(summary, "homogeneity_original"),
        "explained_variance": quality.explained_variance(Z, labels),
        "silhouette": float(chosen["silhouette"]),
        "calinski_harabasz": float(chosen["calinski_harabasz"]),
        "davies_bouldin": float(chosen["davies_bouldin"]),
        "stability_ari": ari,
        "segment_share_min": float(summary["share"].min()),
        "customers": float(len(features)),
    }
    if is_mixture:
        metrics["bic"] = float(chosen["bic"])
    return Quality(space=Z, labels=labels, probability=best, homogeneity=homogeneity, summary=summary,
                   metrics=metrics)


def frequency_unit(config: SegmlConfig) -> str:
    """What ``frequency`` counts: orders, or purchase days when the source has no order column."""
    return "order" if config.data.columns.order_id else "purchase day"


def describe_segments(features: pd.DataFrame, scored: Quality, config: SegmlConfig,
                      preferred: dict[int, str] | None = None) -> pd.DataFrame:
    """One row per segment: id, name, description, profile and quality.

    ``preferred`` (segment number -> rule, :func:`segml.identity.previous_rules`) keeps the names
    of segments matched to the published ones while they still hold.
    """
    features = features.sort_index()
    k = len(scored.summary)
    profiles = name_segments(profile_segments(features, scored.labels, k), features, config.naming, preferred,
                             frequency_unit(config))
    segments = profiles.merge(scored.summary.drop(columns=["size", "share"]), on="segment")
    # Ids of a first segmentation; segml.identity carries ids over from the last published run.
    segments.insert(0, "segment_id", [f"S{s + 1}" for s in segments["segment"]])
    segments.insert(1, "segment_name", segments.pop("segment_name"))
    segments.insert(2, "description", segments.pop("description"))
    segments.insert(3, "segment", segments.pop("segment"))
    return segments


def build_assignments(features: pd.DataFrame, scored: Quality, segments: pd.DataFrame,
                      as_of: dt.date, attributes: Attributes | None = None) -> pd.DataFrame:
    """The assignment table: one row per customer with its segment and features, then its
    attributes (one column each) when there are any."""
    features = features.sort_index()
    by_number = segments.set_index("segment")
    assignments = features.reset_index()
    assignments.insert(1, "segment_id", by_number["segment_id"].loc[scored.labels].to_numpy())
    assignments.insert(2, "segment_name", by_number["segment_name"].loc[scored.labels].to_numpy())
    assignments.insert(3, "segment_probability", scored.probability)
    assignments["as_of"] = as_of
    return with_attributes(assignments[ASSIGNMENT_COLUMNS], attributes)


def segment_customers(features: pd.DataFrame, config: SegmlConfig, as_of: dt.date) -> SegmentationResult:
    """Fit, choose k, score quality, profile and name the segments of ``features``.

    ``features`` is the table from :func:`segml.features.compute_features`,
    indexed by ``customer_id``. The result is the same for the same rows in any
    order: customers are sorted by id before fitting.
    """
    model, candidates = fit_model(features, config)
    scored = assess_quality(model, candidates, features, config)
    segments = describe_segments(features, scored, config)
    assignments = build_assignments(features, scored, segments, as_of)
    return SegmentationResult(as_of=as_of, model=model, candidates=candidates, assignments=assignments,
                              segments=segments, homogeneity=scored.homogeneity, metrics=scored.metrics)
