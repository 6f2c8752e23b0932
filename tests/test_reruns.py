"""Scheduled reruns a CRM can trust: stable ids, migration and quality gates, through the real flow."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import write_flow_config
from pipelines.publication import promote
from pipelines.segment import segment_customers
from segml.config import load_config
from segml.errors import QualityGateError, SegmlError
from segml.outputs import write_csv
from segml.publish import create_engine, current_publication, read_current
from segml.sample import GROUPS, Group, generate_purchases


def _set(config_path, **sections):
    raw = yaml.safe_load(config_path.read_text())
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _client(config_path):
    uri = load_config(config_path).tracking.uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_a_refit_with_another_seed_on_shuffled_rows_keeps_every_id_and_moves_nobody(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path)
    first = segment_customers(str(config_path))
    data_path = load_config(config_path).data.path
    lines = pd.read_csv(data_path, dtype=str)
    write_csv(lines.sample(frac=1.0, random_state=3), Path(data_path))
    _set(config_path, model={"random_state": 12345}, publish={"changes_file": False})
    second = segment_customers(str(config_path))
    # The first run's changes.csv does not linger beside the second run's files.
    assert (Path(first["output_dir"]) / "changes.csv").exists() is False

    ids = lambda summary: {(s["segment_id"], s["segment_name"], s["size"]) for s in summary["segments"]}  # noqa: E731
    assert ids(second) == ids(first)
    assert second["migration"]["customers_changed"] == 0 and second["migration"]["customers_in_both"] == 600
    table = pd.read_csv(second["assignments"], dtype={"customer_id": str})
    assert not table["segment_changed"].any()
    assert (table["previous_segment_id"] == table["segment_id"]).all()
    alias = _client(config_path).get_model_version_by_alias("segml-sample", "champion")
    assert int(alias.version) == second["model_version"] == 2

    # Every run's files have the same types, the first run's included: a folder of runs reads as one table.
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(Path(s["output_dir"]) / "assignments.parquet").remove_metadata() for s in (first, second)]
    assert schemas[0].equals(schemas[1])
    assert str(schemas[0].field("segment_changed").type) == "bool"
    assert str(schemas[0].field("previous_segment_id").type) == "string"


def test_a_known_group_changing_behaviour_is_exactly_the_migration_found(prefect_harness, tmp_path):
    groups = {**GROUPS, "wholesale": Group(0.0, (1, 4), (60, 90), (300, 600), 4000.0)}
    before = ["champions"] * 100 + ["new"] * 100 + ["at_risk"] * 100 + ["lost"] * 100 + ["big_spenders"] * 100
    after = ["at_risk"] * 40 + before[40:] + ["wholesale"] * 100   # 40 champions lapse; wholesale buyers arrive
    config_path = write_flow_config(tmp_path, model={"n_clusters": 5})
    data_path = Path(load_config(config_path).data.path)
    write_csv(generate_purchases(groups=groups, group_of_customer=before, seed=1)[0], data_path)
    first = segment_customers(str(config_path))

    def segment_of(summary, customer_index):
        table = pd.read_csv(summary["assignments"], dtype={"customer_id": str}).set_index("customer_id")
        return table.loc[str(10001 + customer_index), "segment_id"]

    champions, at_risk = segment_of(first, 0), segment_of(first, 200)   # read before the rerun replaces them
    write_csv(generate_purchases(groups=groups, group_of_customer=after, seed=2)[0], data_path)
    _set(config_path, model={"n_clusters": 6})
    second = segment_customers(str(config_path))
    old_ids = {s["segment_id"] for s in first["segments"]}
    new_ids = {s["segment_id"] for s in second["segments"]}
    assert old_ids < new_ids and new_ids - old_ids == {"S6"}
    assert segment_of(second, 550) == "S6"                          # a wholesale buyer
    assert second["migration"] == {"customers_in_both": 500.0, "customers_new": 100.0, "customers_lapsed": 0.0,
                                   "customers_changed": 40.0, "changed_share": 0.08}
    counts = pd.read_csv(Path(second["output_dir"]) / "migration_counts.csv").set_index(
        "previous_segment_id")
    moved = {(p, c): n for p, row in counts.iterrows() for c, n in row.items() if p != c and n}
    assert moved == {(champions, at_risk): 40}


def test_a_failed_gate_fails_the_flow_keeps_the_champion_and_publishes_nothing(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path)
    first = segment_customers(str(config_path))
    published = {p: p.read_bytes() for p in Path(first["output_dir"]).rglob("*") if p.is_file()}

    _set(config_path, gates={"min_homogeneity": 0.99, "min_segment_share": 0.01}, model={"random_state": 5})
    state = segment_customers(str(config_path), return_state=True)
    assert state.is_failed()
    with pytest.raises(QualityGateError, match=r"1 quality gate failed: min_homogeneity: 0\.\d+ \(needs >= 0\.99\)"):
        state.result()

    # The held-back run's segments are in Prefect too, saying why they were not published.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect_client:
        (artifact,) = [a for a in prefect_client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
            if a.key == "segments-sample"]
    assert "not published" in artifact.description
    text = str(artifact.data)
    assert "**Not published**: quality gates failed: min_homogeneity" in text
    assert text.count("%") >= 2 and "change" in text  # shares as percentages, their change since the champion

    client = _client(config_path)
    assert int(client.get_model_version_by_alias("segml-sample", "champion").version) == first["model_version"]
    runs = client.search_runs([client.get_experiment_by_name("sample").experiment_id],
                              filter_string="tags.segml.failed_gates LIKE '%min_homogeneity%'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.metrics["gates_passed"] == 0.0 and runs[0].data.metrics["gate.min_segment_share"] == 1.0
    assert {p: p.read_bytes() for p in published} == published
    assert {p for p in Path(first["output_dir"]).rglob("*") if p.is_file()} == set(published)

    # After review, a person publishes the held-back run as it was recorded, and the run says who and why.
    held = runs[0].info.run_id
    config = load_config(config_path)
    with pytest.raises(SegmlError, match="--reason is empty"):
        promote(config, held, "  ")
    done = promote(config, held, "homogeneity target is new; reviewed the segments by hand")
    assert done["model_version"] == first["model_version"] + 1
    assert int(client.get_model_version_by_alias("segml-sample", "champion").version) == done["model_version"]
    engine = create_engine(f"sqlite:///{Path(config.output.dir) / 'segml.db'}")
    try:
        assert current_publication(engine, "sample")["run_id"] == held
        assert set(read_current(engine, "sample")["run_id"]) == {held}
    finally:
        engine.dispose()
    assert json.loads((Path(first["output_dir"]) / "publication.json").read_text())["run_id"] == held
    assert set(pd.read_csv(Path(first["output_dir"]) / "assignments.csv")["run_id"]) == {held}
    tags = client.get_run(held).data.tags
    assert tags["segml.promotion_reason"].startswith("homogeneity target is new") and tags["segml.promoted_by"]
    assert client.get_run(held).info.status == "FINISHED"
    with pytest.raises(SegmlError, match="already published"):
        promote(config, held, "again")


def test_a_held_back_run_is_not_promoted_over_a_newer_champion(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path)
    segment_customers(str(config_path))
    _set(config_path, gates={"min_homogeneity": 0.99})
    held = segment_customers(str(config_path), return_state=True)
    assert held.is_failed()
    client = _client(config_path)
    (run,) = client.search_runs([client.get_experiment_by_name("sample").experiment_id],
                                filter_string="attributes.status = 'FAILED'")
    _set(config_path, gates={"min_homogeneity": None}, model={"random_state": 9})
    segment_customers(str(config_path))  # the champion moves on
    with pytest.raises(SegmlError, match="was compared with the published run .* but the champion is now"):
        promote(load_config(config_path), run.info.run_id, "reviewed")


@pytest.mark.slow
def test_a_failed_database_publication_publishes_no_files_and_keeps_the_champion(prefect_harness, tmp_path,
                                                                                 monkeypatch):
    config_path = write_flow_config(tmp_path)
    first = segment_customers(str(config_path))
    published = {p: p.read_bytes() for p in Path(first["output_dir"]).rglob("*") if p.is_file()}

    # When the commit fails (here: the database is gone, after the task's retries), nothing else is published.
    import sqlalchemy as sa

    def database_gone(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is gone"))

    monkeypatch.setattr("pipelines.publication.publish_assignments", database_gone)
    _set(config_path, model={"random_state": 5})
    state = segment_customers(str(config_path), return_state=True)
    assert state.is_failed()

    client = _client(config_path)
    assert int(client.get_model_version_by_alias("segml-sample", "champion").version) == first["model_version"]
    failed = client.search_runs([client.get_experiment_by_name("sample").experiment_id],
                                filter_string="attributes.status = 'FAILED'")
    assert len(failed) == 1
    assert {p: p.read_bytes() for p in published} == published
    assert {p for p in Path(first["output_dir"]).rglob("*") if p.is_file()} == set(published)


def test_without_a_database_a_past_date_does_not_move_the_champion_back(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path, publish={"database": False})
    first = segment_customers(str(config_path))
    with pytest.raises(SegmlError, match="as of 2024-01-01 .* would move it back in time"):
        segment_customers(str(config_path), as_of=dt.date(2023, 12, 1))
    client = _client(config_path)
    assert client.get_model_version_by_alias("segml-sample", "champion").run_id == first["run_id"]
    # Refused before fitting: no model version was registered for the refused date.
    assert len(client.search_model_versions("name = 'segml-sample'")) == 1
    forced = segment_customers(str(config_path), as_of=dt.date(2023, 12, 1), force=True)
    assert client.get_model_version_by_alias("segml-sample", "champion").run_id == forced["run_id"]


def test_a_month_later_without_new_purchases_keeps_every_id(prefect_harness, tmp_path):
    # Everyone only ages by a month: the medians move (recency grows), the segments' customers do not.
    config_path = write_flow_config(tmp_path)
    first = segment_customers(str(config_path))
    later = segment_customers(str(config_path), as_of=dt.date(2024, 2, 1))
    assert {s["segment_id"] for s in later["segments"]} <= {s["segment_id"] for s in first["segments"]}
    matching = pd.read_csv(Path(later["output_dir"]) / "segment_matching.csv")
    assert "new" not in set(matching["outcome"])
    assert later["migration"]["changed_share"] < 0.2
