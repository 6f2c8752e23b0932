"""Segment profiles and human names.

A segment is named from where its median customer stands in the whole
population on four scores between 0 and 1 (mid-rank percentiles):

- ``recency``: 1 - percentile of the median ``recency_days`` (1 = bought most recently);
- ``frequency``, ``monetary``, ``tenure``: percentile of the median
  ``frequency``, ``monetary`` and ``tenure_days``.

A segment may take a rule of :data:`DEFAULT_RULES` (or of ``naming.rules``)
only when its four scores lie in that rule's ranges, so a name never
contradicts its median customer. Names are given to the segments as a whole
(:func:`assign_rules`): a segment keeps its previous rule while it still
holds; then each rule, in table order, goes to the segment that satisfies it
most clearly, so names are distinct while rules that hold are free. Only
when there are more segments than rules they satisfy do segments share a
rule; they are then told apart in plain words on the score that separates
them ("Champions, higher spend" / "Champions, lower spend"). The same scores
always give the same names.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from segml.config import FEATURES, NamingConfig, NamingRule

log = logging.getLogger(__name__)

_R = NamingRule

#: The built-in naming table, most specific first; the last rule matches everything. Every
#: description is relative to the whole customer base, as the scores are, so it holds whenever the
#: rule's ranges do.
DEFAULT_RULES: list[NamingRule] = [
    _R(name="Champions", description="buy more often and more recently than most, and spend the most",
       action="reward them: early access, loyalty perks and referral asks; no discounts needed",
       recency=(0.6, 1), frequency=(0.6, 1), monetary=(0.6, 1)),
    _R(name="Loyal", description="buy more often than most, and not long ago",
       action="keep them close: loyalty programme, cross-sell and upsell to higher-value ranges",
       recency=(0.4, 1), frequency=(0.6, 1)),
    _R(name="Big spenders", description="spend more than most, on fewer orders",
       action="give them reasons to come back more often: curated recommendations, premium service",
       recency=(0.4, 1), frequency=(0, 0.6), monetary=(0.7, 1)),
    _R(name="New", description="first bought only recently",
       action="welcome series: help towards a second purchase soon, introduce the range",
       recency=(0.6, 1), tenure=(0, 0.4)),
    _R(name="Promising", description="bought more recently than most, but not often yet",
       action="build the habit: offers on what they bought, a nudge towards the next order",
       recency=(0.6, 1), frequency=(0, 0.6)),
    _R(name="At risk", description="used to buy more often than most, but not lately",
       action="win them back before they go: a personal reminder, an offer on their usual purchases",
       recency=(0, 0.4), frequency=(0.5, 1)),
    _R(name="Can't lose", description="big spenders who have gone quiet",
       action="reach out personally: a strong win-back offer, ask what changed",
       recency=(0, 0.4), monetary=(0.6, 1)),
    _R(name="Lost", description="bought rarely, and longer ago than most",
       action="low-cost reactivation only: one last offer, then stop spending on them",
       recency=(0, 0.25), frequency=(0, 0.5)),
    _R(name="Hibernating", description="last bought a while ago, and rarely",
       action="occasional low-cost reminders: seasonal offers, best sellers",
       recency=(0, 0.5), frequency=(0, 0.5)),
    _R(name="Occasional", description="buy now and then",
       action="keep in touch: regular newsletters and seasonal campaigns"),
]

_SCORE_FEATURE = {"recency": "recency_days", "frequency": "frequency", "monetary": "monetary",
                  "tenure": "tenure_days"}
#: Words that tell apart segments sharing a rule: for two, three, and the ends of more.
_QUALIFIERS = {
    "recency": ("more recent", "mid recency", "less recent", "most recent", "least recent"),
    "frequency": ("more frequent", "mid frequency", "less frequent", "most frequent", "least frequent"),
    "monetary": ("higher spend", "mid spend", "lower spend", "highest spend", "lowest spend"),
    "tenure": ("longer-standing", "mid tenure", "newer", "longest-standing", "newest"),
}
#: Weight of a rule's place in the table against how clearly a segment fits it (at most about 1.1):
#: a segment left to share takes the first rule it satisfies.
_ORDER = 10.0



def profile_segments(features: pd.DataFrame, labels: np.ndarray, n_segments: int) -> pd.DataFrame:
    """Per segment: size, share of customers, share of revenue, median and mean of each feature.

    ``features`` holds all five features (original units), and any numeric
    attributes the model uses after them, one row per customer in the order
    of ``labels``.
    """
    columns = [*FEATURES, *[c for c in features.columns if c not in FEATURES]]
    frame = features[columns].assign(segment=labels)
    grouped = frame.groupby("segment")
    sizes = grouped.size().reindex(range(n_segments), fill_value=0)
    revenue = grouped["monetary"].sum().reindex(range(n_segments), fill_value=0.0)
    profile = pd.DataFrame({"segment": range(n_segments), "size": sizes.to_numpy(),
                            "share": (sizes / sizes.sum()).to_numpy(),
                            "revenue_share": (revenue / revenue.sum()).to_numpy()})
    medians = grouped[columns].median().reindex(range(n_segments))
    means = grouped[columns].mean().reindex(range(n_segments))
    for feature in columns:
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


def _holds(rule: NamingRule, row: pd.Series) -> bool:
    """Whether the segment's four scores lie in the rule's ranges."""
    return all(getattr(rule, s)[0] <= row[s] <= getattr(rule, s)[1] for s in _SCORE_FEATURE)


def _depth(rule: NamingRule, row: pd.Series) -> float:
    """How clearly a holding rule holds: the smallest distance from a score to a bound the rule sets
    (0 on the bound), plus a tenth of the mean distance to tell apart segments equally close to
    one bound; 1 for a rule that sets none."""
    gaps = []
    for s in _SCORE_FEATURE:
        low, high = getattr(rule, s)
        if low > 0:
            gaps.append(row[s] - low)
        if high < 1:
            gaps.append(high - row[s])
    return float(min(gaps) + 0.1 * np.mean(gaps)) if gaps else 1.0


def assign_rules(scores: pd.DataFrame, rules: list[NamingRule], preferred: dict[int, str] | None = None
                 ) -> list[int | None]:
    """The rule (its position in ``rules``) of every segment of ``scores``; None where no rule holds.

    A segment whose ``preferred`` rule (segment number -> rule name, the
    rule a kept segment was named by before) still holds keeps it. Then each
    rule left, in table order, goes to the segment without a name that
    satisfies it most clearly (furthest inside its bounds), so the most
    champion-like segment is "Champions" and the next one takes the next rule
    it satisfies. A segment left without a rule of its own (more segments
    than rules they satisfy) shares the first rule it satisfies.
    """
    preferred = preferred or {}
    n, m = len(scores), len(rules)
    weight = np.full((n, m), -np.inf)
    chosen: list[int | None] = [None] * n
    kept: set[int] = set()
    for i, row in enumerate(scores.itertuples(index=False)):
        row = pd.Series(row._asdict())
        keep = preferred.get(int(row["segment"]))
        for j, rule in enumerate(rules):
            if _holds(rule, row):
                weight[i, j] = _ORDER * (m - j) + _depth(rule, row)
                if rule.name == keep:
                    chosen[i] = j  # kept while it holds, even if another kept segment holds it too
                    kept.add(i)
    feasible = np.isfinite(weight)
    # Each free rule, in table order, goes to the unnamed segment that fits it most clearly: the
    # segment that is most a "Champion" is called Champions, whatever that leaves for the others.
    for j in range(m):
        if j in chosen:
            continue
        candidates = [i for i in range(n) if chosen[i] is None and feasible[i, j]]
        if candidates:
            best = max(candidates, key=lambda i: (weight[i, j], -i))
            for i in candidates:  # segments alike on every score take the same rule
                if i == best or scores.iloc[i][list(_SCORE_FEATURE)].equals(scores.iloc[best][list(_SCORE_FEATURE)]):
                    chosen[i] = j
    for i in range(n):
        if chosen[i] is None and feasible[i].any():
            chosen[i] = int(np.argmax(weight[i]))
    # A segment sharing a rule moves to a free rule it satisfies (the one that fits its rule least
    # first), so no rule is shared while another that holds is free; kept names stay.
    moved = True
    while moved:
        moved = False
        for j in {c for c in chosen if c is not None}:
            members = [i for i in range(n) if chosen[i] == j and i not in kept]
            holders = [i for i in range(n) if chosen[i] == j]
            alike = len(scores.iloc[holders][list(_SCORE_FEATURE)].drop_duplicates()) == 1
            if len(holders) < 2 or alike:
                continue
            for i in sorted(members, key=lambda i: weight[i, j]):
                free = [k for k in range(m) if k not in chosen and feasible[i, k]]
                if free:
                    chosen[i], moved = free[0], True
                    break
            if moved:
                break
    return chosen


def _plural(value: float, one: str, many: str) -> str:
    return f"{value:,.0f} {one if round(value) == 1 else many}"


def _median_words(score: str, row: pd.Series, currency: str, unit: str = "order") -> str:
    """A segment's median on one score in plain words, to tell apart many segments sharing a rule."""
    if score == "recency":
        return f"last bought {_plural(row['median_recency_days'], 'day', 'days')} ago"
    if score == "frequency":
        return _plural(row["median_frequency"], unit, f"{unit}s")
    if score == "monetary":
        return f"spend {currency}{row['median_monetary']:,.0f}"
    return f"customers for {_plural(row['median_tenure_days'], 'day', 'days')}"


