"""segml compare run for real: schemes fitted on the same customers beside the RFM baselines."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import write_flow_config
from pipelines.compare import compare_schemes, read_schemes, write_scheme_config
from segml.config import load_config
from segml.errors import ConfigError


def _schemes(tmp_path: Path) -> Path:
    path = tmp_path / "schemes.yaml"
    path.write_text(yaml.safe_dump({"schemes": {
        "kmeans": {},
        "gmm-4": {"model": {"algorithm": "gmm", "criterion": "bic", "covariance_type": "diag",
                            "k_range": [3, 5]}, "features": ["recency_days", "frequency", "monetary",
                                                              "tenure_days"]}}}, sort_keys=False))
    return path


@pytest.mark.slow
def test_compare_fits_every_scheme_on_the_same_customers_beside_the_baselines(prefect_harness, tmp_path):
    config_path = write_flow_config(tmp_path, quality={"stability_resamples": 2, "forward_horizon_days": 28})
    summary = compare_schemes(str(config_path), str(_schemes(tmp_path)), as_of=dt.date(2023, 12, 1))
    table = pd.DataFrame(summary["table"])
    assert table["scheme"].tolist()[:2] == ["kmeans", "gmm-4"]
    assert table["kind"].tolist() == ["scheme", "scheme", "baseline", "baseline"]
    assert table["scheme"].iloc[3] == "RFM grid" and table["scheme"].iloc[2].startswith("RFM score, ")
    assert table["homogeneity_common"].notna().all() and table["forward.auc_repurchase"].notna().all()
    assert table["stability_ari"].iloc[:2].notna().all() and table["stability_ari"].iloc[2:].isna().all()
    for column in ("homogeneity_common", "forward.r2_spend"):  # exactly the best row(s) marked
        assert table.loc[table[f"best_{column}"], column].eq(table[column].max()).all()
    # scores in each scheme's own space describe it but rank nothing: no best marked
    assert "best_homogeneity" not in table and "best_silhouette" not in table
    assert (Path(summary["output_dir"]) / "comparison.csv").exists()
    config = load_config(config_path)
    client = MlflowClient(tracking_uri=config.tracking.uri)
    children = client.search_runs([client.get_experiment_by_name("sample-compare").experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert sorted(r.info.run_name for r in children) == ["gmm-4", "kmeans"]
    files = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"segments.csv", "candidates.csv", "plots"} <= files
    # the sample's segmentation experiment holds no comparison run
    assert client.get_experiment_by_name("sample") is None


def test_a_scheme_is_written_as_a_configuration_of_its_own(tmp_path):
    config_path = write_flow_config(tmp_path)
    written = write_scheme_config(config_path, _schemes(tmp_path), "gmm-4")
    config = load_config(written)
    assert written.name == f"{config_path.stem}.gmm-4.yaml"
    # a name of its own: running it publishes a segmentation of its own, not over the configuration's
    assert config.name == f"{load_config(config_path).name}-gmm-4"
    assert config.model.algorithm == "gmm" and config.model.k_range == (3, 5)
    assert list(config.features) == ["recency_days", "frequency", "monetary", "tenure_days"]
    assert config.data.path == load_config(config_path).data.path  # the data stay the configuration's
    with pytest.raises(ConfigError, match=r"no scheme 'nope' .* the schemes are \['gmm-4', 'kmeans'\]"):
        write_scheme_config(config_path, _schemes(tmp_path), "nope")


def test_a_scheme_may_not_move_the_data_or_the_outputs(tmp_path):
    path = tmp_path / "schemes.yaml"
    path.write_text(yaml.safe_dump({"schemes": {"elsewhere": {"data": {"path": "other.csv"}}}}))
    with pytest.raises(ConfigError, match=r"scheme 'elsewhere' overrides \['data'\]; a scheme may override only"):
        read_schemes(path)
