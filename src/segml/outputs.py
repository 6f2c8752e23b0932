"""Writing result tables to files, atomically.

A file is written under a temporary name in the destination folder and then
renamed over the final name, so a crash never leaves half a file where a CRM
import or a later run would read it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; result files are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _arrow_table(frame: pd.DataFrame):
    """``frame`` as an Arrow table, timestamps that are all midnight as dates; None when Arrow cannot
    hold a column (mixed Python objects)."""
    import pyarrow as pa

    columns = {}
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_datetime64_any_dtype(column):
            present = column.dropna()
            if (present == present.dt.normalize()).all():
                column = column.dt.date.astype(object).where(column.notna(), None)
        columns[str(name)] = column
    try:
        return pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """UTF-8 CSV with a header, ISO dates, ``true``/``false``, empty fields for missing values and no
    index column. Written by Arrow (a million rows in about a second); pandas writes the rare table
    Arrow cannot hold."""
    import pyarrow.csv as pacsv

    table = _arrow_table(frame)
    if table is None:
        return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False, encoding="utf-8",
                                                           date_format="%Y-%m-%d"))
    options = pacsv.WriteOptions(quoting_style="needed")
    return write_atomic(path, lambda tmp: pacsv.write_csv(table, str(tmp), options))


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    return write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_results(folder: Path, assignments: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """Write the assignment table (CSV and Parquet) and every other table as CSV into ``folder``.

    ``tables`` maps a file stem (``segments``, ``candidates``...) to its
    frame. Returns the written paths by name.
    """
    written = {
        "assignments_csv": write_csv(assignments, folder / "assignments.csv"),
        "assignments_parquet": write_parquet(assignments, folder / "assignments.parquet"),
    }
    for stem, frame in tables.items():
        written[stem] = write_csv(frame, folder / f"{stem}.csv")
    return written


def save_figures(folder: Path, figures: dict) -> dict[str, Path]:
    """Every figure as ``folder/<name>.png``."""
    written = {}
    for stem, figure in figures.items():
        path = folder / f"{stem}.png"
        write_atomic(path, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=110))
        written[f"plot_{stem}"] = path
    return written


def stage_files(folder: Path, assignments: pd.DataFrame, tables: dict[str, pd.DataFrame],
                figures: dict, report_pages: list | None = None) -> dict[str, Path]:
    """Render a run's files into ``folder`` (a staging area): tables, plots as PNG, the PDF report.

    Drawing is matplotlib's single-threaded work: the PNGs and the PDF are
    drawn in two worker processes (joblib's, usually already started by the
    model fit) while this process writes the tables.
    """
    from concurrent.futures import ThreadPoolExecutor

    from joblib import Parallel, delayed

    from segml.report import write_report

    drawing = [delayed(save_figures)(folder / "plots", figures)]
    if report_pages is not None:
        drawing.append(delayed(write_report)(folder / "segment_report.pdf", report_pages))
    with ThreadPoolExecutor(1) as thread:  # waits on the workers while this thread writes the tables
        drawn = thread.submit(Parallel(n_jobs=min(len(drawing), os.cpu_count() or 1)), drawing)
        written = write_results(folder, assignments, tables)
        figures_written, *report = drawn.result()
    written.update(figures_written)
    if report:
        written["report"] = report[0]
    return written


def publish_folder(staging: Path, destination: Path) -> dict[str, Path]:
    """Copy every staged file into ``destination``, each atomically; returns the published paths."""
    import shutil

    published = {}
    for source in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = destination / source.relative_to(staging)
        published[str(source.relative_to(staging))] = write_atomic(
            target, lambda tmp, s=source: shutil.copyfile(s, tmp))
    return published