def describe(rule: NamingRule, row: pd.Series, currency: str, unit: str = "order") -> str:
    """One line in plain words: the rule's description and the median customer's numbers.

    ``unit`` is what ``frequency`` counts: orders, or purchase days for a source without an order column.
    """
    facts = (f"typically bought {_plural(row['median_recency_days'], 'day', 'days')} ago, "
             f"{_plural(row['median_frequency'], unit, f'{unit}s')}, "
             f"{currency}{row['median_monetary']:,.0f} spent")
    head = rule.description[:1].upper() + rule.description[1:] if rule.description else ""
    return f"{head}: {facts}" if head else facts[:1].upper() + facts[1:]


def _qualify(table: pd.DataFrame, currency: str, unit: str = "order") -> pd.Series:
    """Names made unique: segments sharing a rule get words for the score on which they differ most."""
    names = table["rule"].copy()
    for name, group in table.groupby("rule"):
        if len(group) == 1:
            continue
        spread = {s: group[s].max() - group[s].min() for s in _SCORE_FEATURE}
        axis = max(spread, key=lambda s: (spread[s], s))
        if spread[axis] == 0:  # alike on every score: no difference to put in words
            for number, index in enumerate(group.sort_values("segment").index, start=1):
                names[index] = f"{name} ({number})"
            continue
        ranked = group.sort_values([axis, "segment"], ascending=[False, True]).index
        higher, mid, lower, highest, lowest = _QUALIFIERS[axis]
        if len(ranked) == 2:
            words = [higher, lower]
        elif len(ranked) == 3:
            words = [highest, mid, lowest]
        else:
            words = [highest, *[_median_words(axis, table.loc[i], currency, unit) for i in ranked[1:-1]], lowest]
        for index, word in zip(ranked, words):
            names[index] = f"{name}, {word}"
    # Two middle segments can read alike once rounded: number the later ones.
    seen: dict[str, int] = {}
    for index in table.sort_values("segment").index:
        count = seen[names[index]] = seen.get(names[index], 0) + 1
        if count > 1:
            names[index] = f"{names[index]} ({count})"
    return names


