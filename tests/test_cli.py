"""The segml command, run as a user runs it: a separate process, against the test session's Prefect server."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from segml.sample import write_sample


@pytest.fixture(scope="module")
def segml_cli(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "120"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "segml", *args], env=env, capture_output=True, text=True,
                              timeout=300)
    return run


@pytest.fixture(scope="module")
def demo(segml_cli, tmp_path_factory):
    """One demo run (300 customers) shared by the tests that read what it published."""
    folder = tmp_path_factory.mktemp("demo")
    return segml_cli("demo", "--dir", str(folder), "--customers", "300"), folder


def test_demo_writes_sample_data_and_results(demo):
    result, root = demo
    assert result.returncode == 0, result.stderr
    folder = root / "outputs" / "sample" / "2024-01-01"
    assert f"Results are in {folder}" in result.stdout
    assert result.stdout.count(f"mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}") == 1
    assert "Champions" in result.stdout
    # Quiet: no Prefect task states or MLflow store lines, on either stream.
    for noise in ("Finished in state", "Task run", "mlflow.store", "Created version", "View run"):
        assert noise not in result.stderr + result.stdout, noise
    assignments = pd.read_csv(folder / "assignments.csv")
    assert len(assignments) == 300 and assignments["customer_id"].is_unique
    segments = pd.read_csv(folder / "segments.csv")
    assert set(segments["segment_name"]) == set(assignments["segment_name"])
    contract = pd.read_csv(folder / "contract.csv")
    rejected = pd.read_csv(folder / "rejected_lines.csv")
    assert contract.loc[contract["status"] == "rejected", "lines"].sum() == len(rejected)
    assert (folder / "segment_report.pdf").exists()
    assert not list(folder.rglob(".*.tmp"))  # no temporary files left behind


def test_validate_reports_the_contract_without_fitting(segml_cli, tmp_path):
    config = write_sample(tmp_path, n_customers=200)
    result = segml_cli("validate", str(config), "--as-of", "2023-06-01")
    assert result.returncode == 0, result.stderr
    assert "Data contract as of 2023-06-01" in result.stdout
    assert "after_as_of" in result.stdout and "The configuration is valid." in result.stdout
    assert not (tmp_path / "mlflow.db").exists()
    late = segml_cli("validate", str(config), "--as-of", "2026-01-01")
    assert late.returncode == 0 and "warning: the as-of date 2026-01-01 is 732 days after the last valid" in late.stderr


def test_a_data_error_prints_one_message_without_a_traceback(segml_cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": "missing.csv", "columns": {
        "customer_id": "c", "timestamp": "t", "amount": "a"}}, "tracking": {"uri": "sqlite:///mlflow.db"}}))
    result = segml_cli("run", str(config))
    assert result.returncode == 1
    assert f"error: purchase file '{tmp_path / 'missing.csv'}' not found; check data.path" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Retry 1/2" not in result.stderr  # a missing file is not retried
    debug = segml_cli("run", str(config), "--debug")
    assert "Traceback" in debug.stderr


def test_a_bad_config_fails_before_any_flow_starts(segml_cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {path: x.csv}\nmodel: {algo: kmeans}\n")
    result = segml_cli("run", str(config))
    assert result.returncode == 1
    assert "2 problems in the configuration" in result.stderr and "Traceback" not in result.stderr
    assert "flow run" not in result.stderr.lower()


def test_help_lists_the_commands(segml_cli):
    result = segml_cli("--help")
    assert result.returncode == 0
    for command in ("run", "demo", "validate"):
        assert command in result.stdout


def test_bad_as_of_date_is_refused(segml_cli):
    result = segml_cli("run", "x.yaml", "--as-of", "01/02/2024")
    assert result.returncode == 2
    assert "--as-of" in result.stderr


def test_score_after_demo_uses_the_champion(segml_cli, demo):
    published, root = demo
    assert published.returncode == 0, published.stderr
    result = segml_cli("score", str(root / "segml.yaml"))
    assert result.returncode == 0, result.stderr
    assert "300 customers scored as of 2024-01-01 with model version 1" in result.stdout
    scores = pd.read_csv(root / "outputs" / "sample" / "scores" / "2024-01-01" / "assignments.csv")
    refit = pd.read_csv(root / "outputs" / "sample" / "2024-01-01" / "assignments.csv")
    assert scores["segment_id"].tolist() == refit["segment_id"].tolist()


def test_backfill_refuses_a_bad_period_before_starting(segml_cli, tmp_path):
    config = write_sample(tmp_path, n_customers=100)
    result = segml_cli("backfill", str(config), "--from", "2023-01-01", "--to", "2023-03-01", "--every", "fortnight")
    assert result.returncode == 1
    assert "--every 'fortnight' is not a period" in result.stderr and "flow run" not in result.stderr.lower()


def test_target_writes_a_campaign_list_from_the_published_run(segml_cli, demo, tmp_path):
    published, folder = demo
    assert published.returncode == 0, published.stderr
    config = str(folder / "segml.yaml")
    out = tmp_path / "list.csv"
    result = segml_cli("target", config, "--segment", "Champions", "--where", "monetary > 1000", "--out", str(out))
    assert result.returncode == 0, result.stderr
    listed = pd.read_csv(out)
    assert len(listed) > 0 and set(listed["segment_name"]) == {"Champions"} and (listed["monetary"] > 1000).all()
    assert f"{len(listed):,} customers written to {out}" in result.stdout
    misspelt = segml_cli("target", config, "--segment", "Champion", "--out", str(tmp_path / "none.csv"))
    assert misspelt.returncode == 1 and "'Champion' is not a segment id or name" in misspelt.stderr
    assert "Champions" in misspelt.stderr and not (tmp_path / "none.csv").exists()
    nobody = segml_cli("target", config, "--segment", "Champions", "--where", "monetary < 0", "--out",
                       str(tmp_path / "empty.csv"))
    assert nobody.returncode == 0 and "no current customer matches" in nobody.stderr
    assert pd.read_csv(tmp_path / "empty.csv").empty
    refused = segml_cli("target", config, "--where", "monetary > 0; DROP TABLE segml_assignments", "--out", str(out))
    assert refused.returncode == 1 and "unexpected ';'" in refused.stderr and "Traceback" not in refused.stderr
    assert len(pd.read_csv(out)) == len(listed)  # the list from before is untouched


def test_prefect_start_up_settings_are_in_place_before_any_command_imports_prefect():
    # Prefect reads its settings once, at its first import; a command that imported it before setting
    # the start-up timeout kept the 20 s default and crashed on a busy machine.
    code = ("import sys; import segml.cli; assert 'prefect' not in sys.modules; "
            "from pipelines.backfill import as_of_dates; "
            "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as t; print(t.value())")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "120"


def test_an_infrastructure_error_is_one_line_without_a_traceback_or_a_password(segml_cli, tmp_path):
    config = write_sample(tmp_path, n_customers=60)
    env_url = "postgresql+psycopg://crm:Pl4ntedSecret@127.0.0.1:1/crm"
    done = subprocess.run([sys.executable, "-m", "segml", "target", str(config), "--out", str(tmp_path / "x.csv")],
                          env={**os.environ, "SEGML_PUBLISH_URL": env_url}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "Pl4ntedSecret" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "OperationalError" in errors[0] and "--debug" in errors[0]


def test_demo_shows_countries_and_age_bands_and_reports_a_campaign(demo):
    result, root = demo
    assert result.returncode == 0, result.stderr
    assert "country United Kingdom" in result.stdout and "age " in result.stdout and "(median" in result.stdout
    assert "Campaign 'demo' sent 2024-01-01" in result.stdout
    assert "  all: uplift " in result.stdout and "95% interval" in result.stdout
    report = root / "outputs" / "sample" / "campaigns" / "demo" / "2024-01-31"
    assert (report / "campaign_report.csv").exists() and (report / "uplift.png").exists()
    profiles = pd.read_csv(root / "outputs" / "sample" / "2024-01-01" / "segment_attributes.csv")
    assert set(profiles["attribute"]) == {"country", "age"}


def test_a_campaign_holds_out_its_control_group_and_is_reported_before_and_after_its_window(segml_cli, demo):
    from mlflow.tracking import MlflowClient

    from pipelines.campaigns import report_campaigns

    _, root = demo
    config = str(root / "segml.yaml")
    listed = root / "spring.csv"
    args = ["target", config, "--where", "country in ('Germany', 'France') and age >= 30", "--campaign", "spring",
            "--control", "20%", "--seed", "4", "--sent", "2024-01-01", "--out", str(listed)]
    result = segml_cli(*args)
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(listed, dtype={"customer_id": str})
    assert set(written["country"]) <= {"Germany", "France"} and (written["age"] >= 30).all()
    target, control = (int(n) for n in
                       result.stdout.split("recorded: ")[1].split(" control")[0].replace(",", "").split(" target and "))
    assert target == len(written) and control > 0
    again = segml_cli(*args)
    assert again.returncode == 1 and "already recorded for 'sample'" in again.stderr and "--replace" in again.stderr

    early = segml_cli("campaign", "report", config, "spring", "--as-of", "2024-01-13")
    assert early.returncode == 0, early.stderr
    assert "12 of 30 days after 2024-01-01" in early.stdout and "18 days are missing" in early.stderr
    # The scheduled flow reports every open campaign (the demo's own closed with its report) and closes this one.
    done = report_campaigns(config, as_of=dt.date(2024, 2, 15))
    assert [d["campaign"] for d in done] == ["spring"] and done[0]["closed"]
    assert report_campaigns(config, as_of=dt.date(2024, 2, 16)) == []
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sample-campaigns")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.params["campaign"] for r in runs} == {"demo", "spring"} and len(runs) == 3


def test_the_demo_carries_attributes_to_the_crm_and_to_mlflow(demo):
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    _, root = demo
    folder = root / "outputs" / "sample" / "2024-01-01"
    assignments = pd.read_parquet(folder / "assignments.parquet")
    assert assignments.columns.tolist()[-2:] == ["country", "age"] and str(assignments["age"].dtype) == "Int64"
    engine = sa.create_engine(f"sqlite:///{root / 'outputs' / 'segml.db'}")
    with engine.connect() as connection:
        published = pd.read_sql("SELECT customer_id, country, age FROM segml_current_assignments", connection)
    engine.dispose()
    assert len(published) == len(assignments) and published["country"].notna().mean() > 0.9
    contract = pd.read_csv(folder / "attribute_contract.csv")
    assert {"unknown_customer_id", "missing_value", "unparseable_date"} <= set(contract["reason"])
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run_id = pd.read_csv(folder / "assignments.csv")["run_id"].iloc[0]
    assert "segment_attributes.csv" in {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_a_gate_failure_says_so_once_on_stdout_with_the_segment_table(segml_cli, tmp_path):
    config = write_sample(tmp_path, n_customers=200)
    raw = yaml.safe_load(config.read_text())
    raw["gates"] = {"min_homogeneity": 0.99}
    config.write_text(yaml.safe_dump(raw))
    result = segml_cli("run", str(config))
    assert result.returncode == 1
    assert "NOT PUBLISHED" in result.stdout and "Champions" in result.stdout  # the held-back segments
    assert result.stdout.count("min_homogeneity: 0.") == 2  # the gate line and the reason, nothing repeated
    assert "Not published: 1 quality gate failed: min_homogeneity" in result.stdout
    assert "Results are in" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "gate" in line]
    assert errors == ["error: not published: quality gates failed (see above)"], result.stderr


def test_the_comparison_table_keeps_every_score_whole_at_80_columns():
    # Output to a file or a pipe is 80 columns wide: the scores used to be cut to "0.…".
    import io

    from rich.console import Console

    from segml.cli import comparison_table
    from segml.schemes import SCORES

    row = {score: 0.123 for score in SCORES}
    rows = [{"scheme": name, "kind": kind, "k": 5, **row, "best_homogeneity": name == "gmm-5"}
            for name, kind in (("kmeans-rfm", "scheme"), ("gmm-5", "scheme"), ("RFM score, 5 groups", "baseline"))]
    console = Console(file=io.StringIO(), width=80, soft_wrap=True)
    console.print(comparison_table({"table": rows, "customers": 1672, "as_of": "2011-03-01"}))
    text = console.file.getvalue()
    assert "…" not in text
    assert text.count("0.12") == len(rows) * len(SCORES)
    assert "0.12*" in text and "RFM score, 5 groups" in text
