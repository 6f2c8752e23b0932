"""Seeded sample purchases from known behavioural groups.

Used by ``segml demo`` and by tests that check the known groups come back.
Every customer belongs to one :data:`GROUPS` entry, which fixes the ranges of
its recency, number of orders, tenure and typical order value. With
``messy=True`` the lines also carry what real exports carry: missing customer
ids, exact duplicates, zero prices, unparseable dates and cancellations
(order id prefixed with ``C`` and a negative quantity).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Group:
    """Ranges that define one behavioural group (days are before the as-of date)."""

    share: float
    recency_days: tuple[int, int]
    orders: tuple[int, int]
    extra_tenure_days: tuple[int, int]
    order_value: float


GROUPS: dict[str, Group] = {
    "champions": Group(0.15, (1, 15), (18, 35), (400, 700), 120.0),
    "new": Group(0.25, (1, 20), (1, 2), (0, 10), 40.0),
    "at_risk": Group(0.20, (150, 300), (6, 12), (300, 500), 80.0),
    "lost": Group(0.25, (400, 700), (1, 2), (0, 60), 30.0),
    "big_spenders": Group(0.15, (20, 90), (2, 4), (150, 500), 1500.0),
}

SAMPLE_AS_OF = dt.date(2024, 1, 1)
SAMPLE_COLUMNS = ["order_id", "customer_id", "purchased_at", "product", "quantity", "unit_price"]


def generate_purchases(n_customers: int = 2000, as_of: dt.date = SAMPLE_AS_OF, seed: int = 0,
                       messy: bool = True, groups: dict[str, Group] | None = None,
                       group_of_customer: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Purchase lines of ``n_customers`` customers, all before ``as_of``.

    Customers are split between the groups by their shares, or take the
    groups listed in ``group_of_customer`` (one per customer, which then also
    sets the number of customers). Returns ``(lines, truth)``: ``lines`` has
    the columns of :data:`SAMPLE_COLUMNS` (``purchased_at`` as text,
    ``YYYY-MM-DD HH:MM:SS``); ``truth`` has one row per customer with its
    ``group``.
    """
    groups = groups or GROUPS
    rng = np.random.default_rng(seed)
    names = list(groups)
    if group_of_customer is not None:
        group_of = np.array([names.index(g) for g in group_of_customer])
        n_customers = len(group_of)
    else:
        shares = np.array([groups[g].share for g in names])
        counts = np.floor(shares / shares.sum() * n_customers).astype(int)
        counts[: n_customers - counts.sum()] += 1
        group_of = np.repeat(np.arange(len(names)), counts)
    customers = np.array([f"{10001 + i}" for i in range(n_customers)])

    def draw(attr: str, integer: bool = True) -> np.ndarray:
        low = np.array([getattr(groups[g], attr)[0] for g in names])[group_of]
        high = np.array([getattr(groups[g], attr)[1] for g in names])[group_of]
        return rng.integers(low, high + 1) if integer else rng.uniform(low, high)

    recency = draw("recency_days")
    n_orders = draw("orders")
    first = recency + draw("extra_tenure_days")
    value = np.array([groups[g].order_value for g in names])[group_of]

    # Orders: the first and last purchase days are fixed, the others fall uniformly between.
    owner = np.repeat(np.arange(n_customers), n_orders)
    position = np.concatenate([np.arange(k) for k in n_orders])
    between = rng.uniform(recency[owner], first[owner])
    days_before = np.where(position == 0, first[owner],
                           np.where(position == n_orders[owner] - 1, recency[owner], between)).round().astype(int)
    seconds = rng.integers(8 * 3600, 20 * 3600, size=len(owner))
    order_time = (pd.Timestamp(as_of) - pd.to_timedelta(days_before, unit="D")
                  + pd.to_timedelta(seconds, unit="s"))
    order_value = value[owner] * rng.lognormal(0.0, 0.25, size=len(owner))
    order_no = 100001 + np.argsort(np.argsort(order_time.to_numpy(), kind="stable"), kind="stable")

    # Lines: 1-4 per order splitting the order's value.
    n_lines = rng.integers(1, 5, size=len(owner))
    line_order = np.repeat(np.arange(len(owner)), n_lines)
    weights = rng.uniform(0.5, 1.5, size=len(line_order))
    weight_sum = np.bincount(line_order, weights=weights)
    line_value = order_value[line_order] * weights / weight_sum[line_order]
    quantity = rng.integers(1, 7, size=len(line_order))
    unit_price = np.maximum(np.round(line_value / quantity, 2), 0.01)
    lines = pd.DataFrame({
        "order_id": order_no[line_order].astype(str),
        "customer_id": customers[owner[line_order]],
        "purchased_at": order_time[line_order].strftime("%Y-%m-%d %H:%M:%S"),
        "product": [f"P{p:04d}" for p in rng.integers(1, 500, size=len(line_order))],
        "quantity": quantity,
        "unit_price": unit_price,
    })
    if messy:
        lines = _add_mess(lines, rng)
    lines = lines.sort_values(["purchased_at", "order_id"], kind="stable").reset_index(drop=True)
    truth = pd.DataFrame({"customer_id": customers, "group": np.array(names)[group_of]})
    return lines, truth


