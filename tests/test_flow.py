"""The Prefect flow and its MLflow record, run for real: Prefect test harness, SQLite MLflow store, files."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import pdf_pages, write_flow_config
from segml import tracking
from pipelines.segment import segment_customers
from segml.config import load_config
from segml.contract import CRM_COLUMNS
from segml.segmentation import prepare_purchases

RUN_METRICS = ["n_segments", "homogeneity", "explained_variance", "silhouette", "calinski_harabasz",
               "davies_bouldin", "stability_ari", "segment_share_min", "rows_read", "rows_used",
               "rows_rejected", "customers"]
PLOTS = ["segment_sizes", "snake_plot", "feature_distributions", "projection_2d", "silhouette_by_segment",
         "k_selection"]


@pytest.fixture(scope="module")
def flow_run(prefect_harness, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flow")
    config_path = write_flow_config(folder, publish={"column_map": {"customer_id": "Contact ID",
                                                                    "segment_name": "Segment"}})
    summary = segment_customers(str(config_path))
    config = load_config(config_path)
    return summary, config, config_path, MlflowClient(tracking_uri=config.tracking.uri,
                                                      registry_uri=config.tracking.uri)


def test_summary_names_the_run_counts_and_outputs(flow_run):
    summary, config, _, _ = flow_run
    assert summary["n_segments"] == 5 and summary["customers"] == 600
    assert summary["rows_read"] == summary["rows_used"] + summary["rows_rejected"] + summary["rows_outside_window"]
    assert Path(summary["output_dir"]) == Path(config.output.dir) / "sample" / "2024-01-01"
    assert Path(summary["assignments"]).exists() and Path(summary["report"]).stat().st_size > 10_000


def test_mlflow_run_has_params_metrics_and_child_runs(flow_run):
    summary, config, _, client = flow_run
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "sample"
    params = run.data.params
    assert params["model.algorithm"] == "kmeans" and params["model.k_range"] == "[2, 8]"
    assert params["data.columns.customer_id"] == "customer_id"
    assert params["as_of"] == "2024-01-01" and params["input_fingerprint"].startswith(f"{summary['rows_read']}:")
    assert params["segml_version"]
    metrics = run.data.metrics
    assert set(RUN_METRICS) <= set(metrics)
    assert "bic" not in metrics  # KMeans has no likelihood
    for segment in ("S1", "S2", "S3", "S4", "S5"):
        for name in ("homogeneity", "share", "stability_jaccard"):
            assert f"{name}.{segment}" in metrics
    assert metrics["rows_read"] == summary["rows_read"]
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert sorted(int(c.data.params["k"]) for c in children) == list(range(2, 9))
    chosen = [c for c in children if c.data.metrics["chosen"] == 1.0]
    assert len(chosen) == 1 and chosen[0].data.params["k"] == "5"
    assert chosen[0].info.run_name == "k=5 (chosen)"
    # The selection curves on the parent run: one point per candidate k.
    curve = client.get_metric_history(summary["run_id"], "candidate.silhouette")
    assert sorted(m.step for m in curve) == list(range(2, 9))
    assert {m.step: m.value for m in curve}[5] == pytest.approx(metrics["silhouette"])


def test_mlflow_run_has_every_table_plot_report_and_config(flow_run):
    summary, _, config_path, client = flow_run
    root = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"assignments.csv", "assignments.parquet", "segments.csv", "homogeneity.csv", "candidates.csv",
            "contract.csv", "rejected_lines.csv", "excluded_customers.csv", "segment_report.pdf",
            "plots", "config"} <= root
    plots = {Path(a.path).stem for a in client.list_artifacts(summary["run_id"], "plots")}
    assert set(PLOTS) <= plots
    configs = {Path(a.path).name for a in client.list_artifacts(summary["run_id"], "config")}
    assert {config_path.name, "resolved.yaml"} <= configs


def test_registered_model_reproduces_the_logged_assignments(flow_run):
    summary, config, _, client = flow_run
    version = client.get_model_version("segml-sample", str(summary["model_version"]))
    assert version.run_id == summary["run_id"]
    logged = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=summary["run_id"], artifact_path="assignments.parquet", tracking_uri=config.tracking.uri))
    model = tracking.load_model(f"models:/segml-sample/{summary['model_version']}", config.tracking.uri)
    scored = model.predict(logged[["recency_days", "frequency", "monetary"]])
    pd.testing.assert_frame_equal(scored, logged[["segment_id", "segment_name", "segment_probability"]],
                                  check_dtype=False)


def test_published_assignment_table_is_the_crm_contract(flow_run):
    summary, _, _, _ = flow_run
    table = pd.read_csv(summary["assignments"], dtype={"customer_id": str})
    assert table.columns.tolist() == CRM_COLUMNS
    assert table["customer_id"].is_unique and len(table) == 600
    assert (table["as_of"] == "2024-01-01").all()
    assert (table["run_id"] == summary["run_id"]).all() and (table["model_version"] == summary["model_version"]).all()
    catalogue = pd.read_csv(Path(summary["output_dir"]) / "segments.csv")
    assert {"segment_id", "segment_name", "description", "size", "share", "revenue_share",
            "median_recency_days", "median_frequency", "median_monetary"} <= set(catalogue.columns)
    assert oct(Path(summary["assignments"]).stat().st_mode & 0o777) == "0o644"


def test_prefect_shows_the_segment_table(flow_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    summary = flow_run[0]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["segments-sample"])))
    # The test session's other flows write artifacts under the same key: this run's names its MLflow run.
    artifacts = [a for a in found if summary["run_id"] in str(a.data)]
    assert len(artifacts) == 1 and artifacts[0].type == "markdown"
    text = str(artifacts[0].data)
    assert "Champions" in text and "| id | segment | customers | share |" in text
    assert "Published." in text and "report (PDF)](file://" in text
    # The flow run is named after the segmentation and its date, not a random pair of words.
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(artifacts[0].flow_run_id).name == "sample as of 2024-01-01"  # window.as_of


def test_a_failed_step_fails_the_flow_marks_the_run_failed_and_publishes_nothing(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path, model={"n_clusters": 8, "min_segment_share": 0.3})
    state = segment_customers(str(config_path), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"smaller than model.min_segment_share=0.3"):
        state.result()
    config = load_config(config_path)
    client = MlflowClient(tracking_uri=config.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("sample").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "min_segment_share" in runs[0].data.tags["segml.error"]
    assert not Path(config.output.dir).exists()


@pytest.mark.slow
def test_a_run_failing_while_its_report_is_drawn_leaves_no_file_behind(prefect_harness, tmp_path, monkeypatch):
    """The model cannot be logged (the artifact store is full) while the worker draws the report: the
    run fails, the drawing ends before its staging folder is removed, and no copy of the report is
    left in that folder, or in one made anew for it."""
    import tempfile

    from segml import drawing

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking, "log_model", full)
    config_path = write_flow_config(tmp_path / "run")
    drawing.start()
    try:
        state = segment_customers(str(config_path), return_state=True)
        assert state.is_failed()
        with pytest.raises(OSError, match="No space left"):
            state.result()
        time.sleep(3)  # time enough for a drawing left running to write its report
    finally:
        drawing.stop()
    assert list(scratch.rglob("*.pdf")) == [] and list(scratch.rglob("*.png")) == []
    assert not Path(load_config(config_path).output.dir).exists()


@pytest.mark.slow
def test_gaussian_mixture_run_logs_bic_and_probabilities(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path, model={"algorithm": "gmm", "k_range": [3, 6], "criterion": "bic",
                                                     "covariance_type": "diag"})
    state = segment_customers(str(config_path), as_of=dt.date(2023, 12, 1), return_state=True)
    summary = state.result()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).name == "sample as of 2023-12-01"
    config = load_config(config_path)
    run = MlflowClient(tracking_uri=config.tracking.uri).get_run(summary["run_id"])
    assert "bic" in run.data.metrics and run.data.params["as_of"] == "2023-12-01"
    # The configuration says 2024-01-01; the run's own date is what its record says.
    assert run.data.params["window.as_of"] == "2023-12-01"
    resolved = yaml.safe_load((Path(summary["output_dir"]) / "config" / "resolved.yaml").read_text())
    assert resolved["window"]["as_of"] == "2023-12-01"
    table = pd.read_parquet(Path(summary["output_dir"]) / "assignments.parquet")
    assert table["segment_probability"].between(0, 1).all() and table["segment_probability"].lt(1).any()
    features = prepare_purchases(config, as_of=dt.date(2023, 12, 1)).features
    assert len(table) == len(features)


def test_promoted_run_is_published_to_the_database_and_as_crm_files(flow_run):
    from segml.publish import create_engine, read_current

    summary, config, _, _ = flow_run
    assert summary["database"] == f"sqlite:///{Path(config.output.dir) / 'segml.db'}"
    engine = create_engine(summary["database"])
    current = read_current(engine, "sample")
    engine.dispose()
    table = pd.read_csv(summary["assignments"], dtype={"customer_id": str})
    assert current["customer_id"].tolist() == sorted(table["customer_id"])
    assert set(current["run_id"]) == {summary["run_id"]}
    folder = Path(summary["output_dir"])
    changes = pd.read_csv(folder / "changes.csv")
    assert len(changes) == 600  # a first run: every customer is new to the CRM
    crm = pd.read_csv(folder / "crm" / "assignments.csv", nrows=1)
    assert crm.columns[:3].tolist() == ["Contact ID", "segment_id", "Segment"]


def test_the_report_is_a4_landscape_throughout_with_a_page_per_segment(flow_run):
    import re

    summary, _, _, _ = flow_run
    pdf = (Path(summary["output_dir"]) / "segment_report.pdf").read_bytes()
    sizes = re.findall(rb"/MediaBox \[\s*([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)\s*\]", pdf)
    assert {tuple(round(float(v)) for v in box) for box in sizes} == {(0, 0, 842, 595)}  # A4 landscape, in points
    # overview, sizes, one page per segment, what changed, the appendix's divider, five figures, contract, glossary
    assert len(sizes) == 2 + summary["n_segments"] + 1 + 1 + 5 + 2


def test_the_mlflow_run_and_model_version_describe_themselves(flow_run):
    summary, config, _, client = flow_run
    run = client.get_run(summary["run_id"])
    tags = run.data.tags
    assert tags["segml.as_of"] == "2024-01-01" and tags["mlflow.source.type"] == "JOB"
    # the data source has a tag of its own: segml.source is the publication's (refit or score)
    assert tags["segml.source"] == "refit" and tags["segml.data_source"].endswith("purchases.csv")
    note = tags["mlflow.note.content"]
    for segment in summary["segments"]:
        assert f"| {segment['segment_id']} | {segment['segment_name']} | {segment['size']:,} |" in note
    assert "suggested action" in note and "first published" not in note.lower()
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "sample" and dataset.dataset.digest == run.data.params["input_fingerprint"][:36]
    assert "" not in run.data.params.values() and run.data.params["tracking.uri"] == config.tracking.uri
    version = client.get_model_version("segml-sample", str(summary["model_version"]))
    assert version.description.startswith("kmeans segmentation of sample as of 2024-01-01, k = 5: S1 ")
    assert version.tags["gates"] in ("passed", "none configured") and version.run_id == summary["run_id"]


def _page_texts(pages: list) -> str:
    from matplotlib.text import Text

    return re.sub(r"\s+", " ", " ".join(t.get_text() for page in pages or [] for t in page.findobj(Text)))


@pytest.mark.slow
def test_the_report_names_the_registered_model_version_even_when_another_was_expected(
        prefect_harness, tmp_path, monkeypatch):
    """With the drawing worker, the report is drawn while the model is registered, naming the version
    the registry is expected to give; when another registration took that number first, the report is
    drawn again. Drawn in a thread, it waits for the version instead."""
    from segml import drawing

    from matplotlib.figure import Figure

    config_path = write_flow_config(tmp_path)
    reports: list[str] = []
    counts: list[int] = []
    render = drawing.render

    def watched(folder, figures, pages=None, footer=""):
        reports.append(_page_texts(pages))
        if len(reports) == 1:  # the first report gets three more pages, to tell the two files apart
            pages = [*pages, Figure(), Figure(), Figure()]
        counts.append(len(pages))
        return render(folder, figures, pages, footer)

    monkeypatch.setattr(drawing, "render", watched)
    drawing.start()
    try:
        assert drawing.has_worker()
        with monkeypatch.context() as wrong:
            wrong.setattr(tracking, "next_version", lambda config: 99)
            first = segment_customers(str(config_path))
        assert first["model_version"] == 1 and len(reports) == 2
        assert "version 99." in reports[0] and "version 1." in reports[1] and "version 99" not in reports[1]
        assert pdf_pages(Path(first["output_dir"]) / "segment_report.pdf") == counts[1] == counts[0] - 3  # the second drawing's file is the one kept

        reports.clear()  # the next run guesses right: one drawing
        second = segment_customers(str(config_path))
        assert second["model_version"] == 2 and len(reports) == 1 and "version 2." in reports[0]
        assert (Path(second["output_dir"]) / "segment_report.pdf").stat().st_size > 10_000
    finally:
        drawing.stop()

    reports.clear()  # in a thread: drawn once, after the registration, whatever the guess
    monkeypatch.setattr(tracking, "next_version", lambda config: 99)
    third = segment_customers(str(config_path), force=True)
    assert third["model_version"] == 3 and len(reports) == 1 and "version 3." in reports[0]


@pytest.mark.slow
def test_a_past_as_of_date_measures_forward_validity_on_the_days_after_it(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path, quality={"stability_resamples": 0, "forward_horizon_days": 28})
    summary = segment_customers(str(config_path), as_of=dt.date(2023, 12, 1))
    folder = Path(summary["output_dir"])
    forward = pd.read_csv(folder / "forward_validity.csv")
    assert forward["customers"].sum() == summary["customers"]
    assert forward["repurchase_rate"].between(0, 1).all()
    # By hand from the lines: who bought in the 28 days from the as-of date, through the same contract.
    config = load_config(config_path)
    assignments = pd.read_parquet(folder / "assignments.parquet")
    after = prepare_purchases(config, as_of=dt.date(2023, 12, 29)).features  # everything before Dec 29
    before = prepare_purchases(config, as_of=dt.date(2023, 12, 1)).features
    grew = after["frequency"].reindex(before.index) > before["frequency"]
    rate = grew.reindex(assignments["customer_id"].astype(str)).fillna(False).mean()
    metrics = MlflowClient(tracking_uri=config.tracking.uri).get_run(summary["run_id"]).data.metrics
    assert metrics["forward.repurchase_rate"] == pytest.approx(rate, abs=0.02)
    assert 0.5 < metrics["forward.auc_repurchase"] <= 1 and 0 <= metrics["forward.r2_spend"] <= 1
    # The latest date has no days after it: nothing is measured.
    latest = segment_customers(str(config_path))
    assert not (Path(latest["output_dir"]) / "forward_validity.csv").exists()
