"""The report's words, worked out by hand: share changes, how alike customers are, drift, the summary."""

from __future__ import annotations

import pandas as pd
import pytest

from segml.report import ReportData, alike_text, change_text, drift_text, markdown_summary, share_beaten


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
                      segments=segments, base_medians={}, beaten={}, model_features=["recency_days", "monetary"],
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
    from segml.report import overview_pages

    (fig,) = overview_pages(_data("2024-01-01"))
    text = " ".join(t.get_text() for t in fig.texts)
    assert "S1 renamed: was “Loyal”, now “Champions”." in text
    assert "S3 (“Lost”) is new." in text
    assert "S2 (“At risk”) retired: no segment of this run matches it." in text
    assert "Drift" not in text  # drift stays on the "What changed" page


def test_the_share_a_segment_beats_counts_ties_as_not_beaten():
    # Six customers: four bought once; recency 10, 20, 30, 40, 50, 60 days.
    features = pd.DataFrame({"recency_days": [10, 20, 30, 40, 50, 60], "frequency": [1, 1, 1, 1, 3, 5],
                             "monetary": [5.0, 5, 5, 5, 50, 90], "tenure_days": [10, 20, 30, 40, 50, 60]})
    segments = pd.DataFrame({"segment_id": ["S1", "S2"], "median_recency_days": [50.0, 20.0],
                             "median_frequency": [1.0, 4.0], "median_monetary": [5.0, 70.0],
                             "median_tenure_days": [50.0, 20.0]})
    beaten = share_beaten(features, segments)
    assert beaten["S1"] == {"recency_days": 1 / 6, "frequency": 0.0, "monetary": 0.0, "tenure_days": 4 / 6}
    assert beaten["S2"] == {"recency_days": 4 / 6, "frequency": 5 / 6, "monetary": 5 / 6, "tenure_days": 1 / 6}


def test_ten_segments_with_long_descriptions_continue_on_a_second_page_with_nothing_below_the_footer():
    from segml.report import overview_pages

    data = _data("2024-01-01")
    long = "bought often and recently, spend far more than most customers and come back every few weeks " * 2
    data.segments = pd.DataFrame({"segment_id": [f"S{i}" for i in range(1, 11)],
                                  "segment_name": [f"Segment {i}" for i in range(1, 11)],
                                  "description": [long] * 10, "action": [long] * 10, "size": [100] * 10,
                                  "share": [0.1] * 10, "revenue_share": [0.1] * 10, "homogeneity": [0.5] * 10})
    pages = overview_pages(data)
    assert len(pages) >= 2 and pages[1].texts[0].get_text().endswith("(continued)")
    texts = [t for page in pages for t in page.texts]
    assert sum(t.get_text().startswith("S") and t.get_text()[1:].split(" ")[0].isdigit() for t in texts) >= 10
    assert min(t.get_position()[1] for t in texts) >= 0.06  # the footer's band stays free
    assert any("S1 renamed" in t.get_text() for t in pages[-1].texts)  # the notes follow the last row
