"""The drawing worker: the report drawn in another process gives the same files as drawn here, and
a figure that does not pickle or a worker that dies still gives the report."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from conftest import pdf_pages
from segml import drawing
from segml.plots import plot_segment_sizes, plot_snake


def _figures() -> dict[str, Figure]:
    rng = np.random.default_rng(0)
    segments = pd.DataFrame({"segment": [0, 1, 2], "segment_id": ["S1", "S2", "S3"],
                             "segment_name": ["Champions", "Loyal", "Lost"], "size": [50, 30, 20],
                             "share": [0.5, 0.3, 0.2], "revenue_share": [0.7, 0.2, 0.1]})
    space = pd.DataFrame(rng.normal(size=(100, 3)), columns=["recency_days", "frequency", "monetary"])
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    return {"segment_sizes": plot_segment_sizes(segments),
            "snake_plot": plot_snake(space.to_numpy(), labels, segments, list(space.columns))}


def _text_page(title: str) -> Figure:
    page = Figure()
    page.text(0.1, 0.9, title)
    return page


@pytest.fixture
def worker():
    drawing.stop()
    drawing.start()
    assert drawing.worker_pid() not in (None, os.getpid())
    yield
    drawing.stop()


def _draw(folder: Path, figures: dict, pages: list) -> tuple[dict, Path, int]:
    under_way = drawing.render(folder, figures, pages, "footer text")
    drawn, report = under_way.result()
    return drawn, report, under_way.report_pid


def test_the_worker_draws_the_report_and_this_process_the_figures(tmp_path, worker):
    figures = _figures()
    pages = [_text_page("Overview"), figures["segment_sizes"], figures["snake_plot"]]
    drawn, report, pid = _draw(tmp_path / "worker", figures, pages)
    assert pid == drawing.worker_pid() != os.getpid()
    assert sorted(drawn) == ["plot_segment_sizes", "plot_snake_plot"]
    assert all(path.stat().st_size > 1000 for path in drawn.values())
    assert pdf_pages(report) == 3

    drawing.stop()  # the same drawing in a thread of this process: the same files
    figures = _figures()
    drawn_here, report_here, pid_here = _draw(tmp_path / "thread", figures,
                                              [_text_page("Overview"), figures["segment_sizes"], figures["snake_plot"]])
    assert pid_here == os.getpid()
    assert sorted(p.name for p in drawn_here.values()) == sorted(p.name for p in drawn.values())
    assert pdf_pages(report_here) == 3


def test_a_figure_that_does_not_pickle_is_drawn_here(tmp_path, worker):
    figures = _figures()
    local = _text_page("A page with a local formatter")
    local.add_subplot().xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1f}"))
    drawn, report, pid = _draw(tmp_path, figures, [local, figures["segment_sizes"]])
    assert pid == os.getpid()
    assert pdf_pages(report) == 2 and len(drawn) == 2


def test_a_worker_that_dies_leaves_the_report_to_this_process(tmp_path, worker):
    os.kill(drawing.worker_pid(), signal.SIGKILL)
    time.sleep(0.5)
    figures = _figures()
    drawn, report, pid = _draw(tmp_path, figures, [_text_page("Overview"), figures["snake_plot"]])
    assert pid == os.getpid()
    assert pdf_pages(report) == 2 and len(drawn) == 2
    assert drawing.worker_pid() is None  # stopped; the next start makes a new one


def test_the_worker_can_be_turned_off(monkeypatch):
    drawing.stop()
    monkeypatch.setenv(drawing.ENV, "0")
    drawing.start()
    assert drawing.worker_pid() is None


def test_a_drawing_started_again_writes_its_report_last(tmp_path, worker):
    """What the flow does when the model version its report names turns out another: the first
    drawing ends, then the second's report replaces it."""
    figures = _figures()
    first = drawing.render(tmp_path, figures, [_text_page("version 7")], "footer text")
    first.abandon()
    second = drawing.render(tmp_path, figures, [_text_page("version 8"), figures["segment_sizes"],
                                                figures["snake_plot"]], "footer text")
    drawn, report = second.result()
    assert pdf_pages(report) == 3 and sorted(drawn) == ["plot_segment_sizes", "plot_snake_plot"]


def test_a_drawing_in_a_thread_started_again_writes_its_report_last(tmp_path):
    drawing.stop()
    figures = _figures()
    first = drawing.render(tmp_path, figures, [_text_page("one")] * 4, "footer text")
    first.abandon()
    drawn, report = drawing.render(tmp_path, figures, [_text_page("two")], "footer text").result()
    assert pdf_pages(report) == 1 and len(drawn) == 2


def test_the_worker_maps_the_installed_packages_as_mlflow_would(worker):
    import importlib_metadata
    from mlflow.utils import requirements_utils

    from segml import tracking

    assert drawing.distributions() == importlib_metadata.packages_distributions()
    kept = requirements_utils._MODULES_TO_PACKAGES
    try:
        requirements_utils._MODULES_TO_PACKAGES = None
        tracking._map_installed_packages()
        handed = requirements_utils._MODULES_TO_PACKAGES
        requirements_utils._MODULES_TO_PACKAGES = None
        requirements_utils._init_modules_to_packages_map()
        assert handed is not None and handed == requirements_utils._MODULES_TO_PACKAGES
        assert "sklearn" in handed and "scikit-learn" in handed["sklearn"]
    finally:
        requirements_utils._MODULES_TO_PACKAGES = kept


def test_without_a_worker_mlflow_maps_the_packages_itself():
    from mlflow.utils import requirements_utils

    from segml import tracking

    drawing.stop()
    assert drawing.distributions() is None
    kept = requirements_utils._MODULES_TO_PACKAGES
    try:
        requirements_utils._MODULES_TO_PACKAGES = None
        tracking._map_installed_packages()
        assert requirements_utils._MODULES_TO_PACKAGES is None  # left to log_model, as before
    finally:
        requirements_utils._MODULES_TO_PACKAGES = kept
