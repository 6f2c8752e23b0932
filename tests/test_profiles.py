"""Profiles and names of segments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segml.config import NamingConfig, NamingRule
from segml.profiles import DEFAULT_RULES, _holds, contradictions, name_segments, profile_segments

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
    assert named.loc[0, "description"] == ("Buy more often and more recently than most, and spend the most: "
                                           "typically bought 5 days ago, 20 orders, $5,000 spent")
    assert "1 order," in named.loc[1, "description"]


def test_two_segments_that_fit_one_rule_take_distinct_rules_when_another_holds():
    # Both top segments satisfy Champions; the second also satisfies Loyal, which nobody else holds.
    rows = [(5, 20, 9000.0, 700), (5, 20, 3000.0, 700), (300, 2, 100.0, 400), (400, 1, 30.0, 420)]
    features, labels = _customers(rows, repeat=10)
    named = name_segments(profile_segments(features, labels, 4), features)
    assert named["segment_name"].tolist()[:2] == ["Champions", "Loyal"]
    assert named["segment_name"].is_unique and contradictions(named) == []


def test_segments_share_a_rule_only_when_no_other_holds_and_are_told_apart_in_words():
    # Identical but for spend: three segments whose only rules are Champions, Loyal and Occasional
    # (one each would leave nothing for a fourth), so two share and are told apart by spend.
    rows = [(5, 20, 9000.0, 700), (5, 20, 3000.0, 700), (5, 20, 6000.0, 700), (5, 20, 2000.0, 700),
            (400, 1, 30.0, 420)]
    features, labels = _customers(rows, repeat=10)
    named = name_segments(profile_segments(features, labels, 5), features).set_index("segment")
    assert contradictions(named.reset_index()) == []
    assert named["segment_name"].is_unique
    shared = named[named["rule"].duplicated(keep=False)]
    assert len(shared) >= 2
    assert all(", " in n for n in shared["segment_name"])
    spend = shared.sort_values("median_monetary", ascending=False)["segment_name"].tolist()
    assert spend[0].endswith("spend") and spend[-1].endswith("spend")


def test_a_kept_segment_keeps_its_rule_while_it_holds_and_loses_it_when_it_breaks():
    rows = [(5, 20, 9000.0, 700), (5, 20, 3000.0, 700), (300, 2, 100.0, 400), (400, 1, 30.0, 420)]
    features, labels = _customers(rows, repeat=10)
    profile = profile_segments(features, labels, 4)
    # Segment 1 was "Champions" before and still satisfies it: it keeps the name, segment 0 takes Loyal.
    kept = name_segments(profile, features, preferred={1: "Champions"})
    assert kept["segment_name"].tolist()[:2] == ["Loyal", "Champions"]
    # Segment 3 (bought once, long ago) was "Loyal" before: Loyal no longer holds, so it is renamed.
    renamed = name_segments(profile, features, preferred={3: "Loyal"})
    assert renamed.loc[3, "segment_name"] != "Loyal" and contradictions(renamed) == []


def _skewed_population(n: int, seed: int, few_frequencies: bool) -> pd.DataFrame:
    """Most customers bought once, long ago; a few buy often. Without an order column frequency takes
    only a few values (distinct purchase days)."""
    rng = np.random.default_rng(seed)
    once = rng.random(n) < 0.7
    frequency = np.where(once, 1, rng.integers(2, 4 if few_frequencies else 40, n))
    recency = np.where(once, rng.integers(200, 700, n), rng.integers(1, 300, n))
    monetary = np.round(frequency * rng.lognormal(3.5, 0.8, n), 2)
    tenure = recency + np.where(once, 0, rng.integers(0, 400, n))
    return pd.DataFrame({"recency_days": recency, "frequency": frequency, "monetary": monetary,
                         "tenure_days": tenure, "avg_order_value": monetary / frequency})


@pytest.mark.parametrize("few_frequencies", [False, True], ids=["orders", "no-order-column"])
@pytest.mark.parametrize("k", range(4, 11))
def test_no_name_contradicts_its_median_customer_and_no_rule_is_shared_while_another_is_free(k, few_frequencies):
    from sklearn.cluster import KMeans

    features = _skewed_population(3000, seed=k, few_frequencies=few_frequencies)
    X = np.log1p(features[["recency_days", "frequency", "monetary"]].to_numpy(dtype=float))
    labels = KMeans(n_clusters=k, n_init=2, random_state=0).fit_predict((X - X.mean(0)) / X.std(0))
    named = name_segments(profile_segments(features, labels, k), features)
    assert contradictions(named) == []
    assert named["segment_name"].is_unique
    used = set(named["rule"])
    for _, row in named[named["rule"].duplicated(keep=False)].iterrows():
        free = [r.name for r in DEFAULT_RULES if r.name not in used and _holds(r, row)]
        assert free == [], f"{row['segment_name']} shares its rule while {free} hold and are free"


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


def test_kept_segments_that_shared_a_rule_keep_it_while_it_holds():
    # Two long-lapsed segments among six recent ones, both "Lost" before.
    rows = [(400, 1, 40.0, 420), (390, 1, 30.0, 410)] + [(5 + i, 20, 5000.0, 700) for i in range(6)]
    features, labels = _customers(rows, repeat=10)
    profile = profile_segments(features, labels, 8)
    named = name_segments(profile, features, preferred={0: "Lost", 1: "Lost"})
    assert named["rule"].tolist()[:2] == ["Lost", "Lost"] and named["segment_name"].is_unique
    assert contradictions(named) == []


def test_identical_segments_are_numbered_not_told_apart_by_invented_differences():
    features, labels = _customers([(100, 2, 200.0, 300)] * 3, repeat=5)
    named = name_segments(profile_segments(features, labels, 3), features, preferred={0: "Occasional",
                                                                                    1: "Occasional",
                                                                                    2: "Occasional"})
    assert named["segment_name"].tolist() == ["Occasional (1)", "Occasional (2)", "Occasional (3)"]


def test_without_an_order_column_frequency_is_told_in_purchase_days(caplog):
    features, labels = _customers([(5, 20, 5000.0, 700), (400, 1, 30.0, 420)], repeat=3)
    named = name_segments(profile_segments(features, labels, 2), features, unit="purchase day")
    assert "20 purchase days," in named.loc[0, "description"] and "1 purchase day," in named.loc[1, "description"]


def test_rules_without_a_catch_all_say_so_and_never_collide_with_a_rule_called_other(caplog):
    features, labels = _customers([(5, 20, 5000.0, 700), (400, 1, 30.0, 420)], repeat=3)
    rules = [NamingRule(name="Other", monetary=(0.7, 1))]
    named = name_segments(profile_segments(features, labels, 2), features, NamingConfig(rules=rules))
    assert named["segment_name"].tolist() == ["Other", "Unmatched"]
    assert "fit no rule of naming.rules" in caplog.text


def test_the_most_champion_like_segment_is_called_champions():
    # Both top segments satisfy Champions; the one further inside its bounds takes it, the other the
    # next rule it satisfies.
    rows = [(60, 6, 300.0, 500), (5, 30, 20000.0, 700), (300, 1, 20.0, 300), (400, 1, 15.0, 420),
            (200, 2, 40.0, 300)]
    features, labels = _customers(rows, repeat=10)
    named = name_segments(profile_segments(features, labels, 5), features)
    assert named.loc[1, "segment_name"] == "Champions" and named.loc[0, "rule"] != "Champions"
    assert contradictions(named) == []


def test_segments_alike_on_every_score_take_the_same_rule():
    features, labels = _customers([(100, 2, 200.0, 300)] * 3 + [(5, 20, 5000.0, 700)], repeat=5)
    named = name_segments(profile_segments(features, labels, 4), features)
    assert named["rule"].iloc[:3].nunique() == 1
    assert named["segment_name"].iloc[:3].str.endswith(("(1)", "(2)", "(3)")).all()
