"""Scoring without refitting, and backfills, through the real flows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, write_flow_config
from pipelines.backfill import as_of_dates, backfill
from pipelines.score import score_customers
from pipelines.segment import segment_customers
from segml.config import load_config
from segml.contract import CRM_COLUMNS
from segml.errors import ConfigError, SegmlError
from segml.outputs import write_csv
from segml.sample import generate_purchases


def _refit_then_newcomers(folder: Path, n: int, seed: int) -> tuple[Path, dict]:
    """A published refit, then ``n`` new customers (ids ``N...``) added to its purchases."""
    config_path = write_flow_config(folder)
    refit = segment_customers(str(config_path))
    data_path = Path(load_config(config_path).data.path)
    newcomers, _ = generate_purchases(n_customers=n, seed=seed, messy=False)
    newcomers["customer_id"] = "N" + newcomers["customer_id"]
    write_csv(pd.concat([pd.read_csv(data_path, dtype=str), newcomers.astype(str)]), data_path)
    return config_path, refit


def test_scoring_assigns_known_customers_like_the_champion_and_new_ones_in_its_ids(prefect_harness, tmp_path):
    config_path, refit = _refit_then_newcomers(tmp_path, 60, seed=9)

    scored = score_customers(str(config_path))
    table = pd.read_csv(scored["assignments"], dtype={"customer_id": str}).set_index("customer_id")
    champion = pd.read_csv(refit["assignments"], dtype={"customer_id": str}).set_index("customer_id")
    assert table.reset_index().columns.tolist() == CRM_COLUMNS
    assert scored["customers"] == 660 and scored["customers_new"] == 60
    pd.testing.assert_series_equal(table.loc[champion.index, "segment_id"], champion["segment_id"])
    pd.testing.assert_series_equal(table.loc[champion.index, "segment_name"], champion["segment_name"])
    new = table[table.index.str.startswith("N")]
    assert set(new["segment_id"]) <= set(champion["segment_id"]) and new["previous_segment_id"].isna().all()
    assert (table["model_version"] == refit["model_version"]).all()
    assert Path(scored["output_dir"]) == Path(load_config(config_path).output.dir) / "sample" / "scores" / "2024-01-01"
    # The refit of the same date stays the CRM's: the scoring run is recorded, not published over it.
    assert not scored["published"] and "stays current" in scored["held_back"]
    import json

    marker = json.loads((Path(scored["output_dir"]) / "publication.json").read_text())
    assert marker["in_database"] is False and marker["source"] == "score"


@pytest.fixture
def postgres_schema(postgres_url, monkeypatch):
    """A PostgreSQL schema of its own as the CRM database (SEGML_PUBLISH_URL), dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    schema = f"segml_score_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    monkeypatch.setenv("SEGML_PUBLISH_URL", url)
    yield url
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.mark.postgres
def test_scored_customers_reach_the_crm_and_can_be_targeted(prefect_harness, tmp_path, postgres_schema):
    from segml.publish import create_engine, current_publication
    from segml.targeting import select_customers

    config_path, refit = _refit_then_newcomers(tmp_path, 40, seed=11)

    scored = score_customers(str(config_path), as_of=dt.date(2024, 1, 15))
    assert scored["published"] and scored["customers_new"] == 40
    engine = create_engine(postgres_schema)
    try:
        current = current_publication(engine, "sample")
        assert (current["run_id"], current["source"], current["as_of"]) == (scored["run_id"], "score",
                                                                          dt.date(2024, 1, 15))
        everyone = select_customers(engine, "sample", [], [])
        assert len(everyone) == 640 and set(everyone["source"]) == {"score"}
        newest = everyone[everyone["customer_id"].str.startswith("N")]
        assert len(newest) == 40 and newest["previous_segment_id"].isna().all()
        some = newest["segment_id"].iloc[0]
        picked = select_customers(engine, "sample", [some], ["as_of = 2024-01-15"])
        assert set(newest.loc[newest["segment_id"] == some, "customer_id"]) <= set(picked["customer_id"])
    finally:
        engine.dispose()
    changes = pd.read_csv(Path(scored["output_dir"]) / "changes.csv", dtype={"customer_id": str})
    assert set(changes["customer_id"]) >= set(newest["customer_id"])
    # A refit of an earlier date does not take the CRM back from the newer scoring run.
    with pytest.raises(SegmlError, match="--force"):
        segment_customers(str(config_path), as_of=dt.date(2024, 1, 1))
    assert refit["model_version"] == scored["model_version"]


