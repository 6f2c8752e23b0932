"""Stable segment identity across reruns, migration between runs, drift and quality gates.

Clustering libraries number their clusters afresh on every fit. A published
segmentation keeps a *catalogue*: every segment id ever issued (``S1``,
``S2``...), its name, its median customer in original feature units, its size
and whether it is retired. A new run matches its segments to the active
segments of the last published catalogue by optimal one-to-one matching
(Hungarian algorithm) on the distance between median customers in the new
model's space. A matched segment keeps its id; a segment with no match within
``identity.max_distance`` gets a new id, never one used before; an old segment
left without a match is retired.

The id is the stable key; the name is a label of current behaviour. A kept
segment keeps its name while its median customer still satisfies the rule
that gave it (:func:`segml.profiles.name_segments` with ``preferred`` from
:func:`previous_rules`); when it no longer does, it is renamed, and the
rename is recorded (outcome ``renamed`` in the matching, the old name with
its last date in the catalogue's ``previous_names``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from segml.config import FEATURES
from segml.contract import CRM_COLUMNS

CATALOGUE_COLUMNS = ["segment_id", "segment_name", "rule", "status", "first_as_of", "last_as_of", "size", "share",
                     *[f"median_{f}" for f in FEATURES], "previous_names"]


def segment_number(segment_id: str) -> int:
    match = re.fullmatch(r"S(\d+)", str(segment_id))
    return int(match.group(1)) if match else 0


@dataclass
class Identity:
    """The outcome of matching one run's segments to the published catalogue."""

    segments: pd.DataFrame      # the run's segments with their stable segment_id and segment_name
    catalogue: pd.DataFrame     # the catalogue to publish if this run is promoted
    matching: pd.DataFrame      # one row per current and per previous active segment: pair, distance, outcome


def customer_overlap(previous: pd.DataFrame, customers: pd.Index, labels: np.ndarray) -> pd.DataFrame:
    """Customers in both runs, by previous ``segment_id`` (rows) and current segment number (columns).

    ``previous`` is the published assignment table (``customer_id``,
    ``segment_id``); ``customers`` and ``labels`` are this run's customers and
    their segment numbers.
    """
    before = pd.Series(previous["segment_id"].to_numpy(), index=previous["customer_id"].astype(str).to_numpy())
    now = pd.Series(labels, index=customers.astype(str))
    both = now.index.intersection(before.index)
    return pd.crosstab(before.loc[both].to_numpy(), now.loc[both].to_numpy()).rename_axis(
        index="previous_segment_id", columns="segment")


def match_segments(current: pd.DataFrame, previous: pd.DataFrame, features: list[str],
                   to_space: Callable[[pd.DataFrame], np.ndarray], max_distance: float,
                   overlap: pd.DataFrame | None = None, min_overlap: float = 0.5) -> pd.DataFrame:
    """Optimal one-to-one matching of current to previous segments.

    ``current`` and ``previous`` hold ``median_<feature>`` columns (original
    units); ``to_space`` maps a frame of features to the model's space. With
    ``overlap`` (:func:`customer_overlap`) segments are matched first by the
    customers they share (Jaccard index among customers in both runs), the
    distance between median customers breaking ties; a pair is kept when it
    shares at least ``min_overlap`` of its customers or its medians are
    within ``max_distance``. So a segment whose customers simply aged by a
    month (every recency a month longer) keeps its id. Without ``overlap``,
    the distance alone decides. Returns one row per current segment
    (``index`` position in ``current``) with the matched previous position
    (or -1), the distance and the overlap.
    """
    def medians(frame: pd.DataFrame) -> pd.DataFrame:
        # A feature the other run did not have (an attribute added to features) has no median there.
        return frame.reindex(columns=[f"median_{f}" for f in features]).set_axis(features, axis=1).reset_index(drop=True)

    a = to_space(medians(current))
    out = pd.DataFrame({"current": np.arange(len(current)), "previous": -1, "distance": np.nan,
                        "overlap": np.nan})
    if len(previous) == 0:
        return out
    b = to_space(medians(previous))
    # Without a median to compare (NaN), a pair is never close: only shared customers can match it.
    distance = np.nan_to_num(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)), nan=1e6)
    keep = distance <= max_distance
    cost = distance
    jaccard = np.full(distance.shape, np.nan)
    if overlap is not None and len(overlap):
        shared = overlap.reindex(index=previous["segment_id"].to_numpy(), columns=current["segment"].to_numpy(),
                                 fill_value=0).to_numpy(dtype=float).T      # current x previous
        union = shared.sum(axis=1, keepdims=True) + shared.sum(axis=0, keepdims=True) - shared
        jaccard = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
        keep = keep | (jaccard >= min_overlap)
        cost = (1.0 - jaccard) + 1e-3 * distance
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows, cols):
        out.loc[r, "distance"] = distance[r, c]
        out.loc[r, "overlap"] = jaccard[r, c]
        if keep[r, c]:
            out.loc[r, "previous"] = c
    return out


