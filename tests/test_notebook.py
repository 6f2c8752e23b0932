"""The review notebook runs against runs the tests create."""

from __future__ import annotations

import datetime as dt

import nbformat
import yaml
import pytest
from nbclient import NotebookClient

from conftest import REPO, write_flow_config
from pipelines.segment import segment_customers
from segml.config import load_config


@pytest.mark.slow
def test_review_notebook_compares_with_the_previous_published_run_after_a_same_date_rerun(
        prefect_harness, tmp_path, monkeypatch):
    config_path = write_flow_config(tmp_path)
    earlier = segment_customers(str(config_path), as_of=dt.date(2023, 10, 1))
    segment_customers(str(config_path))
    # The same date again with another seed: the newest run, yet not the one to compare with.
    raw = yaml.safe_load(config_path.read_text())
    raw["model"]["random_state"] = 7
    config_path.write_text(yaml.safe_dump(raw))
    latest = segment_customers(str(config_path))
    monkeypatch.setenv("SEGML_TRACKING_URI", load_config(config_path).tracking.uri)
    monkeypatch.setenv("SEGML_EXPERIMENT", "sample")
    notebook = nbformat.read(REPO / "notebooks" / "review_latest_run.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(str(output.get("data", output.get("text", "")))
                     for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
    assert f"`{latest['run_id']}` as of 2024-01-01 (published)" in text
    assert f"previous published run `{earlier['run_id']}` as of 2023-10-01" in text
    assert "customers are in both runs" in text and "customers are new" in text
    assert "segment_id_previous" in text  # the migration is by stable id
    assert "psi" in text and "image/png" in text
    assert "600.000" not in text and "600" in text  # counts as whole numbers
