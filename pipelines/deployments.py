"""Prefect deployments of segml: a refit, a scoring and a campaign-report schedule per configuration.

Serve them from the repository root with a Prefect server running::

    prefect server start                                    # in another terminal
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipelines.deployments configs/online_retail.yaml

The cron schedules and their timezone come from each configuration's
``schedule`` section; every run takes its as-of date from its scheduled time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from pipelines.campaigns import report_campaigns
from pipelines.score import score_customers
from pipelines.segment import segment_customers
from segml.config import load_config


def build_deployments(config_paths: list[str | Path]) -> list[RunnerDeployment]:
    """A ``refit-<name>``, a ``score-<name>`` and a ``campaigns-<name>`` deployment (reporting every
    open campaign) per configuration, each with its schedule (none where it is ``null``)."""
    deployments = []
    for path in config_paths:
        path = Path(path).resolve()
        config = load_config(path)
        plans = [(segment_customers, "refit", config.schedule.refit_cron),
                 (score_customers, "score", config.schedule.score_cron),
                 (report_campaigns, "campaigns", config.schedule.campaigns_cron)]
        for flow, kind, cron in plans:
            if cron is None:
                continue
            deployments.append(flow.to_deployment(
                name=f"{kind}-{config.name}",
                schedules=[Cron(cron, timezone=config.schedule.timezone)],
                parameters={"config": str(path)},
                description=f"{kind} of {config.name} on '{cron}' ({config.schedule.timezone}); config {path}",
                tags=["segml", kind],
                entrypoint_type=EntrypointType.MODULE_PATH,
            ))
    return deployments


def main(argv: list[str]) -> None:
    serve(*build_deployments(argv or ["configs/sample.yaml"]))


if __name__ == "__main__":
    main(sys.argv[1:])
