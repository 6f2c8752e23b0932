"""Stable segment ids, migration, drift and quality gates, on cases whose answer is known."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from segml.config import FEATURES
from segml.identity import (
    assign_identities,
    evaluate_gates,
    migrate,
    population_stability,
    customer_overlap,
    previous_rules,
    renames,
    with_migration,
)

AS_OF = dt.date(2024, 1, 1)
MODEL_FEATURES = ["recency_days", "frequency", "monetary"]


def _segments(medians: list[tuple[float, float, float]], names: list[str]) -> pd.DataFrame:
    rows = []
    for number, ((r, f, m), name) in enumerate(zip(medians, names)):
        row = {"segment": number, "segment_id": f"S{number + 1}", "segment_name": name, "size": 100, "share": 0.0}
        row.update({f"median_{x}": 1.0 for x in FEATURES})
        row.update(median_recency_days=r, median_frequency=f, median_monetary=m)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["share"] = 1 / len(frame)
    return frame


def _log_space(frame: pd.DataFrame) -> np.ndarray:
    return np.log1p(frame[MODEL_FEATURES].to_numpy(dtype=float))


BASE = _segments([(5, 20, 3000), (400, 1, 40), (200, 8, 700)], ["Champions", "Lost", "At risk"])


def test_matched_segments_prefer_the_rule_of_their_published_name():
    first = assign_identities(BASE.assign(rule=["Champions", "Lost", "At risk"]), None, MODEL_FEATURES,
                              _log_space, 1.0, AS_OF)
    again = _segments([(210, 8, 690), (6, 19, 3100), (9000, 1, 1)], ["x", "y", "z"])
    # The far-away third segment matches nothing and has no preference.
    assert previous_rules(again, first.catalogue, MODEL_FEATURES, _log_space, 1.0) == {0: "At risk", 1: "Champions"}


def test_first_run_numbers_segments_from_s1():
    identity = assign_identities(BASE, None, MODEL_FEATURES, _log_space, 1.0, AS_OF)
    assert identity.segments["segment_id"].tolist() == ["S1", "S2", "S3"]
    assert identity.catalogue["status"].tolist() == ["active"] * 3
    assert (identity.matching["outcome"] == "new").all()


def test_reordered_segments_keep_their_ids_and_take_their_current_names():
    first = assign_identities(BASE, None, MODEL_FEATURES, _log_space, 1.0, AS_OF)
    # The next fit numbers the same segments differently and names one of them differently.
    again = _segments([(210, 8, 690), (6, 19, 3100), (390, 1, 42)], ["Hibernating", "Champions", "Lost"])
    second = assign_identities(again, first.catalogue, MODEL_FEATURES, _log_space, 1.0, dt.date(2024, 2, 1))
    assert second.segments["segment_id"].tolist() == ["S3", "S1", "S2"]
    # The name describes the segment as it is now; the change is recorded, not hidden.
    assert second.segments["segment_name"].tolist() == ["Hibernating", "Champions", "Lost"]
    assert second.matching.set_index("segment_id")["outcome"].to_dict() == {
        "S3": "renamed", "S1": "kept", "S2": "kept"}
    assert renames(second) == [{"segment_id": "S3", "from": "At risk", "to": "Hibernating",
                                "why": "its median customer no longer fits the old name"}]
    s3 = second.catalogue.set_index("segment_id").loc["S3"]
    assert (s3["segment_name"], s3["previous_names"]) == ("Hibernating", "At risk until 2024-01-01")
    s1 = second.catalogue.set_index("segment_id").loc["S1"]
    assert (s1["first_as_of"], s1["last_as_of"]) == ("2024-01-01", "2024-02-01")


def test_a_new_qualifier_on_the_same_rule_is_a_rename_with_its_own_reason():
    first = assign_identities(BASE.assign(rule=["Champions", "Lost", "At risk"]), None, MODEL_FEATURES,
                              _log_space, 1.0, AS_OF)
    again = _segments([(5, 20, 3000), (400, 1, 40), (200, 8, 700)],
                      ["Champions, higher spend", "Lost", "At risk"]).assign(rule=["Champions", "Lost", "At risk"])
    second = assign_identities(again, first.catalogue, MODEL_FEATURES, _log_space, 1.0, AS_OF)
    assert renames(second) == [{"segment_id": "S1", "from": "Champions", "to": "Champions, higher spend",
                                "why": "the segments sharing its rule changed, so it is told apart anew"}]


def test_a_new_group_gets_a_new_id_and_a_vanished_one_is_retired_never_reused():
    first = assign_identities(BASE, None, MODEL_FEATURES, _log_space, 1.0, AS_OF)
    # "At risk" is gone; a wholesale group (daily orders, huge spend) appears.
    changed = _segments([(5, 20, 3000), (400, 1, 40), (2, 200, 90000)], ["Champions", "Lost", "Loyal"])
    second = assign_identities(changed, first.catalogue, MODEL_FEATURES, _log_space, 1.0, AS_OF)
    assert second.segments["segment_id"].tolist() == ["S1", "S2", "S4"]
    assert second.segments["segment_name"].tolist() == ["Champions", "Lost", "Loyal"]
    catalogue = second.catalogue.set_index("segment_id")
    assert catalogue.loc["S3", "status"] == "retired" and catalogue.loc["S4", "status"] == "active"
    assert second.matching.set_index("segment_id")["outcome"].to_dict() == {
        "S1": "kept", "S2": "kept", "S4": "new", "S3": "retired"}
    # A later run with another new group does not reuse S3.
    third_segments = _segments([(5, 20, 3000), (400, 1, 40), (2, 200, 90000), (60, 3, 200)],
                               ["Champions", "Lost", "Wholesale", "Occasional"])
    third = assign_identities(third_segments, second.catalogue, MODEL_FEATURES, _log_space, 1.0, AS_OF)
    assert third.segments["segment_id"].tolist() == ["S1", "S2", "S4", "S5"]


def test_migration_counts_known_moves_new_and_lapsed_customers():
    previous = pd.DataFrame({"customer_id": ["a", "b", "c", "d", "e"], "segment_id": ["S1", "S1", "S2", "S2", "S3"]})
    current = pd.DataFrame({"customer_id": ["a", "b", "c", "d", "f"], "segment_id": ["S1", "S2", "S2", "S2", "S1"]})
    migration = migrate(previous, current)
    assert migration.summary == {"customers_in_both": 4.0, "customers_new": 1.0, "customers_lapsed": 1.0,
                                 "customers_changed": 1.0, "changed_share": 0.25}
    assert migration.counts.loc["S1"].to_dict() == {"S1": 1, "S2": 1}
    assert migration.shares.loc["S2", "S2"] == 1.0
    by_customer = migration.customers.set_index("customer_id")
    assert bool(by_customer.loc["b", "segment_changed"]) is True
    assert pd.isna(by_customer.loc["f", "previous_segment_id"]) and pd.isna(by_customer.loc["f", "segment_changed"])


def test_each_assignment_gets_its_own_previous_segment():
    previous = pd.DataFrame({"customer_id": ["c", "a", "x"], "segment_id": ["S2", "S1", "S9"]})
    current = pd.DataFrame({"customer_id": ["a", "b", "c"], "segment_id": ["S1", "S1", "S3"], "monetary": [1.0, 2, 3]})
    table = with_migration(current, migrate(previous, current))
    assert table["customer_id"].tolist() == ["a", "b", "c"] and table["monetary"].tolist() == [1.0, 2, 3]
    assert table["previous_segment_id"].tolist()[::2] == ["S1", "S2"] and pd.isna(table["previous_segment_id"][1])
    assert table["segment_changed"].tolist()[::2] == [False, True] and pd.isna(table["segment_changed"][1])
    first = with_migration(current, migrate(None, current))
    assert first["previous_segment_id"].isna().all() and first["segment_changed"].isna().all()


def test_numeric_customer_ids_line_up_on_first_and_later_runs():
    current = pd.DataFrame({"customer_id": [17850, 12583], "segment_id": ["S1", "S2"]})
    first = with_migration(current, migrate(None, current))
    assert first["customer_id"].tolist() == [17850, 12583] and first["segment_changed"].isna().all()
    later = with_migration(current, migrate(pd.DataFrame({"customer_id": ["12583"], "segment_id": ["S1"]}), current))
    assert later["previous_segment_id"].tolist()[1] == "S1" and bool(later["segment_changed"][1]) is True


def test_a_migration_of_other_customers_is_refused():
    current = pd.DataFrame({"customer_id": ["a", "b"], "segment_id": ["S1", "S2"]})
    migration = migrate(None, current)
    with pytest.raises(ValueError, match="other customers"):
        with_migration(current.iloc[::-1], migration)
    with pytest.raises(ValueError, match="other customers"):
        with_migration(current.iloc[:1], migration)


def test_population_stability_is_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    before = pd.Series(rng.lognormal(3, 1, 5000))
    assert population_stability(before, pd.Series(rng.lognormal(3, 1, 5000))) < 0.02
    assert population_stability(before, pd.Series(rng.lognormal(4, 1, 5000))) > 0.25


@pytest.mark.parametrize("gates, passed", [
    ({"min_homogeneity": 0.5}, {"min_homogeneity": True}),
    ({"min_homogeneity": 0.9, "max_changed_share": 0.1}, {"min_homogeneity": False, "max_changed_share": False}),
    ({"min_stability": None, "max_psi": 0.3}, {"max_psi": True}),
], ids=["pass", "two-fail", "unset-skipped"])
def test_gates_compare_each_threshold_with_its_metric(gates, passed):
    metrics = {"homogeneity": 0.7, "stability_ari": 0.9, "changed_share": 0.2, "psi.monetary": 0.1,
               "psi.frequency": 0.2}
    results = evaluate_gates(gates, metrics)
    assert {r.gate: r.passed for r in results} == passed


def test_a_failed_gate_describes_its_value_and_threshold():
    (result,) = evaluate_gates({"min_homogeneity": 0.9}, {"homogeneity": 0.7})
    assert result.describe() == "min_homogeneity: 0.7 (needs >= 0.9)"
    (result,) = evaluate_gates({"max_psi": 0.1}, {"psi.monetary": 0.05, "psi.frequency": 0.3})
    assert not result.passed and result.describe() == "max_psi: 0.3 on frequency (needs <= 0.1)"


def test_the_psi_gate_looks_only_at_the_model_features_and_names_the_one_that_drifted():
    # tenure_days drifts with every as-of date; the model does not use it.
    metrics = {"psi.recency_days": 0.02, "psi.frequency": 0.04, "psi.monetary": 0.03, "psi.tenure_days": 0.71}
    (healthy,) = evaluate_gates({"max_psi": 0.25}, metrics, MODEL_FEATURES)
    assert healthy.passed and healthy.subject == "frequency"
    (drifted,) = evaluate_gates({"max_psi": 0.25}, {**metrics, "psi.monetary": 0.4}, MODEL_FEATURES)
    assert not drifted.passed and drifted.describe() == "max_psi: 0.4 on monetary (needs <= 0.25)"
    (listed,) = evaluate_gates({"max_psi": 0.25}, metrics, ["tenure_days"])
    assert not listed.passed and listed.subject == "tenure_days"


def test_changed_share_gate_is_skipped_on_a_first_run():
    assert evaluate_gates({"max_changed_share": 0.1}, {"homogeneity": 0.7}) == []


def test_segments_that_keep_their_customers_keep_their_ids_when_their_medians_move():
    # A month later with no new purchases: every recency is 31 days longer, so the medians move far in
    # log space (13 -> 44 days), but every segment has the same customers.
    first = assign_identities(BASE, None, MODEL_FEATURES, _log_space, 1.0, AS_OF)
    aged = _segments([(36, 20, 3000), (431, 1, 40), (231, 8, 700)], ["Champions", "Lost", "At risk"])
    previous = pd.DataFrame({"customer_id": [f"c{i}" for i in range(300)],
                             "segment_id": ["S1"] * 100 + ["S2"] * 100 + ["S3"] * 100})
    overlap = customer_overlap(previous, pd.Index([f"c{i}" for i in range(300)]), np.repeat([0, 1, 2], 100))
    by_distance = assign_identities(aged, first.catalogue, MODEL_FEATURES, _log_space, 0.3, AS_OF)
    assert (by_distance.matching["outcome"] == "new").sum() >= 1  # the medians alone lose a segment
    by_customers = assign_identities(aged, first.catalogue, MODEL_FEATURES, _log_space, 0.3, AS_OF, overlap)
    assert by_customers.segments["segment_id"].tolist() == ["S1", "S2", "S3"]
    assert by_customers.matching["customer_overlap"].tolist() == [1.0, 1.0, 1.0]