def name_segments(profile: pd.DataFrame, features: pd.DataFrame, config: NamingConfig | None = None,
                  preferred: dict[int, str] | None = None, unit: str = "order") -> pd.DataFrame:
    """Give every segment of ``profile`` a unique name and a one-line description.

    ``preferred`` maps a segment number to the rule it was named by before
    (a segment kept from the published run): it keeps that rule while its
    median customer still satisfies it. ``unit`` is what ``frequency``
    counts (``order``, or ``purchase day`` without an order column). Returns ``profile`` with the naming
    scores and the columns ``rule``, ``segment_name``, ``description`` and
    ``action`` (the rule's suggested action) added.
    """
    config = config or NamingConfig()
    rules = config.rules or DEFAULT_RULES
    table = profile.merge(score_segments(profile, features), on="segment")
    positions = assign_rules(table, rules, preferred)
    if None in positions:
        fallback = "Other" if all(r.name != "Other" for r in rules) else "Unmatched"
        log.warning("%d segment(s) fit no rule of naming.rules and are called %r; end the rules with one "
                    "without ranges (a catch-all) to name every segment", positions.count(None), fallback)
    chosen = [rules[j] if j is not None else NamingRule(name=fallback) for j in positions]
    table["rule"] = [r.name for r in chosen]
    table["description"] = [describe(r, row, config.currency, unit) for r, (_, row) in zip(chosen, table.iterrows())]
    table["action"] = [r.action for r in chosen]
    table["segment_name"] = _qualify(table, config.currency, unit)
    return table