def _active(previous_catalogue: pd.DataFrame | None) -> pd.DataFrame:
    if previous_catalogue is None:
        return pd.DataFrame(columns=CATALOGUE_COLUMNS)
    return previous_catalogue[previous_catalogue["status"] == "active"].reset_index(drop=True)


def _rule_of(row: pd.Series) -> str:
    """The naming rule behind a catalogue row (catalogues before the ``rule`` column: the name up to
    its qualifier)."""
    rule = row.get("rule")
    if isinstance(rule, str) and rule:
        return rule
    return str(row["segment_name"]).split(", ")[0].split(" (S")[0]


def previous_rules(segments: pd.DataFrame, previous_catalogue: pd.DataFrame | None, features: list[str],
                   to_space: Callable[[pd.DataFrame], np.ndarray], max_distance: float,
                   overlap: pd.DataFrame | None = None, min_overlap: float = 0.5) -> dict[int, str]:
    """The rule each of the run's segments was named by, for segments that match a published one
    (segment number -> rule); the naming keeps it while it still holds."""
    active = _active(previous_catalogue)
    pairs = match_segments(segments, active, features, to_space, max_distance, overlap, min_overlap)
    return {int(segments["segment"].iloc[r.current]): _rule_of(active.iloc[r.previous])
            for r in pairs.itertuples() if r.previous >= 0}


def assign_identities(segments: pd.DataFrame, previous_catalogue: pd.DataFrame | None, features: list[str],
                      to_space: Callable[[pd.DataFrame], np.ndarray], max_distance: float,
                      as_of: dt.date, overlap: pd.DataFrame | None = None, min_overlap: float = 0.5) -> Identity:
    """Give the run's segments stable ids against the previous catalogue.

    ``segments`` is the run's segment table (``segment`` numbers, current
    ``segment_name`` and ``rule``, medians). Without a previous catalogue, ids
    are ``S1``, ``S2``... in segment order. A kept segment whose current name
    differs from its published one is ``renamed``.
    """
    segments = segments.copy()
    active = _active(previous_catalogue)
    issued = [segment_number(s) for s in previous_catalogue["segment_id"]] if previous_catalogue is not None else []
    next_number = max(issued, default=0) + 1

    pairs = match_segments(segments, active, features, to_space, max_distance, overlap, min_overlap)
    ids, outcomes, before, why = [], [], [], []
    for pair in pairs.itertuples():
        if pair.previous >= 0:
            old = active.iloc[pair.previous]
            ids.append(old["segment_id"])
            before.append(old["segment_name"])
            renamed = old["segment_name"] != segments["segment_name"].iloc[pair.current]
            outcomes.append("renamed" if renamed else "kept")
            same_rule = "rule" in segments and _rule_of(old) == segments["rule"].iloc[pair.current]
            why.append(None if not renamed else
                       "the segments sharing its rule changed, so it is told apart anew" if same_rule else
                       "its median customer no longer fits the old name")
        else:
            ids.append(f"S{next_number}")
            next_number += 1
            before.append(None)
            outcomes.append("new")
            why.append(None)
    segments["segment_id"] = ids

    matched_previous = {int(p) for p in pairs["previous"] if p >= 0}
    retired = active.drop(index=list(matched_previous))
    matching = pd.DataFrame({
        "segment_id": ids,
        "segment_name": segments["segment_name"].to_numpy(),
        "outcome": outcomes,
        "previous_segment_id": [active.iloc[p]["segment_id"] if p >= 0 else None for p in pairs["previous"]],
        "previous_segment_name": before,
        "rename_reason": why,
        "distance": pairs["distance"],
        "customer_overlap": pairs["overlap"],
    })
    if len(retired):
        matching = pd.concat([matching, pd.DataFrame({
            "segment_id": retired["segment_id"], "segment_name": retired["segment_name"], "outcome": "retired",
            "previous_segment_id": retired["segment_id"], "previous_segment_name": retired["segment_name"],
            "rename_reason": None, "distance": np.nan, "customer_overlap": np.nan})], ignore_index=True)

    catalogue = _next_catalogue(segments, previous_catalogue, retired["segment_id"].tolist(), as_of)
    return Identity(segments=segments, catalogue=catalogue, matching=matching)


