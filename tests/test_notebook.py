"""The review notebook runs against runs the tests create."""

from __future__ import annotations

import datetime as dt

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, write_flow_config
from pipelines.segment import segment_customers
from segml.config import load_config


@pytest.mark.slow
def test_review_notebook_executes_and_compares_two_runs(prefect_harness, tmp_path, monkeypatch):
    config_path = write_flow_config(tmp_path)
    segment_customers(str(config_path), as_of=dt.date(2023, 10, 1))
    latest = segment_customers(str(config_path))
    monkeypatch.setenv("SEGML_TRACKING_URI", load_config(config_path).tracking.uri)
    monkeypatch.setenv("SEGML_EXPERIMENT", "sample")
    notebook = nbformat.read(REPO / "notebooks" / "review_latest_run.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(str(output.get("data", output.get("text", "")))
                     for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
    assert f"`{latest['run_id']}` as of 2024-01-01" in text
    assert "as of 2023-10-01" in text
    assert "customers are in both runs" in text
    assert "image/png" in text