def contradictions(named: pd.DataFrame, rules: list[NamingRule] | None = None) -> list[str]:
    """Every segment of a :func:`name_segments` table whose median customer breaks its rule's ranges
    (empty when the names are true)."""
    by_name = {r.name: r for r in (rules or DEFAULT_RULES)}
    found = []
    for _, row in named.iterrows():
        rule = by_name.get(row["rule"])
        if rule is not None and not _holds(rule, row):
            found.append(f"{row['segment_name']}: scores {', '.join(f'{s} {row[s]:.2f}' for s in _SCORE_FEATURE)} "
                         f"outside the ranges of {rule.name!r}")
    return found


#: The columns of :func:`attribute_profiles`, in order.
ATTRIBUTE_PROFILE_COLUMNS = ["segment_id", "segment_name", "attribute", "type", "category", "customers", "share",
                             "base_share", "index", "q1", "median", "q3", "base_median"]
#: A segment's customers without a value, and the categories beyond the top ones, in :func:`attribute_profiles`.
MISSING, OTHER = "(missing)", "(other)"


def attribute_profiles(assignments: pd.DataFrame, types: dict[str, str], top: int = 5) -> pd.DataFrame:
    """Each segment's composition on every attribute, against the whole customer base.

    ``assignments`` has ``segment_id``, ``segment_name`` and one column per
    attribute of ``types`` (attribute -> ``category``, ``number`` or ``date``).
    Returns a long frame (:data:`ATTRIBUTE_PROFILE_COLUMNS`), segments in
    id order and attributes in the order of ``types``:

    - a ``category`` attribute gives the segment's ``top`` categories by
      share, then ``(other)`` for the rest and ``(missing)`` for customers
      without a value, so a segment's shares add up to 1: ``customers`` in
      the segment with the category, ``share`` of the segment's customers,
      ``base_share`` of all customers, and ``index`` = 100 × share /
      base_share (100: as common as in the whole base; 200: twice as common);
    - a numeric attribute (``number``, or a ``date`` as whole years or
      months) gives one row: ``customers`` with a value, ``share`` of the
      segment's customers with one, the segment's quartiles ``q1``,
      ``median``, ``q3`` and the whole base's median ``base_median``.
    """
    rows: list[dict] = []
    segments = sorted(assignments[["segment_id", "segment_name"]].drop_duplicates().itertuples(index=False),
                      key=lambda r: (len(r[0]), r[0]))  # S2 before S10
    n_all = len(assignments)
    for name, kind in types.items():
        column = assignments[name]
        if kind == "category":
            text = column.astype(object).where(column.notna(), MISSING)
            base = text.value_counts() / n_all if n_all else pd.Series(dtype=float)
        else:
            number = pd.to_numeric(column, errors="coerce").astype(float)
            base_median = float(number.median()) if number.notna().any() else np.nan
        for sid, sname in segments:
            in_segment = (assignments["segment_id"] == sid).to_numpy()
            n = int(in_segment.sum())
            head = {"segment_id": sid, "segment_name": sname, "attribute": name, "type": kind}
            if kind != "category":
                values = number[in_segment].dropna()
                q1, median, q3 = (values.quantile([0.25, 0.5, 0.75]).tolist() if len(values) else [np.nan] * 3)
                rows.append({**head, "customers": len(values), "share": len(values) / n if n else np.nan,
                             "q1": q1, "median": median, "q3": q3, "base_median": base_median})
                continue
            counts = text[in_segment].value_counts()
            known = counts.drop(MISSING, errors="ignore")
            # Ties in size are broken by the category's text, so the same data give the same table.
            ranked = sorted(known.items(), key=lambda item: (-item[1], str(item[0])))
            shown = ranked[:top]
            rest = sum(c for _, c in ranked[top:])
            listed = [(str(v), c, base.get(v, 0.0)) for v, c in shown]
            if rest:
                listed.append((OTHER, rest, float(base.drop([MISSING, *[v for v, _ in shown]], errors="ignore").sum())))
            if MISSING in counts:
                listed.append((MISSING, int(counts[MISSING]), float(base.get(MISSING, 0.0))))
            for category, count, base_share in listed:
                share = count / n
                rows.append({**head, "category": category, "customers": int(count), "share": share,
                             "base_share": base_share, "index": 100 * share / base_share if base_share else np.nan})
    return pd.DataFrame(rows, columns=ATTRIBUTE_PROFILE_COLUMNS)