def renames(identity: Identity) -> list[dict[str, str]]:
    """The kept segments whose name changed in this run: ``segment_id``, ``from``, ``to`` and ``why``."""
    renamed = identity.matching[identity.matching["outcome"] == "renamed"]
    return [{"segment_id": r.segment_id, "from": r.previous_segment_name, "to": r.segment_name,
             "why": r.rename_reason} for r in renamed.itertuples()]


def _next_catalogue(segments: pd.DataFrame, previous: pd.DataFrame | None, retired_ids: list[str],
                    as_of: dt.date) -> pd.DataFrame:
    if previous is not None:
        previous = previous.copy()
        for column in ("rule", "previous_names"):
            if column not in previous:
                previous[column] = None
        previous["rule"] = [_rule_of(r) for _, r in previous.iterrows()]
    before = previous.set_index("segment_id") if previous is not None else pd.DataFrame()
    # Medians of numeric attributes the model uses come after the behavioural ones.
    attribute_medians = [c for c in segments.columns if c.startswith("median_") and c[7:] not in FEATURES]
    columns = [*CATALOGUE_COLUMNS[:-1], *attribute_medians, CATALOGUE_COLUMNS[-1]]
    history = []
    for sid, name in zip(segments["segment_id"], segments["segment_name"]):
        old = before.loc[sid] if sid in before.index else None
        names = old["previous_names"] if old is not None and isinstance(old["previous_names"], str) else ""
        if old is not None and old["segment_name"] != name:
            entry = f"{old['segment_name']} until {old['last_as_of']}"
            names = f"{names}; {entry}" if names else entry
        history.append(names or None)
    current = pd.DataFrame({
        "segment_id": segments["segment_id"],
        "segment_name": segments["segment_name"],
        "rule": segments["rule"] if "rule" in segments else segments["segment_name"],
        "status": "active",
        "first_as_of": [before.loc[s, "first_as_of"] if s in before.index else as_of.isoformat()
                        for s in segments["segment_id"]],
        "last_as_of": as_of.isoformat(),
        "size": segments["size"],
        "share": segments["share"],
        **{f"median_{f}": segments[f"median_{f}"] for f in FEATURES},
        **{m: segments[m] for m in attribute_medians},
        "previous_names": history,
    })
    if previous is None:
        return current[columns]
    older = previous[~previous["segment_id"].isin(current["segment_id"])].copy()
    older.loc[older["segment_id"].isin(retired_ids), "status"] = "retired"
    catalogue = pd.concat([current, older.reindex(columns=columns)], ignore_index=True)
    catalogue["_n"] = catalogue["segment_id"].map(segment_number)
    return catalogue.sort_values("_n").drop(columns="_n").reset_index(drop=True)[columns]