def _add_mess(lines: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Add the faults real exports have; every added line is identifiable by its fault."""
    n = len(lines)
    pick = lambda share: lines.iloc[rng.choice(n, size=max(1, int(share * n)), replace=False)].copy()  # noqa: E731
    anonymous = pick(0.03).assign(customer_id=None)
    duplicates = pick(0.01)
    free = pick(0.005).assign(unit_price=0.0)
    bad_dates = pick(0.002).assign(purchased_at="not a date")
    cancelled = pick(0.01)
    cancelled["quantity"] = -rng.integers(1, 2, size=len(cancelled)) * np.minimum(cancelled["quantity"], 1)
    cancelled["order_id"] = "C" + cancelled["order_id"]
    return pd.concat([lines, anonymous, duplicates, free, bad_dates, cancelled], ignore_index=True)


#: Where each group's customers live (country -> share) and how old they are (youngest, oldest),
#: so that segments found in behaviour differ in geography and age too.
GROUP_ATTRIBUTES: dict[str, tuple[dict[str, float], tuple[int, int]]] = {
    "champions": ({"United Kingdom": 0.55, "Germany": 0.25, "France": 0.1, "Netherlands": 0.1}, (35, 55)),
    "new": ({"United Kingdom": 0.4, "Germany": 0.15, "France": 0.2, "Spain": 0.25}, (18, 30)),
    "at_risk": ({"United Kingdom": 0.45, "France": 0.35, "Belgium": 0.2}, (40, 65)),
    "lost": ({"United Kingdom": 0.35, "Spain": 0.3, "Italy": 0.35}, (25, 70)),
    "big_spenders": ({"Germany": 0.45, "United Kingdom": 0.25, "Switzerland": 0.3}, (45, 70)),
}


def generate_customers(truth: pd.DataFrame, as_of: dt.date = SAMPLE_AS_OF, seed: int = 0,
                       messy: bool = True) -> pd.DataFrame:
    """A customers table for ``truth`` (from :func:`generate_purchases`): ``customer_id``, ``country``
    and ``birth_date`` (text, ``YYYY-MM-DD``) drawn from :data:`GROUP_ATTRIBUTES` by group.

    With ``messy=True`` about 2% of countries are empty, 1% of birth dates are not dates and a
    few rows name customers who never bought.
    """
    rng = np.random.default_rng([seed, 16])
    countries, births = [], []
    for group in truth["group"]:
        shares, (youngest, oldest) = GROUP_ATTRIBUTES.get(group, ({"United Kingdom": 1.0}, (18, 80)))
        countries.append(rng.choice(list(shares), p=np.array(list(shares.values())) / sum(shares.values())))
        age_days = rng.integers(youngest * 365 + 1, (oldest + 1) * 365 - 1)
        births.append((as_of - dt.timedelta(days=int(age_days))).isoformat())
    customers = pd.DataFrame({"customer_id": truth["customer_id"].to_numpy(), "country": countries,
                              "birth_date": births})
    if messy and len(customers) >= 100:
        n = len(customers)
        customers.loc[rng.choice(n, size=n // 50, replace=False), "country"] = ""
        customers.loc[rng.choice(n, size=n // 100, replace=False), "birth_date"] = "unknown"
        strangers = pd.DataFrame({"customer_id": [f"9{i:05d}" for i in range(3)], "country": "France",
                                  "birth_date": "1980-01-01"})
        customers = pd.concat([customers, strangers], ignore_index=True)
    return customers


def generate_campaign_purchases(members: pd.DataFrame, sent: dt.date, days: int = 30, seed: int = 0,
                                base_rate: float | dict[str, float] = 0.2,
                                uplift: dict[str, float] | None = None,
                                spend_uplift: dict[str, float] | None = None,
                                order_value: float | dict[str, float] = 50.0) -> pd.DataFrame:
    """Purchase lines of a campaign's members in the ``days`` after ``sent``, with a planted effect.

    ``members`` has ``customer_id``, ``segment_id`` and ``campaign_group``
    (``target`` or ``control``). A member buys once in the window with
    probability ``base_rate`` (per segment id, or one for all) plus, in the
    target group, ``uplift[segment]`` (0.10 is +10 points); an order is worth
    about ``order_value`` (lognormal), times ``1 + spend_uplift[segment]``
    in the target group. Lines have the columns of :data:`SAMPLE_COLUMNS`.
    """
    rng = np.random.default_rng([seed, 17])
    segment = members["segment_id"].astype(str).to_numpy()
    target = (members["campaign_group"] == "target").to_numpy()

    def per_segment(value: float | dict[str, float] | None, default: float) -> np.ndarray:
        if isinstance(value, dict):
            return np.array([value.get(s, default) for s in segment], dtype=float)
        return np.full(len(segment), default if value is None else value, dtype=float)

    rate = per_segment(base_rate, 0.0) + target * per_segment(uplift, 0.0)
    buys = rng.random(len(members)) < np.clip(rate, 0, 1)
    value = per_segment(order_value, 50.0) * (1 + target * per_segment(spend_uplift, 0.0))
    value = value[buys] * rng.lognormal(0.0, 0.25, size=int(buys.sum()))
    seconds = rng.integers(0, days * 86400, size=len(value))
    when = pd.Timestamp(sent) + pd.to_timedelta(seconds, unit="s")
    return pd.DataFrame({
        "order_id": [f"K{900001 + i}" for i in range(len(value))],
        "customer_id": members["customer_id"].to_numpy()[buys],
        "purchased_at": when.strftime("%Y-%m-%d %H:%M:%S"),
        "product": "P0001",
        "quantity": 1,
        "unit_price": np.round(np.maximum(value, 0.01), 2),
    })


#: The configuration ``segml demo`` uses for the sample data (``configs/sample.yaml`` documents it).
SAMPLE_CONFIG: dict = {
    "name": "sample",
    "data": {
        "path": "data/sample_purchases.csv",
        "columns": {
            "customer_id": "customer_id",
            "timestamp": "purchased_at",
            "order_id": "order_id",
            "quantity": "quantity",
            "unit_price": "unit_price",
        },
        "timestamp_format": "%Y-%m-%d %H:%M:%S",
        "returns": {"policy": "net", "cancel_prefix": "C"},
    },
    "window": {"as_of": SAMPLE_AS_OF.isoformat()},
    "features": ["recency_days", "frequency", "monetary"],
    "model": {"algorithm": "kmeans", "k_range": [2, 8], "criterion": "silhouette"},
    "output": {"dir": "outputs"},
    "tracking": {"uri": "sqlite:///mlflow.db", "artifact_location": "mlartifacts"},
    "customers": {
        "path": "data/sample_customers.csv",
        "id": "customer_id",
        "attributes": {"country": {"column": "country", "type": "category"},
                       "age": {"column": "birth_date", "type": "date", "unit": "years"}},
    },
}


def write_sample(folder: Path, n_customers: int = 3000, seed: int = 0) -> Path:
    """Write sample purchases and their configuration into ``folder``; returns the configuration's path."""
    import yaml

    from segml.outputs import write_csv

    folder = Path(folder)
    lines, truth = generate_purchases(n_customers=n_customers, seed=seed)
    write_csv(lines, folder / SAMPLE_CONFIG["data"]["path"])
    write_csv(generate_customers(truth, seed=seed), folder / SAMPLE_CONFIG["customers"]["path"])
    config_path = folder / "segml.yaml"
    config_path.write_text(yaml.safe_dump(SAMPLE_CONFIG, sort_keys=False), encoding="utf-8")
    return config_path
