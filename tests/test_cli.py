"""The segml command, run as a user runs it."""

from __future__ import annotations

import pandas as pd
import yaml
from typer.testing import CliRunner

from segml.cli import app

runner = CliRunner()


def test_demo_writes_sample_data_and_results(tmp_path):
    result = runner.invoke(app, ["demo", "--dir", str(tmp_path), "--customers", "600"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "outputs" / "sample" / "2024-01-01"
    assert f"Results are in {folder}" in result.output.replace("\n", "")
    assignments = pd.read_csv(folder / "assignments.csv")
    assert len(assignments) == 600 and assignments["customer_id"].is_unique
    segments = pd.read_csv(folder / "segments.csv")
    assert set(segments["segment_name"]) == set(assignments["segment_name"])
    contract = pd.read_csv(folder / "contract.csv")
    rejected = pd.read_csv(folder / "rejected_lines.csv")
    assert contract.loc[contract["status"] == "rejected", "lines"].sum() == len(rejected)
    assert not list(folder.glob(".*.tmp"))  # no temporary files left behind


def test_validate_reports_the_contract_without_fitting(tmp_path):
    runner.invoke(app, ["demo", "--dir", str(tmp_path), "--customers", "200"])
    result = runner.invoke(app, ["validate", str(tmp_path / "segml.yaml"), "--as-of", "2023-06-01"])
    assert result.exit_code == 0, result.output
    assert "Data contract as of 2023-06-01" in result.output
    assert "after_as_of" in result.output and "The configuration is valid." in result.output


def test_errors_print_one_message_without_a_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": "missing.csv", "columns": {
        "customer_id": "c", "timestamp": "t", "amount": "a"}}}))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1
    assert "missing.csv' not found; check data.path" in result.output
    assert "Traceback" not in result.output
    debug = runner.invoke(app, ["run", str(config), "--debug"])
    assert "Traceback" in debug.output


def test_bad_as_of_date_is_refused():
    result = runner.invoke(app, ["run", "x.yaml", "--as-of", "01/02/2024"])
    assert result.exit_code == 2
    assert "--as-of" in result.output
