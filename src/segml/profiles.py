"""Segment profiles and human names.

A segment is named from where its median customer stands in the whole
population on four scores between 0 and 1 (mid-rank percentiles):

- ``recency``: 1 - percentile of the median ``recency_days`` (1 = bought most recently);
- ``frequency``, ``monetary``, ``tenure``: percentile of the median
  ``frequency``, ``monetary`` and ``tenure_days``.

The first rule of :data:`DEFAULT_RULES` (or of ``naming.rules`` in the config)
whose ranges hold all four scores gives the name. Segments that land on the
same name are told apart by the score on which they differ most ("Loyal,
higher spend" / "Loyal, lower spend"), so names are unique within a run and
the same scores always give the same names.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from segml.config import FEATURES, NamingConfig, NamingRule

_R = NamingRule

#: The built-in naming table, checked in order; the last rule matches everything.
DEFAULT_RULES: list[NamingRule] = [
    _R(name="Champions", description="buy often and recently, and spend the most",
       recency=(0.6, 1), frequency=(0.6, 1), monetary=(0.6, 1)),
    _R(name="Loyal", description="buy regularly and not long ago", recency=(0.4, 1), frequency=(0.6, 1)),
    _R(name="Big spenders", description="spend a lot on few orders", recency=(0.4, 1), monetary=(0.7, 1)),
    _R(name="New", description="first bought only recently", recency=(0.6, 1), tenure=(0, 0.4)),
    _R(name="Promising", description="bought recently but not often yet", recency=(0.6, 1)),
    _R(name="At risk", description="used to buy often or spend well, but not lately",
       recency=(0, 0.4), frequency=(0.5, 1)),
    _R(name="Can't lose", description="big spenders who have gone quiet", recency=(0, 0.4), monetary=(0.6, 1)),
    _R(name="Lost", description="bought once or twice, long ago", recency=(0, 0.25)),
    _R(name="Hibernating", description="last bought a while ago and rarely", recency=(0, 0.5)),
    _R(name="Occasional", description="buy now and then"),
]

_SCORE_FEATURE = {"recency": "recency_days", "frequency": "frequency", "monetary": "monetary",
                  "tenure": "tenure_days"}
_QUALIFIERS = {
    "recency": ("more recent", "mid recency", "less recent"),
    "frequency": ("more frequent", "mid frequency", "less frequent"),
    "monetary": ("higher spend", "mid spend", "lower spend"),
    "tenure": ("longer-standing", "mid tenure", "newer"),
}


def profile_segments(features: pd.DataFrame, labels: np.ndarray, n_segments: int) -> pd.DataFrame:
    """Per segment: size, share of customers, share of revenue, median and mean of each feature.

    ``features`` holds all five features (original units), one row per
    customer in the order of ``labels``.
    """
    frame = features[list(FEATURES)].assign(segment=labels)
    grouped = frame.groupby("segment")
    sizes = grouped.size().reindex(range(n_segments), fill_value=0)
    revenue = grouped["monetary"].sum().reindex(range(n_segments), fill_value=0.0)
    profile = pd.DataFrame({"segment": range(n_segments), "size": sizes.to_numpy(),
                            "share": (sizes / sizes.sum()).to_numpy(),
                            "revenue_share": (revenue / revenue.sum()).to_numpy()})
    medians = grouped[list(FEATURES)].median().reindex(range(n_segments))
    means = grouped[list(FEATURES)].mean().reindex(range(n_segments))
    for feature in FEATURES:
        profile[f"median_{feature}"] = medians[feature].to_numpy()
        profile[f"mean_{feature}"] = means[feature].to_numpy()
    return profile


def _percentile(population: np.ndarray, value: float) -> float:
    """Mid-rank percentile of ``value`` in ``population``: share below plus half the share equal."""
    return float((population < value).mean() + 0.5 * (population == value).mean())


def score_segments(profile: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """The four naming scores of every segment (see the module docstring)."""
    scores = pd.DataFrame({"segment": profile["segment"]})
    for score, feature in _SCORE_FEATURE.items():
        population = features[feature].to_numpy(dtype=float)
        pct = np.array([_percentile(population, v) for v in profile[f"median_{feature}"]])
        scores[score] = 1.0 - pct if score == "recency" else pct
    return scores


def _matches(rule: NamingRule, row: pd.Series) -> bool:
    return all(getattr(rule, s)[0] <= row[s] <= getattr(rule, s)[1] for s in _SCORE_FEATURE)


def _plural(value: float, one: str, many: str) -> str:
    return f"{value:,.0f} {one if round(value) == 1 else many}"


def describe(rule: NamingRule, row: pd.Series, currency: str) -> str:
    """One line in plain words: the rule's description and the median customer's numbers."""
    facts = (f"typically bought {_plural(row['median_recency_days'], 'day', 'days')} ago, "
             f"{_plural(row['median_frequency'], 'order', 'orders')}, "
             f"{currency}{row['median_monetary']:,.0f} spent")
    head = rule.description[:1].upper() + rule.description[1:] if rule.description else ""
    return f"{head}: {facts}" if head else facts[:1].upper() + facts[1:]


def name_segments(profile: pd.DataFrame, features: pd.DataFrame, config: NamingConfig | None = None) -> pd.DataFrame:
    """Give every segment of ``profile`` a unique name and a one-line description.

    Returns ``profile`` with the naming scores and the columns ``rule``,
    ``segment_name`` and ``description`` added.
    """
    config = config or NamingConfig()
    rules = config.rules or DEFAULT_RULES
    scores = score_segments(profile, features)
    table = profile.merge(scores, on="segment")
    chosen = []
    for _, row in table.iterrows():
        rule = next((r for r in rules if _matches(r, row)), None)
        chosen.append(rule or NamingRule(name="Other"))
    table["rule"] = [r.name for r in chosen]
    table["description"] = [describe(r, row, config.currency) for r, (_, row) in zip(chosen, table.iterrows())]
    table["segment_name"] = table["rule"]
    for name, group in table.groupby("rule"):
        if len(group) == 1:
            continue
        spread = {s: group[s].max() - group[s].min() for s in _SCORE_FEATURE}
        axis = max(spread, key=lambda s: (spread[s], s))
        ranked = group.sort_values([axis, "segment"], ascending=[False, True]).index
        high, mid, low = _QUALIFIERS[axis]
        if len(ranked) == 2:
            words = [high, low]
        elif len(ranked) == 3:
            words = [high, mid, low]
        else:
            words = [f"{i + 1} of {len(ranked)} by {axis}" for i in range(len(ranked))]
        for index, word in zip(ranked, words):
            table.loc[index, "segment_name"] = f"{name}, {word}"
    return table
