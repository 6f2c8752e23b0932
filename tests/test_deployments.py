"""The repository's deployment definitions, run against the test session's Prefect server."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, write_flow_config
from pipelines.deployments import build_deployments
from segml.config import load_config


def test_every_shipped_config_gets_a_refit_and_a_score_deployment():
    deployments = build_deployments([REPO / "configs" / "sample.yaml", REPO / "configs" / "online_retail.yaml"])
    assert sorted(d.name for d in deployments) == ["campaigns-online_retail", "campaigns-sample",
                                                   "refit-online_retail", "refit-sample", "score-online_retail",
                                                   "score-sample"]
    campaigns = next(d for d in deployments if d.name == "campaigns-sample")
    assert campaigns.entrypoint == "pipelines.campaigns.report_campaigns"
    assert campaigns.schedules[0].schedule.cron == "0 5 * * *"
    refit = next(d for d in deployments if d.name == "refit-sample")
    assert refit.parameters == {"config": str((REPO / "configs" / "sample.yaml").resolve())}
    assert refit.schedules[0].schedule.cron == "0 3 1 * *"
    assert refit.entrypoint == "pipelines.segment.segment_customers"


@pytest.mark.slow
def test_a_scheduled_refit_run_takes_its_as_of_date_from_the_scheduled_time(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    config_path = write_flow_config(tmp_path, window={"as_of": None}, schedule={"timezone": "Europe/London"})
    (refit,) = [d for d in build_deployments([config_path]) if d.name.startswith("refit")]
    refit.apply()
    # A run scheduled for 2023-12-01 00:30 London time, executed late: it must still be as of 2023-12-01.
    scheduled = pd.Timestamp("2023-12-01 00:30", tz="Europe/London").to_pydatetime()
    flow_run = run_deployment(f"segment-customers/{refit.name}", scheduled_time=scheduled, timeout=0)
    # Executed the way a worker or `prefect flow-run execute` does: a fresh process that
    # loads the deployment's entrypoint from the repository.
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    done = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "execute", str(flow_run.id)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.is_completed(), state.message
    folder = load_config(config_path).output.dir
    table = pd.read_csv(f"{folder}/sample/2023-12-01/assignments.csv")
    assert (table["as_of"] == "2023-12-01").all()
    assert dt.date(2023, 12, 1).isoformat() in os.listdir(f"{folder}/sample")
