"""Campaigns with a control group, and their uplift.

A campaign is a list written by ``segml target ... --campaign NAME``. At that
moment a random control group is held out of every segment
(:func:`draw_control`, stratified, reproducible from the seed); the members
and their group are recorded in the CRM database (``segml_campaigns``,
``segml_campaign_members``) and only the target group is written to the list.

:func:`measure_uplift` then compares, per segment and overall, the target
group with its control group over the ``days`` after the sent date:

``bought_share``
    share of the group's customers with at least one purchase in the window;
``spend_per_customer``
    net spend in the window per customer of the group (0 for those who did
    not buy);
``uplift`` / ``relative_uplift``
    target minus control share, and that difference over the control share;
``spend_uplift``, ``incremental_revenue``
    the difference in spend per customer, and that difference times the
    target group's customers.

Intervals are 95% normal-approximation intervals: Wald for the difference of
two proportions (and of two means, with each group's own variance: Welch),
and the delta method on the log of the ratio for the relative uplift. Overall
figures are the segments' figures weighted by their target customers (a
stratified estimate), their variances summed with the squared weights.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from segml.errors import SegmlError
from segml.publish import campaign_members_table, campaigns_table, ensure_schema, segments_table

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054
#: The columns of :func:`measure_uplift`'s table, in order.
UPLIFT_COLUMNS = ["segment_id", "target_customers", "control_customers", "target_bought", "control_bought",
                  "target_bought_share", "control_bought_share", "uplift", "uplift_low", "uplift_high",
                  "relative_uplift", "relative_uplift_low", "relative_uplift_high",
                  "target_spend_per_customer", "control_spend_per_customer", "spend_uplift", "spend_uplift_low",
                  "spend_uplift_high", "incremental_revenue", "incremental_revenue_low",
                  "incremental_revenue_high"]
OVERALL = "all"


class CampaignError(SegmlError):
    """A campaign cannot be recorded or reported as asked."""


def draw_control(members: pd.DataFrame, control_share: float, seed: int) -> pd.Series:
    """Each member's group, ``target`` or ``control``: a random ``control_share`` of every segment.

    ``members`` has ``customer_id`` and ``segment_id``. Within each segment
    the control group has ``round(control_share × customers)`` members (at
    least one when the share is positive and the segment has two or more),
    drawn by a generator seeded with ``seed`` and the segment id, from the
    customers sorted by id: the same members and seed give the same draw,
    whatever the order of the rows or the other segments.
    """
    if not 0 <= control_share < 1:
        raise CampaignError(f"the control share must be at least 0% and below 100%, got {control_share:.0%}")
    group = pd.Series("target", index=members.index, dtype=object)
    for segment, rows in members.groupby("segment_id", sort=True):
        ordered = rows.sort_values("customer_id")
        n = len(ordered)
        k = int(round(control_share * n))
        if control_share > 0 and n >= 2:
            k = max(k, 1)
        rng = np.random.default_rng([seed, zlib.crc32(str(segment).encode())])
        chosen = rng.choice(n, size=min(k, n - 1) if n > 1 else 0, replace=False)
        group.loc[ordered.index[chosen]] = "control"
    return group


def _shares(bought: pd.Series) -> tuple[float, float]:
    """A proportion and its sampling variance."""
    n = len(bought)
    p = float(bought.mean()) if n else np.nan
    return p, p * (1 - p) / n if n else np.nan


def _means(spend: pd.Series) -> tuple[float, float]:
    """A mean and its sampling variance (the sample variance over n)."""
    n = len(spend)
    mean = float(spend.mean()) if n else np.nan
    return mean, float(spend.var(ddof=1)) / n if n > 1 else np.nan


def _row(segment: str, weights: list[tuple[float, dict]]) -> dict:
    """One line of the uplift table from per-segment estimates combined with ``weights``."""
    def total(key: str) -> float:
        return float(sum(w * e[key] for w, e in weights))

    def variance(key: str) -> float:
        return float(sum(w * w * e[key] for w, e in weights))

    pt, pc = total("pt"), total("pc")
    uplift, se = pt - pc, np.sqrt(variance("vpt") + variance("vpc"))
    relative, rel_low, rel_high = np.nan, np.nan, np.nan
    if pt > 0 and pc > 0:
        relative = pt / pc - 1
        se_log = np.sqrt(variance("vpt") / pt ** 2 + variance("vpc") / pc ** 2)
        rel_low, rel_high = np.exp(np.log(pt / pc) - Z95 * se_log) - 1, np.exp(np.log(pt / pc) + Z95 * se_log) - 1
    st, sc = total("st"), total("sc")
    spend_se = np.sqrt(variance("vst") + variance("vsc"))
    n_target = sum(e["nt"] for _, e in weights)
    return {
        "segment_id": segment, "target_customers": int(n_target),
        "control_customers": int(sum(e["nc"] for _, e in weights)),
        "target_bought": int(sum(e["bt"] for _, e in weights)), "control_bought": int(sum(e["bc"] for _, e in weights)),
        "target_bought_share": pt, "control_bought_share": pc,
        "uplift": uplift, "uplift_low": uplift - Z95 * se, "uplift_high": uplift + Z95 * se,
        "relative_uplift": relative, "relative_uplift_low": rel_low, "relative_uplift_high": rel_high,
        "target_spend_per_customer": st, "control_spend_per_customer": sc,
        "spend_uplift": st - sc, "spend_uplift_low": st - sc - Z95 * spend_se,
        "spend_uplift_high": st - sc + Z95 * spend_se,
        "incremental_revenue": (st - sc) * n_target,
        "incremental_revenue_low": (st - sc - Z95 * spend_se) * n_target,
        "incremental_revenue_high": (st - sc + Z95 * spend_se) * n_target,
    }


def measure_uplift(members: pd.DataFrame, spend: pd.Series, bought: pd.Series) -> pd.DataFrame:
    """Per segment and overall (``segment_id`` ``all``): both groups' customers, the share who bought,
    net spend per customer, and the uplift of target over control with 95% intervals.

    ``members`` has ``customer_id``, ``segment_id`` and ``campaign_group``;
    ``spend`` (net spend in the window) and ``bought`` (at least one purchase
    in the window) are indexed by customer id, and members missing from them
    spent nothing and did not buy. See the module docstring for the method.
    A segment without a control (or a target) member has no uplift (NaN).
    """
    frame = members.assign(
        spend=members["customer_id"].map(spend).fillna(0.0).astype(float),
        bought=members["customer_id"].map(bought).fillna(False).astype(bool))
    estimates: list[tuple[str, dict]] = []
    for segment, rows in sorted(frame.groupby("segment_id"), key=lambda item: (len(str(item[0])), str(item[0]))):
        target, control = rows[rows["campaign_group"] == "target"], rows[rows["campaign_group"] == "control"]
        pt, vpt = _shares(target["bought"])
        pc, vpc = _shares(control["bought"])
        st, vst = _means(target["spend"])
        sc, vsc = _means(control["spend"])
        estimates.append((str(segment), {"pt": pt, "vpt": vpt, "pc": pc, "vpc": vpc, "st": st, "vst": vst, "sc": sc,
                                         "vsc": vsc, "nt": len(target), "nc": len(control),
                                         "bt": int(target["bought"].sum()), "bc": int(control["bought"].sum())}))
    rows = [_row(segment, [(1.0, e)]) for segment, e in estimates]
    measurable = [(s, e) for s, e in estimates if e["nt"] and e["nc"]]
    n_target = sum(e["nt"] for _, e in measurable)
    overall = _row(OVERALL, [(e["nt"] / n_target, e) for _, e in measurable]) if n_target else {"segment_id": OVERALL}
    table = pd.DataFrame([*rows, overall], columns=UPLIFT_COLUMNS)
    if n_target:
        # The overall line counts every member, measurable or not.
        for column in ("target_customers", "control_customers", "target_bought", "control_bought"):
            table.loc[table.index[-1], column] = table[column].iloc[:-1].sum()
    return table


@dataclass(frozen=True)
class Window:
    """The days a campaign report measures: from the sent date up to (not including) ``end``."""

    start: dt.date
    end: dt.date
    days: int
    #: Days of the window still to come on the report's as-of date (0 once it has closed).
    missing_days: int


def report_window(sent: dt.date, days: int, as_of: dt.date) -> Window:
    """The measured days of a ``days``-day window after ``sent``, as of ``as_of`` (purchases before it)."""
    if days < 1:
        raise CampaignError(f"the report window needs at least 1 day, got {days}")
    if as_of <= sent:
        raise CampaignError(f"the campaign was sent on {sent}: a report as of {as_of} measures no day yet; "
                            f"report as of {sent + dt.timedelta(days=1)} or later")
    full = sent + dt.timedelta(days=days)
    end = min(full, as_of)
    return Window(start=sent, end=end, days=(end - sent).days, missing_days=(full - end).days)


def plot_uplift(table: pd.DataFrame, title: str):
    """Uplift in percentage points by segment (and overall) with its 95% interval; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = table.dropna(subset=["uplift"])
    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.6))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    points = rows["uplift"].to_numpy() * 100
    low = points - rows["uplift_low"].to_numpy() * 100
    high = rows["uplift_high"].to_numpy() * 100 - points
    for i, segment in enumerate(rows["segment_id"]):
        colour = "#444444" if segment == OVERALL else "#1f77b4"
        ax.errorbar(points[i], y[i], xerr=[[low[i]], [high[i]]], fmt="o", color=colour, capsize=4)
    ax.axvline(0, color="#999999", linewidth=1)
    names = rows["segment_name"] if "segment_name" in rows else rows["segment_id"]
    ax.set_yticks(y, [f"{s} {n}\n{t:,} target, {c:,} control" if s != OVERALL else f"all segments\n{t:,} target, "
                      f"{c:,} control" for s, n, t, c in zip(rows["segment_id"], names.fillna(""),
                                                             rows["target_customers"], rows["control_customers"])])
    ax.set_xlabel("uplift in the share who bought (percentage points, 95% interval)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


# The campaign tables in the CRM database ------------------------------------------------------------


def record_campaign(engine: sa.Engine, segmentation: str, name: str, members: pd.DataFrame, *, as_of: dt.date,
                    run_id: str, sent_date: dt.date, selection: str, control_share: float, seed: int,
                    report_days: int, replace: bool = False) -> None:
    """Record a campaign and its members (``customer_id``, ``segment_id``, ``campaign_group``) in one
    transaction; a name already recorded for ``segmentation`` is an error unless ``replace``."""
    ensure_schema(engine)
    with engine.begin() as connection:
        key = (campaigns_table.c.segmentation == segmentation) & (campaigns_table.c.name == name)
        existing = connection.execute(sa.select(campaigns_table.c.sent_date).where(key)).first()
        if existing is not None and not replace:
            raise CampaignError(f"a campaign named {name!r} was already recorded for {segmentation!r} (sent "
                                f"{existing[0]}); choose another name, or add --replace to record it again")
        connection.execute(campaigns_table.delete().where(key))
        connection.execute(campaign_members_table.delete().where(
            (campaign_members_table.c.segmentation == segmentation) & (campaign_members_table.c.campaign == name)))
        groups = members["campaign_group"].value_counts()
        connection.execute(campaigns_table.insert().values(
            segmentation=segmentation, name=name, as_of=as_of, run_id=run_id, sent_date=sent_date,
            selection=selection, control_share=float(control_share), seed=int(seed), report_days=int(report_days),
            target_customers=int(groups.get("target", 0)), control_customers=int(groups.get("control", 0)),
            created_at=dt.datetime.now(dt.UTC)))
        rows = members[["customer_id", "segment_id", "campaign_group"]].assign(segmentation=segmentation,
                                                                               campaign=name)
        if len(rows):
            connection.execute(campaign_members_table.insert(), rows.to_dict(orient="records"))


def read_campaign(engine: sa.Engine, segmentation: str, name: str) -> tuple[dict, pd.DataFrame]:
    """A recorded campaign and its members; an unknown name is an error listing the recorded ones."""
    ensure_schema(engine)
    with engine.connect() as connection:
        row = connection.execute(sa.select(campaigns_table).where(
            (campaigns_table.c.segmentation == segmentation) & (campaigns_table.c.name == name))).mappings().first()
        if row is None:
            names = connection.execute(sa.select(campaigns_table.c.name).where(
                campaigns_table.c.segmentation == segmentation).order_by(campaigns_table.c.name)).scalars().all()
            raise CampaignError(f"no campaign named {name!r} is recorded for {segmentation!r}; recorded: "
                                f"{', '.join(repr(n) for n in names) or 'none'}")
        members = pd.read_sql(sa.select(campaign_members_table.c.customer_id, campaign_members_table.c.segment_id,
                                        campaign_members_table.c.campaign_group)
                              .where((campaign_members_table.c.segmentation == segmentation)
                                     & (campaign_members_table.c.campaign == name))
                              .order_by(campaign_members_table.c.customer_id), connection)
    campaign = dict(row)
    for key in ("as_of", "sent_date"):
        campaign[key] = pd.Timestamp(campaign[key]).date()
    return campaign, members


def segment_names(engine: sa.Engine, segmentation: str) -> dict[str, str]:
    """Each segment id of ``segmentation``'s catalogue (retired ones too) and its name."""
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(segments_table.c.segment_id, segments_table.c.segment_name)
                                       .where(segments_table.c.segmentation == segmentation)).all())


def open_campaigns(engine: sa.Engine, segmentation: str) -> list[str]:
    """The names of ``segmentation``'s campaigns whose final report is not made yet."""
    ensure_schema(engine)
    with engine.connect() as connection:
        return list(connection.execute(sa.select(campaigns_table.c.name).where(
            (campaigns_table.c.segmentation == segmentation) & campaigns_table.c.closed_at.is_(None))
            .order_by(campaigns_table.c.sent_date, campaigns_table.c.name)).scalars())


def close_campaign(engine: sa.Engine, segmentation: str, name: str) -> None:
    """Mark a campaign's final report made (its window closed): it is no longer open."""
    with engine.begin() as connection:
        connection.execute(campaigns_table.update().where(
            (campaigns_table.c.segmentation == segmentation) & (campaigns_table.c.name == name))
            .values(closed_at=dt.datetime.now(dt.UTC)))