def test_scoring_before_any_refit_says_what_to_do(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path)
    with pytest.raises(SegmlError, match="no published segmentation for 'segml-sample'.*run `segml run`"):
        score_customers(str(config_path))


def test_a_backfill_step_held_back_by_a_gate_is_reported_with_the_published_ones(prefect_harness, tmp_path):
    from pipelines.backfill import BackfillError

    config_path = write_flow_config(tmp_path, gates={"max_changed_share": 0.0})  # skipped on a first run
    with pytest.raises(BackfillError, match=r"1 of 2 backfill steps were not published.*max_changed_share") as held:
        backfill(str(config_path), dt.date(2023, 11, 1), dt.date(2023, 12, 1), "month")
    first, second = held.value.results
    assert (first["as_of"], first["promoted"]) == ("2023-11-01", True) and first["renamed"] == []
    assert (second["as_of"], second["promoted"]) == ("2023-12-01", False)
    assert second["error"].startswith("1 quality gate failed: max_changed_share")


@pytest.mark.parametrize("every, expected", [
    ("month", ["2011-01-31", "2011-02-28", "2011-03-31"]),
    ("2w", ["2011-01-31", "2011-02-14", "2011-02-28", "2011-03-14", "2011-03-28"]),
    ("30d", ["2011-01-31", "2011-03-02"]),
])
def test_as_of_dates_step_through_the_range(every, expected):
    dates = as_of_dates(dt.date(2011, 1, 31), dt.date(2011, 3, 31), every)
    assert [d.isoformat() for d in dates] == expected


@pytest.mark.parametrize("every, end, match", [
    ("fortnight", dt.date(2011, 3, 1), "is not a period"),
    ("month", dt.date(2010, 1, 1), "is before --from"),
    ("0d", dt.date(2011, 3, 1), "at least one"),
])
def test_bad_backfill_ranges_are_refused(every, end, match):
    with pytest.raises(ConfigError, match=match):
        as_of_dates(dt.date(2011, 1, 31), end, every)


@pytest.mark.slow
def test_monthly_backfill_on_online_retail_gives_a_migration_table_per_step(prefect_harness, online_retail_path,
                                                                            tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "online_retail.yaml").read_text())
    raw["data"]["path"] = str(online_retail_path)
    raw["output"] = {"dir": str(tmp_path / "outputs")}
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_location": str(tmp_path / "art")}
    raw["quality"] = {"stability_resamples": 3}
    config_path = tmp_path / "online_retail.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    results = backfill(str(config_path), dt.date(2011, 3, 1), dt.date(2011, 6, 1), "month")
    assert [r["as_of"] for r in results] == ["2011-03-01", "2011-04-01", "2011-05-01", "2011-06-01"]
    assert all(r["promoted"] for r in results)
    for previous, step in zip(results, results[1:]):
        counts = pd.read_csv(Path(step["output_dir"]) / "migration_counts.csv")
        assert counts.drop(columns="previous_segment_id").to_numpy().sum() == step["migration"]["customers_in_both"]
        assert step["migration"]["customers_in_both"] > 0.8 * previous["customers"]
        # Ids carry over: most of a step's segments keep an id of the step before.
        kept = {s["segment_id"] for s in step["segments"]} & {s["segment_id"] for s in previous["segments"]}
        assert len(kept) >= min(len(step["segments"]), len(previous["segments"])) - 1
    assert not (Path(results[0]["output_dir"]) / "migration_counts.csv").exists()
    # No published name breaks its rule on its median customer, at any step; renames are recorded.
    from segml.profiles import contradictions

    for step in results:
        segments = pd.read_csv(Path(step["output_dir"]) / "segments.csv")
        assert contradictions(segments) == [], step["as_of"]
        assert segments["segment_name"].is_unique
        matching = pd.read_csv(Path(step["output_dir"]) / "segment_matching.csv")
        renamed = matching[matching["outcome"] == "renamed"]
        assert [{"segment_id": r.segment_id, "from": r.previous_segment_name, "to": r.segment_name,
                 "why": r.rename_reason} for r in renamed.itertuples()] == step["renamed"]
