"""Writing result tables to files, atomically.

A file is written under a temporary name in the destination folder and then
renamed over the final name, so a crash never leaves half a file where a CRM
import or a later run would read it. Files get the permissions the process
umask gives a new file (``0644`` under the usual ``022``, ``0600`` under
``077``).

CSV files are written for spreadsheets and CRM imports: a text value that a
spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return) gets a leading ``'``; numbers are left alone.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from segml.drawing import Drawing

# First characters that make a spreadsheet read a cell as a formula (OWASP's CSV injection list).
_FORMULA = r"^[=+\-@\t\r]"
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


@functools.cache
def file_mode() -> int:
    """The mode of a new result file: ``0666`` less the process umask, read once.

    ``os.umask`` can only be read by setting it, and a file another thread
    creates in between gets the temporary value; Linux shows the umask in
    ``/proc/self/status`` instead. Elsewhere it is read through ``os.umask``
    with ``077`` in the meantime, so such a file is private, never public.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; a result file gets what the umask gives others
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


def _neutralise_arrow(table):
    """``table`` with ``'`` before every text value a spreadsheet would run as a formula."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for column in table.columns:
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = column.cast(kind) if pa.types.is_dictionary(column.type) else column
            risky = pc.match_substring_regex(column, _FORMULA)
            if pc.any(risky).as_py():
                risky = pc.and_(risky, pc.invert(pc.match_substring_regex(column, _NUMBER)))
                quoted = pc.binary_join_element_wise(pa.scalar("'", kind), column, pa.scalar("", kind))
                column = pc.if_else(risky, quoted, column)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _neutralise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The same for the rare frame Arrow cannot hold (text among other Python objects)."""
    out = frame.copy()
    for name in out.columns:
        column = out[name]
        if column.dtype == object or pd.api.types.is_string_dtype(column):
            text = column.map(lambda v: v if isinstance(v, str) else "")
            risky = text.str.match(_FORMULA) & ~text.str.match(_NUMBER)
            if risky.any():
                out[name] = column.mask(risky, "'" + text)
    return out


def write_csv(frame: pd.DataFrame, path: Path, *, neutralise_formulas: bool = True) -> Path:
    """UTF-8 CSV with a header, ISO dates, ``true``/``false``, empty fields for missing values and no
    index column. Written by Arrow (a million rows in about a second); pandas writes the rare table
    Arrow cannot hold.

    With ``neutralise_formulas`` (the default: segml's CSVs are opened in spreadsheets and imported
    into CRMs) a text value starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets
    a leading ``'``, so a customer id like ``=HYPERLINK(...)`` shows as text instead of running.
    Numbers, in number columns or as text (``-12.5``), are written as they are. Pass ``False`` for a
    file segml itself reads back.
    """
    import pyarrow.csv as pacsv

    table = _arrow_table(frame)
    if table is None:
        plain = _neutralise_frame(frame) if neutralise_formulas else frame
        plain = plain.assign(**{c: plain[c].map({True: "true", False: "false"}) for c in plain.columns
                                if pd.api.types.is_bool_dtype(plain[c])})  # Arrow's spelling, not True/False
        return write_atomic(path, lambda tmp: plain.to_csv(tmp, index=False, encoding="utf-8",
                                                           date_format="%Y-%m-%d"))
    if neutralise_formulas:
        table = _neutralise_arrow(table)
    options = pacsv.WriteOptions(quoting_style="needed")
    return write_atomic(path, lambda tmp: pacsv.write_csv(table, str(tmp), options))


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Parquet; a column of missing values only is written with the type it has when values are
    present (the assignment table's ``previous_segment_id`` text and ``segment_changed`` boolean on a
    first run), so a folder of runs reads as one table."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    known = {"previous_segment_id": pa.string(), "segment_changed": pa.bool_()}
    for index, field in enumerate(table.schema):
        kind = known.get(field.name) if pa.types.is_null(field.type) else None
        if pa.types.is_large_string(field.type):
            kind = pa.string()  # one text type whatever pandas holds the column as
        if kind is not None:
            table = table.set_column(index, field.name, table[field.name].cast(kind))
    import pyarrow.parquet as pq

    return write_atomic(path, lambda tmp: pq.write_table(table, str(tmp)))


#: Tables the next run reads back from the champion's files: written exactly, without formula neutralisation.
READ_BACK = frozenset({"catalogue"})


def write_csv_batches(reader, path: Path) -> int:
    """A CSV written batch by batch from an Arrow ``RecordBatchReader`` (as :func:`write_csv` writes a
    frame, formulas neutralised), so a table of millions of rows never sits in memory whole; returns
    the rows written."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        options = pacsv.WriteOptions(quoting_style="needed")
        schema = _neutralise_arrow(reader.schema.empty_table()).schema
        with pacsv.CSVWriter(str(tmp), schema, write_options=options) as writer:
            for batch in reader:
                table = _neutralise_arrow(pa.Table.from_batches([batch], schema=reader.schema))
                writer.write_table(table.cast(schema) if table.schema != schema else table)
                rows += batch.num_rows

    write_atomic(path, write)
    return rows


def write_results(folder: Path, assignments: pd.DataFrame, tables: dict[str, pd.DataFrame | Path]
                  ) -> dict[str, Path]:
    """Write the assignment table (CSV and Parquet) and every other table as CSV into ``folder``.

    ``tables`` maps a file stem (``segments``, ``candidates``...) to its
    frame, or to a CSV file already written (copied as it is). Returns the
    written paths by name.
    """
    import shutil

    written = {
        "assignments_csv": write_csv(assignments, folder / "assignments.csv"),
        "assignments_parquet": write_parquet(assignments, folder / "assignments.parquet"),
    }
    for stem, frame in tables.items():
        if isinstance(frame, Path):
            written[stem] = write_atomic(folder / f"{stem}.csv", lambda tmp, f=frame: shutil.copyfile(f, tmp))
            continue
        written[stem] = write_csv(frame, folder / f"{stem}.csv", neutralise_formulas=stem not in READ_BACK)
    return written


def save_figures(folder: Path, figures: dict) -> dict[str, Path]:
    """Every figure as ``folder/<name>.png``."""
    written = {}
    for stem, figure in figures.items():
        path = folder / f"{stem}.png"
        write_atomic(path, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=110))
        written[f"plot_{stem}"] = path
    return written


def stage_files(folder: Path, assignments: pd.DataFrame, tables: dict[str, pd.DataFrame | Path],
                under_way: Drawing) -> dict[str, Path]:
    """Write a run's tables into ``folder`` (a staging area) while its figures (PNG) and PDF report
    are drawn there (``under_way``, from :func:`segml.drawing.render`: in its worker process when one
    was started, else in a thread of this process); returns every file written, once all are."""
    written = write_results(folder, assignments, tables)
    figures_written, report = under_way.result()
    written.update(figures_written)
    if report is not None:
        written["report"] = report
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
