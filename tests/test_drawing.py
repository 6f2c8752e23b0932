"""The drawing worker: the report drawn in another process gives the same files as drawn here, and
a figure that does not pickle or a worker that dies still gives the report."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

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


def _pages_in(pdf: Path) -> int:
    return len(re.findall(rb"/Type\s*/Page\b", pdf.read_bytes()))


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
    assert _pages_in(report) == 3

    drawing.stop()  # the same drawing in a thread of this process: the same files
    figures = _figures()
    drawn_here, report_here, pid_here = _draw(tmp_path / "thread", figures,
                                              [_text_page("Overview"), figures["segment_sizes"], figures["snake_plot"]])
    assert pid_here == os.getpid()
    assert sorted(p.name for p in drawn_here.values()) == sorted(p.name for p in drawn.values())
    assert _pages_in(report_here) == 3


def test_a_figure_that_does_not_pickle_is_drawn_here(tmp_path, worker):
    figures = _figures()
    local = _text_page("A page with a local formatter")
    local.add_subplot().xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1f}"))
    drawn, report, pid = _draw(tmp_path, figures, [local, figures["segment_sizes"]])
    assert pid == os.getpid()
    assert _pages_in(report) == 2 and len(drawn) == 2


def test_a_worker_that_dies_leaves_the_report_to_this_process(tmp_path, worker):
    os.kill(drawing.worker_pid(), signal.SIGKILL)
    time.sleep(0.5)
    figures = _figures()
    drawn, report, pid = _draw(tmp_path, figures, [_text_page("Overview"), figures["snake_plot"]])
    assert pid == os.getpid()
    assert _pages_in(report) == 2 and len(drawn) == 2
    assert drawing.worker_pid() is None  # stopped; the next start makes a new one


def test_the_worker_can_be_turned_off(monkeypatch):
    drawing.stop()
    monkeypatch.setenv(drawing.ENV, "0")
    drawing.start()
    assert drawing.worker_pid() is None
