"""Files and stores: CSVs safe to open in a spreadsheet, file modes from the umask, a SQLite MLflow store
created by concurrent first runs, the registered model's digest, and a tracking server that is not there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from segml.outputs import write_csv, write_results

PYTHON = sys.executable
HYPERLINK = '=HYPERLINK("http://x")'


def _run_python(code: str, cwd: Path, umask: int | None = None, timeout: float = 120,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python process (segml importable), optionally under ``umask``."""
    return subprocess.run([PYTHON, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})},
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


# --- CSVs a spreadsheet opens -------------------------------------------------------------------------

def _assignments(customer_ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": customer_ids, "segment_id": "S1", "segment_name": "Loyal",
                         "monetary": [-12.5, 3.0, 7.25, 1.0][:len(customer_ids)],
                         "note": ["-3", "+4", "-1+1", "@home"][:len(customer_ids)]})


def test_text_a_spreadsheet_would_run_gets_a_leading_quote(tmp_path):
    frame = _assignments([HYPERLINK, "+SUM(1)", "@x", "C-1"])
    written = pd.read_csv(write_csv(frame, tmp_path / "a.csv"), dtype=str, keep_default_na=False)
    assert written["customer_id"].tolist() == ["'" + HYPERLINK, "'+SUM(1)", "'@x", "C-1"]
    assert written["monetary"].tolist() == ["-12.5", "3", "7.25", "1"]  # a number column: as it is
    assert written["note"].tolist() == ["-3", "+4", "'-1+1", "'@home"]  # numbers as text too


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"], ids=repr)
def test_every_formula_start_is_neutralised(tmp_path, start):
    frame = pd.DataFrame({"customer_id": [f"{start}cmd|' /C calc'!A0", "A1"]})
    text = write_csv(frame, tmp_path / "a.csv").read_bytes().decode()
    assert f"'{start}cmd" in text


def test_a_table_arrow_cannot_hold_is_neutralised_too(tmp_path):
    frame = pd.DataFrame({"customer_id": [HYPERLINK, "A"], "mixed": [[1], "x"]})
    written = pd.read_csv(write_csv(frame, tmp_path / "a.csv"), dtype=str)
    assert written["customer_id"].tolist() == ["'" + HYPERLINK, "A"]


def test_result_csvs_are_neutralised_and_the_catalogue_read_back_is_exact(tmp_path):
    assignments = _assignments([HYPERLINK, "B"])
    catalogue = pd.DataFrame({"segment_id": ["S1"], "segment_name": ["=Top spenders"]})
    write_results(tmp_path, assignments, {"changes": assignments, "catalogue": catalogue})
    for name in ("assignments.csv", "changes.csv"):
        assert pd.read_csv(tmp_path / name, dtype=str)["customer_id"].tolist() == ["'" + HYPERLINK, "B"]
    assert pd.read_parquet(tmp_path / "assignments.parquet")["customer_id"].tolist() == [HYPERLINK, "B"]
    assert pd.read_csv(tmp_path / "catalogue.csv")["segment_name"].tolist() == ["=Top spenders"]


def test_neutralising_can_be_turned_off_for_files_read_back(tmp_path):
    frame = pd.DataFrame({"customer_id": [HYPERLINK]})
    written = pd.read_csv(write_csv(frame, tmp_path / "a.csv", neutralise_formulas=False), dtype=str)
    assert written["customer_id"].tolist() == [HYPERLINK]


# --- file modes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)], ids=oct)
def test_result_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    result = _run_python(f"""
        from pathlib import Path
        import pandas as pd
        from segml.outputs import write_csv, write_parquet
        write_csv(pd.DataFrame({{"a": [1]}}), Path("out/a.csv"))
        write_parquet(pd.DataFrame({{"a": [1]}}), Path("out/a.parquet"))
        """, tmp_path, umask=umask)
    assert result.returncode == 0, result.stderr
    for name in ("a.csv", "a.parquet"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == mode
