"""A real process killed at each step of a publication: the database, the files and the alias end up on one run.

Each case publishes a first run, then starts a second run in a child process
that kills itself (SIGKILL: no cleanup, no ``finally``) at one step of the
publication protocol (pipelines/publication.py). After ``settle`` (what
every flow run and ``segml repair`` do first), the run the CRM database
reads, the run whose files are in the output folder and the run of the
``champion`` model version must be the same, and MLflow must say which run
was published and which never was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, write_flow_config
from pipelines import publication
from pipelines.segment import segment_customers
from segml.config import load_config
from segml.publish import create_engine, current_publication

pytestmark = pytest.mark.slow

# The child patches one step of the protocol to kill the process before or after it.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from pipelines import publication
    from segml import tracking

    config, step = sys.argv[1], sys.argv[2]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def then_die(function):
        def wrapped(*args, **kwargs):
            function(*args, **kwargs)
            die()
        return wrapped

    if step == "before_commit":
        publication.commit = die
    elif step == "after_commit":
        publication.commit = then_die(publication.commit)
    elif step == "after_files":
        publication.publish_folder = then_die(publication.publish_folder)
    elif step == "after_alias":
        tracking.set_champion = then_die(tracking.set_champion)
    elif step == "promote_before_commit":
        publication.commit = die
    elif step == "promote_after_commit":
        publication.commit = then_die(publication.commit)
    if step.startswith("promote"):
        from segml.config import load_config
        publication.promote(load_config(config), sys.argv[3], "reviewed by hand")
    else:
        from pipelines.segment import segment_customers
        segment_customers(config)
    sys.exit(3)  # the step was never reached
""")


def _state(config_path: Path) -> dict:
    config = load_config(config_path)
    client = MlflowClient(tracking_uri=config.tracking.uri, registry_uri=config.tracking.uri)
    engine = create_engine(f"sqlite:///{Path(config.output.dir) / 'segml.db'}")
    try:
        database = current_publication(engine, config.name)["run_id"]
    finally:
        engine.dispose()
    champion = client.get_model_version_by_alias(config.registered_model_name, "champion").run_id
    folder = Path(config.output.dir) / config.name / "2024-01-01"
    files = json.loads((folder / publication.MARKER).read_text())["run_id"]
    assignments = set(__import__("pandas").read_csv(folder / "assignments.csv")["run_id"])
    experiment = client.get_experiment_by_name(config.experiment_name).experiment_id
    statuses = {r.info.run_id: r.info.status for r in client.search_runs([experiment])
                if "mlflow.parentRunId" not in r.data.tags}
    return {"database": database, "champion": champion, "files": files, "assignments": assignments,
            "statuses": statuses}


@pytest.fixture
def first_run(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path)
    first = segment_customers(str(config_path))
    raw = yaml.safe_load(config_path.read_text())
    raw["model"]["random_state"] = 7  # the second run is another run of the same date
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config_path, first["run_id"]


def _kill_child_at(step: str, config_path: Path, *args: str) -> None:
    from prefect.settings import PREFECT_API_URL

    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": path}
    log = config_path.parent / f"child-{step}.log"
    with log.open("w") as output:
        # A session of its own: the fit's worker processes outlive a killed parent, and are killed with it.
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(config_path), step, *args], env=env, cwd=REPO,
                                 stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = child.wait(timeout=300)
        finally:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code == -9, f"the child was not killed at {step}: {code}\n{log.read_text()[-3000:]}"


@pytest.mark.parametrize("step, published", [
    ("before_commit", "first"),
    ("after_commit", "second"),
    ("after_files", "second"),
    ("after_alias", "second"),
])
def test_a_kill_at_any_step_converges_on_one_run(first_run, step, published):
    config_path, first_id = first_run
    _kill_child_at(step, config_path)
    config = load_config(config_path)
    done = publication.settle(config)
    assert done, "settle found nothing to repair"
    state = _state(config_path)
    second_id = next(r for r in state["statuses"] if r != first_id)
    expected = first_id if published == "first" else second_id
    assert (state["database"], state["champion"], state["files"]) == (expected, expected, expected)
    assert state["assignments"] == {expected}
    assert state["statuses"][first_id] == "FINISHED"
    assert state["statuses"][second_id] == ("FAILED" if published == "first" else "FINISHED")
    assert publication.settle(config) == []  # nothing left to do


def test_the_next_flow_run_settles_first(first_run):
    config_path, first_id = first_run
    _kill_child_at("after_commit", config_path)
    third = segment_customers(str(config_path))
    state = _state(config_path)
    assert (state["database"], state["champion"], state["files"]) == (third["run_id"],) * 3
    assert set(state["statuses"].values()) == {"FINISHED"} and len(state["statuses"]) == 3



@pytest.mark.parametrize("step, published", [("promote_before_commit", "first"),
                                             ("promote_after_commit", "held")])
def test_a_promotion_killed_at_its_commit_converges_too(first_run, step, published):
    config_path, first_id = first_run
    raw = yaml.safe_load(config_path.read_text())
    raw["gates"] = {"min_homogeneity": 0.99}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert segment_customers(str(config_path), return_state=True).is_failed()
    held = next(r for r in _state(config_path)["statuses"] if r != first_id)
    _kill_child_at(step, config_path, held)
    config = load_config(config_path)
    assert publication.settle(config)
    state = _state(config_path)
    expected = first_id if published == "first" else held
    assert (state["database"], state["champion"], state["files"]) == (expected,) * 3
    client = MlflowClient(tracking_uri=config.tracking.uri)
    tags = client.get_run(held).data.tags
    if published == "first":
        assert tags["segml.publication"] == "abandoned" and "segml.promoted_by" not in tags
        assert client.get_run(held).info.status == "FAILED"
    else:
        assert tags["segml.publication"] == "complete" and client.get_run(held).info.status == "FINISHED"
        assert tags["segml.promotion_reason"] == "reviewed by hand"
    assert publication.settle(config) == []