@dataclass
class Migration:
    """Who moved where between the previous published run and this one."""

    customers: pd.DataFrame   # customer_id, previous_segment_id (None for new customers), segment_changed,
                              # in the rows' order of the current assignments
    counts: pd.DataFrame      # previous segment x current segment, customers in both runs
    shares: pd.DataFrame      # the same as row shares
    summary: dict[str, float]


def migrate(previous: pd.DataFrame | None, current: pd.DataFrame) -> Migration:
    """Compare two assignment tables (``customer_id``, ``segment_id``) customer by customer.

    ``customers`` lists the customers of ``current`` in its row order, ids as text (as the
    previous run's published table has them).
    """
    if previous is None:
        # Typed even when empty, so a first run's files have the columns' types of every later run.
        n = len(current)
        customers = pd.DataFrame({"customer_id": current["customer_id"].astype(str).to_numpy(),
                                  "previous_segment_id": pd.array([None] * n, dtype=object),
                                  "segment_changed": pd.array([pd.NA] * n, dtype="boolean")})
        empty = pd.DataFrame()
        return Migration(customers, empty, empty, {"customers_new": float(len(current))})
    before = previous[["customer_id", "segment_id"]].rename(columns={"segment_id": "previous_segment_id"})
    before = before.assign(customer_id=before["customer_id"].astype(str))
    joined = current[["customer_id", "segment_id"]].assign(customer_id=current["customer_id"].astype(str)).merge(
        before, on="customer_id", how="left")
    known = joined["previous_segment_id"].notna()
    changed = pd.Series(pd.NA, index=joined.index, dtype="boolean")
    changed[known] = joined.loc[known, "segment_id"] != joined.loc[known, "previous_segment_id"]
    customers = pd.DataFrame({"customer_id": joined["customer_id"],
                              "previous_segment_id": joined["previous_segment_id"].where(known, None),
                              "segment_changed": changed})
    both = joined[known]
    counts = pd.crosstab(both["previous_segment_id"], both["segment_id"]).rename_axis(
        index="previous_segment_id", columns="segment_id")
    shares = counts.div(counts.sum(axis=1), axis=0)
    lapsed = (~before["customer_id"].isin(joined["customer_id"])).sum()
    summary = {
        "customers_in_both": float(known.sum()),
        "customers_new": float((~known).sum()),
        "customers_lapsed": float(lapsed),
        "customers_changed": float(changed[known].sum()),
        "changed_share": float(changed[known].mean()) if known.any() else 0.0,
    }
    return Migration(customers, counts, shares, summary)


def with_migration(assignments: pd.DataFrame, migration: Migration) -> pd.DataFrame:
    """``assignments`` with each customer's ``previous_segment_id`` and ``segment_changed`` from ``migration``
    (the :func:`migrate` of these assignments).

    The rows line up, so the columns are copied by position: joining a
    million customer ids took 1.8 s of a flow run.
    """
    customers = migration.customers
    same = (len(customers) == len(assignments)
            and (customers["customer_id"].to_numpy(dtype=object)
                 == assignments["customer_id"].astype(str).to_numpy(dtype=object)).all())
    if not same:
        raise ValueError("the migration lists other customers, or another order, than the assignments")
    return assignments.assign(previous_segment_id=customers["previous_segment_id"].array,
                              segment_changed=customers["segment_changed"].array)


def crm_table(assignments: pd.DataFrame, migration: Migration, run_id: str, model_version: int) -> pd.DataFrame:
    """The CRM's assignment table (:data:`segml.contract.CRM_COLUMNS`): ``assignments`` with the
    migration columns, the MLflow run id and the model version; customer attribute columns follow."""
    table = with_migration(assignments, migration)
    table["run_id"] = run_id
    table["model_version"] = model_version
    return table[CRM_COLUMNS + [c for c in assignments.columns if c not in CRM_COLUMNS]]


