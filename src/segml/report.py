"""The PDF segment report: one page per topic, the document a marketing manager receives."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from segml.outputs import write_atomic


def _table_page(title: str, frame: pd.DataFrame, notes: list[str] | None = None,
                col_widths: list[float] | None = None) -> Figure:
    fig = Figure(figsize=(11.69, 8.27))  # A4 landscape
    fig.text(0.04, 0.95, title, fontsize=16, weight="bold", va="top")
    y = 0.90
    for note in notes or []:
        for line in textwrap.wrap(note, 150) or [""]:
            fig.text(0.04, y, line, fontsize=9, va="top")
            y -= 0.028
    ax = fig.add_axes((0.04, 0.04, 0.92, max(0.1, y - 0.08)))
    ax.axis("off")
    table = ax.table(cellText=frame.astype(str).to_numpy(), colLabels=list(frame.columns), loc="upper left",
                     cellLoc="left", colWidths=col_widths)
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.4)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8f0")
    return fig


def summary_page(title: str, facts: list[str], segments: pd.DataFrame, currency: str,
                 unit: str = "order") -> Figure:
    """The first page: what was segmented and the segments at a glance (``unit``: what frequency counts)."""
    table = pd.DataFrame({
        "segment": [f"{r.segment_id}: {r.segment_name}" for r in segments.itertuples()],
        "customers": [f"{v:,}" for v in segments["size"]],
        "share": [f"{v:.0%}" for v in segments["share"]],
        "revenue": [f"{v:.0%}" for v in segments["revenue_share"]],
        "days since": [f"{v:,.0f}" for v in segments["median_recency_days"]],
        f"{unit}s": [f"{v:,.0f}" for v in segments["median_frequency"]],
        f"spend ({currency})": [f"{v:,.0f}" for v in segments["median_monetary"]],
        "homogeneity": [f"{v:.2f}" for v in segments["homogeneity"]],
        "stability": [f"{v:.2f}" for v in segments["stability_jaccard"]],
    })
    notes = facts + [""] + [f"{r.segment_name}: {r.description}." for r in segments.itertuples()] + [
        "", f"Days since the last purchase, {unit}s and spend in the table are the segment's median customer's."]
    return _table_page(title, table, notes, col_widths=[0.22, 0.08, 0.06, 0.07, 0.13, 0.1, 0.12, 0.1, 0.08])


def contract_page(contract: pd.DataFrame, descriptions: dict[str, str]) -> Figure:
    """How every line read was accounted for."""
    table = contract.assign(
        lines=contract["lines"].map(lambda v: f"{v:,}"),
        meaning=contract["reason"].map(lambda r: descriptions.get(r, "")),
    )
    return _table_page("Data contract: every line read is used, rejected or outside the window", table,
                       col_widths=[0.14, 0.2, 0.1, 0.56])


def write_report(path: Path, pages: list[Figure]) -> Path:
    """Write ``pages`` (figures, in order) as one PDF, atomically."""
    def write(tmp: Path) -> None:
        with PdfPages(tmp) as pdf:
            for page in pages:
                pdf.savefig(page)
    return write_atomic(path, write)
