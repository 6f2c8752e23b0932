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
from test_tracking_server import mlflow_server  # noqa: F401 - the real `mlflow server` fixture

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


# --- the MLflow store ---------------------------------------------------------------------------------

FIRST_RUN = """
    import sys
    from segml import tracking
    from segml.config import parse_config

    config = parse_config({"name": "race", "tracking": {"uri": sys.argv[1], "artifact_location": sys.argv[2]},
                           "data": {"path": "x.csv", "columns": {"customer_id": "c", "timestamp": "t", "amount": "a"}}})
    handle = tracking.start_run(config, run_name=sys.argv[3])
    tracking.log_params_and_metrics(handle, {"runner": sys.argv[3]}, {"one": 1.0})
    tracking.end_run(handle)
    print(handle.run_id)
"""


@pytest.mark.slow
def test_concurrent_first_runs_on_a_fresh_sqlite_store_all_succeed(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    script = tmp_path / "first_run.py"
    script.write_text(textwrap.dedent(FIRST_RUN))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    starts = [subprocess.Popen([PYTHON, str(script), uri, str(tmp_path / "artifacts"), f"r{i}"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in starts]
    assert [code for code, _, _ in results] == [0, 0, 0], "\n".join(err[-2000:] for _, _, err in results)
    fourth = subprocess.run([PYTHON, str(script), uri, str(tmp_path / "artifacts"), "r3"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.params["runner"] for r in runs) == ["r0", "r1", "r2", "r3"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_run_that_loses_the_race_to_create_the_experiment_uses_the_winners(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from conftest import hand_config
    from segml import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = hand_config(tracking={"uri": uri}, name="raced")
    winner = MlflowClient(tracking_uri=uri).create_experiment("raced")
    lookup = MlflowClient.get_experiment_by_name
    calls = []

    def not_yet_on_the_first_look(self, name):
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)  # another run creates it right after this look

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet_on_the_first_look)
    handle = tracking.start_run(config)
    assert handle.experiment_id == winner and len(calls) == 2


def test_an_unreachable_tracking_server_fails_fast_with_one_message(monkeypatch):
    import time

    from conftest import hand_config
    from segml import tracking
    from segml.errors import SegmlError

    for key in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    config = hand_config(tracking={"uri": "http://segml:S3cr3t@127.0.0.1:9"})
    started = time.monotonic()
    with pytest.raises(SegmlError) as info:
        tracking.start_run(config)
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert message.startswith("cannot reach the MLflow tracking store at http://segml:***@127.0.0.1:9: "
                              "Connection refused")
    assert "tracking.uri" in message and "MLFLOW_TRACKING_URI" in message and "S3cr3t" not in message
    assert "\n" not in message


@pytest.mark.slow
def test_a_server_uri_with_a_password_is_never_printed(mlflow_server, monkeypatch, capfd):
    from conftest import hand_config
    from segml import tracking

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    uri = mlflow_server.replace("http://", "http://segml:S3cr3t@")  # a server without auth ignores it
    handle = tracking.start_run(hand_config(tracking={"uri": uri}, name="printed"))
    tracking.log_params_and_metrics(handle, {"source": "postgresql://shop:S3cr3t@db/shop"}, {})
    tracking.end_run(handle)  # where MLflow prints "View run ... at <URI>"
    out, err = capfd.readouterr()
    assert "S3cr3t" not in out + err
    run = tracking._client(uri).get_run(handle.run_id)
    assert run.info.status == "FINISHED" and run.data.params["source"] == "postgresql://shop:***@db/shop"


def test_http_settings_the_user_made_are_kept(monkeypatch):
    from segml import tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")
    tracking._client("http://127.0.0.1:9")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]


# --- the registered model's digest --------------------------------------------------------------------

@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A model fitted on sample purchases, logged and registered in a fresh local store."""
    from conftest import write_flow_config
    from segml import tracking
    from segml.config import load_config
    from segml.segmentation import fit_model, prepare_purchases

    folder = tmp_path_factory.mktemp("registered")
    config = load_config(write_flow_config(folder, n_customers=300, model={"n_clusters": 3}))
    features = prepare_purchases(config).features
    model, _ = fit_model(features, config)
    handle = tracking.start_run(config)
    names = {s: (f"S{s + 1}", f"Segment {s + 1}") for s in range(model.n_segments)}
    _, version = tracking.log_model(handle, config, model, names, features)
    tracking.end_run(handle)
    return config, handle, version, features


def test_registration_records_the_digest_of_the_model_files(registered):
    from mlflow.tracking import MlflowClient

    from segml import tracking

    config, handle, version, _ = registered
    client = MlflowClient(tracking_uri=config.tracking.uri, registry_uri=config.tracking.uri)
    digest = client.get_model_version(config.registered_model_name, str(version)).tags[tracking.DIGEST_TAG]
    assert len(digest) == 64 and client.get_run(handle.run_id).data.tags[tracking.DIGEST_TAG] == digest
    model = tracking.load_model(f"models:/{config.registered_model_name}/{version}", config.tracking.uri)
    assert model.predict(registered[3][model.metadata.get_input_schema().input_names()].head(3)).shape == (3, 3)


def test_a_model_whose_files_changed_in_the_artifact_store_is_not_loaded(registered, tmp_path):
    import pickle
    import shutil

    from segml import tracking
    from segml.errors import SegmlError

    config, _, version, _ = registered
    [stored] = Path(config.tracking.artifact_location).rglob("python_model.pkl")
    shutil.copyfile(stored, tmp_path / "original.pkl")
    stored.write_bytes(pickle.dumps({"planted": "by someone with write access to the artifact store"}))
    try:
        with pytest.raises(SegmlError, match=rf"the files of model '{config.registered_model_name}' version "
                                             rf"{version} changed since registration"):
            tracking.load_model(f"models:/{config.registered_model_name}/{version}", config.tracking.uri)
    finally:
        shutil.copyfile(tmp_path / "original.pkl", stored)
    tracking.load_model(f"models:/{config.registered_model_name}/{version}", config.tracking.uri)
