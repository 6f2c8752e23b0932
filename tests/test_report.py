"""The report's words, worked out by hand: share changes, how alike customers are, drift, the summary."""

from __future__ import annotations

import pandas as pd
import pytest

from segml.report import ReportData, alike_text, change_text, drift_text, markdown_summary


@pytest.mark.parametrize(("delta", "text"), [(0.012, "▲ +1.2 pts"), (-0.008, "▼ -0.8 pts"), (0.0004, "= 0.0 pts"),
                                             (None, "new")])
def test_share_changes_read_in_points_with_an_arrow(delta, text):
    assert change_text(delta) == text


@pytest.mark.parametrize(("homogeneity", "words"), [(0.5, "about half as much as"), (0.9, "about a tenth as much as"),
                                                    (0.24, "about three quarters as much as"),
                                                    (0.98, "far less than"), (-0.2, "as much as or more than")])
def test_how_alike_is_the_spread_ratio_in_words(homogeneity, words):
    assert alike_text(homogeneity) == f"customers in this segment differ from each other {words} customers overall"


def test_drift_reads_the_usual_psi_bands():
    assert [drift_text(v) for v in (0.05, 0.2, 0.3)] == ["stable", "moderate shift", "large shift: look into the data"]


def _data(previous: str | None) -> ReportData:
    segments = pd.DataFrame({"segment_id": ["S1", "S3"], "segment_name": ["Champions", "Lost"],
                             "description": ["buy often | spend", "gone"], "action": ["reward", "let go"],
                             "size": [300, 700], "share": [0.3, 0.7], "revenue_share": [0.8, 0.2],
                             "homogeneity": [0.6, 0.7]})
    matching = pd.DataFrame({"segment_id": ["S1", "S3", "S2"], "segment_name": ["Champions", "Lost", None],
                             "previous_segment_name": ["Loyal", None, "At risk"],
                             "outcome": ["renamed", "new", "retired"]})
    return ReportData(name="shop", as_of="2024-02-01", run_id="r1", version=2, currency="£", unit="order",
                      segments=segments, base_medians={}, model_features=["recency_days", "monetary"],
                      previous_as_of=previous, shifts={"share_change.S1": 0.05, "psi.recency_days": 0.31,
                                                       "psi.tenure_days": 2.0},
                      migration={"customers_in_both": 900, "customers_changed": 90, "changed_share": 0.1,
                                 "customers_new": 100, "customers_lapsed": 40}, matching=matching)


def test_the_summary_of_a_rerun_gives_changes_renames_and_drift_of_model_features():
    text = markdown_summary(_data("2024-01-01"), {"MLflow run": "http://mlflow/#/runs/r1"})
    assert "| S1 | Champions | 300 | 30.0% | ▲ +5.0 pts | 80.0% | 0.60 | buy often / spend | reward |" in text
    assert "| S3 | Lost | 700 | 70.0% | new |" in text  # a new segment has no change to show
    assert "900 customers in both, 90 changed segment (10.0%), 100 new, 40 lapsed" in text
    assert "S1 renamed: was “Loyal”, now “Champions”" in text and "S2 (“At risk”) retired" in text
    assert "recency_days large shift: look into the data (PSI 0.31)" in text
    assert "tenure_days" not in text  # not a model feature: it drifts with every as-of date
    assert text.rstrip().endswith("[MLflow run](http://mlflow/#/runs/r1)")


def test_the_summary_of_a_first_run_has_no_change_column():
    text = markdown_summary(_data(None))
    assert "| id | segment | customers | share | revenue |" in text and "renamed" not in text


def test_the_overview_names_every_renamed_retired_and_new_segment():
    # The overview is the page a marketer reads; a retired or renamed id changes what the CRM's key
    # means, so none of them may be left to the "What changed" page alone.
    from segml.report import overview_page

    fig = overview_page(_data("2024-01-01"))
    text = " ".join(t.get_text() for t in fig.texts)
    assert "S1 renamed: was “Loyal”, now “Champions”." in text
    assert "S3 (“Lost”) is new." in text
    assert "S2 (“At risk”) retired: no segment of this run matches it." in text
    assert "Drift" not in text  # drift stays on the "What changed" page
