"""Campaigns: the control draw, the uplift and its intervals, the campaign tables and the report."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from segml.campaigns import (
    CampaignError,
    draw_control,
    measure_uplift,
    open_campaigns,
    read_campaign,
    record_campaign,
    report_window,
)
from segml.sample import SAMPLE_CONFIG, generate_campaign_purchases
from test_publish import engine  # noqa: F401 - SQLite and PostgreSQL

SENT = dt.date(2024, 1, 1)


def members_of(sizes: dict[str, int]) -> pd.DataFrame:
    ids = [f"{s}-{i:05d}" for s, n in sizes.items() for i in range(n)]
    return pd.DataFrame({"customer_id": ids, "segment_id": [s for s, n in sizes.items() for _ in range(n)]})


def test_the_control_draw_is_stratified_by_segment():
    members = members_of({"S1": 1000, "S2": 250, "S3": 7, "S4": 1})
    group = draw_control(members, 0.1, seed=3)
    control = members[group == "control"].groupby("segment_id").size()
    # round(10% of each segment), at least one where a segment has two or more, never a whole segment.
    assert control.to_dict() == {"S1": 100, "S2": 25, "S3": 1}
    assert (group[members["segment_id"] == "S4"] == "target").all()


def test_the_control_draw_is_reproducible_from_the_seed_whatever_the_row_order():
    members = members_of({"S1": 500, "S2": 300})
    first = draw_control(members, 0.2, seed=11)
    shuffled = members.sample(frac=1, random_state=0)
    again = draw_control(shuffled, 0.2, seed=11)
    pd.testing.assert_series_equal(first, again.loc[first.index])
    # One segment's draw does not depend on the others being there.
    alone = draw_control(members[members["segment_id"] == "S2"], 0.2, seed=11)
    pd.testing.assert_series_equal(alone, first[members["segment_id"] == "S2"])
    assert not draw_control(members, 0.2, seed=12).equals(first)


def test_a_control_share_out_of_range_is_refused():
    with pytest.raises(CampaignError, match="at least 0% and below 100%, got 120%"):
        draw_control(members_of({"S1": 3}), 1.2, seed=0)


def _config(tmp_path):
    from segml.config import parse_config

    raw = {**SAMPLE_CONFIG, "customers": None, "data": {**SAMPLE_CONFIG["data"], "path": str(tmp_path / "x.csv")}}
    return parse_config({k: v for k, v in raw.items() if v is not None})


def test_a_planted_uplift_of_ten_points_in_one_segment_is_recovered_through_the_data_contract(tmp_path):
    from pipelines.campaigns import campaign_outcomes

    members = members_of({"S1": 4000, "S2": 4000, "S3": 4000})
    members["campaign_group"] = draw_control(members, 0.3, seed=5)
    lines = generate_campaign_purchases(members, SENT, 30, seed=5, base_rate={"S1": 0.2, "S2": 0.3, "S3": 0.1},
                                        uplift={"S2": 0.10}, order_value=40.0)
    before = lines.assign(order_id="B" + lines["order_id"], purchased_at="2023-12-15 10:00:00")  # not counted
    spend, bought, report = campaign_outcomes(_config(tmp_path), SENT, SENT + dt.timedelta(days=30),
                                              frame=pd.concat([before, lines], ignore_index=True).astype(str))
    assert report.outside_by_reason == {"before_window": len(before)}
    table = measure_uplift(members, spend, bought).set_index("segment_id")
    assert table.loc["S2", "uplift_low"] <= 0.10 <= table.loc["S2", "uplift_high"]
    assert table.loc["S2", "uplift_low"] > 0  # the effect is found, not only allowed
    for null in ("S1", "S3"):
        assert table.loc[null, "uplift_low"] <= 0 <= table.loc[null, "uplift_high"]
        assert table.loc[null, "relative_uplift_low"] <= 0 <= table.loc[null, "relative_uplift_high"]
    assert table.loc["S2", "relative_uplift_low"] <= 0.10 / 0.3 <= table.loc["S2", "relative_uplift_high"]
    assert table.loc["all", "target_customers"] + table.loc["all", "control_customers"] == 12000
    assert table.loc["all", "incremental_revenue"] == pytest.approx(table.loc[["S1", "S2", "S3"],
                                                                              "incremental_revenue"].sum())


def test_the_uplift_of_a_tiny_example_worked_out_by_hand():
    # Target: 3 of 4 bought (spend 10, 20, 30, 0); control: 1 of 2 (spend 10, 0).
    members = pd.DataFrame({"customer_id": list("abcdef"), "segment_id": "S1",
                            "campaign_group": ["target"] * 4 + ["control"] * 2})
    spend = pd.Series({"a": 10.0, "b": 20.0, "c": 30.0, "e": 10.0})
    row = measure_uplift(members, spend, spend > 0).set_index("segment_id").loc["S1"]
    assert row["uplift"] == pytest.approx(0.25) and row["relative_uplift"] == pytest.approx(0.5)
    # Wald: sqrt(0.75 x 0.25 / 4 + 0.5 x 0.5 / 2) = 0.4146; 1.96 x that = 0.8127.
    assert row["uplift_high"] - row["uplift"] == pytest.approx(1.959964 * np.sqrt(0.75 * 0.25 / 4 + 0.25 / 2))
    # Spend per customer 15 against 5: +10 per customer, 40 over the 4 target customers.
    assert row["spend_uplift"] == 10.0 and row["incremental_revenue"] == 40.0


def test_a_report_before_the_window_closes_counts_the_missing_days():
    window = report_window(SENT, 30, SENT + dt.timedelta(days=12))
    assert (window.days, window.missing_days, window.end) == (12, 18, dt.date(2024, 1, 13))
    assert report_window(SENT, 30, dt.date(2024, 6, 1)).missing_days == 0
    with pytest.raises(CampaignError, match="a report as of 2024-01-01 measures no day yet"):
        report_window(SENT, 30, SENT)


def test_a_campaign_name_used_twice_is_an_error_unless_replaced(engine):  # noqa: F811
    members = members_of({"S1": 10, "S2": 5}).assign(campaign_group=lambda m: draw_control(m, 0.2, 1))
    record = dict(as_of=SENT, run_id="run-1", sent_date=SENT, selection="segment S1", control_share=0.2, seed=1,
                  report_days=30)
    record_campaign(engine, "shop", "spring", members, **record)
    with pytest.raises(CampaignError, match="a campaign named 'spring' was already recorded for 'shop' "
                                            r"\(sent 2024-01-01\); choose another name, or add --replace"):
        record_campaign(engine, "shop", "spring", members, **record)
    record_campaign(engine, "shop", "spring", members.head(4), **record, replace=True)
    campaign, stored = read_campaign(engine, "shop", "spring")
    assert campaign["sent_date"] == SENT and campaign["target_customers"] + campaign["control_customers"] == 4
    assert stored["customer_id"].tolist() == members.head(4)["customer_id"].tolist()
    assert open_campaigns(engine, "shop") == ["spring"] and open_campaigns(engine, "other") == []
    with pytest.raises(CampaignError, match="no campaign named 'autumn' is recorded for 'shop'; recorded: 'spring'"):
        read_campaign(engine, "shop", "autumn")


def test_a_window_nobody_bought_in_yet_is_measured_as_zero_not_refused(tmp_path):
    from pipelines.campaigns import campaign_outcomes

    old = pd.DataFrame({"order_id": ["1"], "customer_id": ["a"], "purchased_at": ["2023-12-01 10:00:00"],
                        "product": ["P"], "quantity": ["1"], "unit_price": ["5"]})
    spend, bought, report = campaign_outcomes(_config(tmp_path), SENT, SENT + dt.timedelta(days=5), frame=old)
    assert spend.empty and report.outside_by_reason == {"before_window": 1}
    members = pd.DataFrame({"customer_id": ["a", "b"], "segment_id": "S1", "campaign_group": ["target", "control"]})
    assert measure_uplift(members, spend, bought)["uplift"].tolist() == [0.0, 0.0]