def population_stability(previous: pd.Series, current: pd.Series, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``previous``, on the previous deciles.

    ``PSI = sum over bins of (c - p) * ln(c / p)`` with the bin shares ``p``
    (previous) and ``c`` (current), floored at 1e-4. Below 0.1 is usually read
    as stable, above 0.25 as a shift.
    """
    edges = np.unique(np.quantile(previous.to_numpy(dtype=float), np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, previous.to_numpy(dtype=float), side="right"),
                    minlength=len(edges) + 1) / len(previous)
    c = np.bincount(np.searchsorted(edges, current.to_numpy(dtype=float), side="right"),
                    minlength=len(edges) + 1) / len(current)
    p, c = np.maximum(p, 1e-4), np.maximum(c, 1e-4)
    return float(((c - p) * np.log(c / p)).sum())


def drift(previous: pd.DataFrame | None, current: pd.DataFrame, previous_catalogue: pd.DataFrame | None,
          segments: pd.DataFrame) -> dict[str, float]:
    """``psi.<feature>`` per feature and ``share_change.<segment_id>`` per segment, against the previous run."""
    if previous is None:
        return {}
    out = {f"psi.{f}": population_stability(previous[f], current[f]) for f in FEATURES if f in previous}
    before = (previous_catalogue.set_index("segment_id")["share"]
              if previous_catalogue is not None else pd.Series(dtype=float))
    for row in segments.itertuples():
        out[f"share_change.{row.segment_id}"] = float(row.share - before.get(row.segment_id, 0.0))
    return out


@dataclass(frozen=True)
class GateResult:
    gate: str
    threshold: float
    value: float
    passed: bool
    #: What the value was measured on, when the gate picks one of several (``max_psi``: the feature).
    subject: str = ""

    def describe(self) -> str:
        relation = ">=" if self.gate.startswith("min_") else "<="
        on = f" on {self.subject}" if self.subject else ""
        return f"{self.gate}: {self.value:.4g}{on} (needs {relation} {self.threshold:g})"


def evaluate_gates(gates: dict[str, float | None], metrics: dict[str, float],
                   psi_features: list[str] | None = None) -> list[GateResult]:
    """Check every configured gate against the run's metrics.

    ``min_homogeneity`` → ``homogeneity``, ``min_stability`` → ``stability_ari``,
    ``min_segment_share`` → ``segment_share_min``, ``max_changed_share`` →
    ``changed_share`` (skipped on a first run), ``max_psi`` → the largest
    ``psi.<feature>`` over ``psi_features`` (the model's features: a feature
    the model does not use, such as ``tenure_days``, drifts with every as-of
    date without moving a segment), named in the result.
    """
    psi = {k.removeprefix("psi."): v for k, v in metrics.items() if k.startswith("psi.")
           and (psi_features is None or k.removeprefix("psi.") in psi_features) and np.isfinite(v)}
    worst = max(psi, key=lambda f: (psi[f], f)) if psi else None
    sources = {
        "min_homogeneity": (metrics.get("homogeneity"), ""),
        "min_stability": (metrics.get("stability_ari"), ""),
        "min_segment_share": (metrics.get("segment_share_min"), ""),
        "max_changed_share": (metrics.get("changed_share"), ""),
        "max_psi": (psi[worst], worst) if worst else (None, ""),
    }
    results = []
    for gate, threshold in gates.items():
        value, subject = sources.get(gate, (None, ""))
        if threshold is None or value is None or not np.isfinite(value):
            continue
        passed = value >= threshold if gate.startswith("min_") else value <= threshold
        results.append(GateResult(gate, float(threshold), float(value), bool(passed), subject or ""))
    return results
