"""Configuration files: every problem reported at once, with its key path and the file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from segml.config import load_config, parse_config
from segml.errors import ConfigError
from segml.sample import SAMPLE_CONFIG

GOOD = {
    "data": {
        "path": "purchases.csv",
        "columns": {"customer_id": "c", "timestamp": "t", "quantity": "q", "unit_price": "p"},
    },
}


def _with(path: str, value):
    raw = copy.deepcopy(GOOD)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


_DELETE = object()

BAD_CONFIGS = [
    (_with("modle", {}), r"modle: unknown key; allowed keys here are \['customers', 'data', 'duckdb', 'engine', 'features'"),
    (_with("model.algo", "kmeans"), r"model.algo: unknown key; allowed keys here are \['algorithm'"),
    (_with("model.algorithm", "dbscan"), r"model.algorithm: Input should be 'kmeans' or 'gmm' \(got 'dbscan'\)"),
    (_with("model.n_clusters", 1), r"model.n_clusters: Input should be greater than or equal to 2 \(got 1\)"),
    (_with("model.n_clusters", "five"), r"model.n_clusters: Input should be a valid integer.*\(got 'five'\)"),
    (_with("model.k_range", [6, 3]), r"model.k_range: needs 2 <= low <= high, got \[6, 3\]"),
    (_with("model.criterion", "bic"), r"model: criterion 'bic' needs algorithm 'gmm'"),
    (_with("model.min_segment_share", 0.7), r"model.min_segment_share: Input should be less than 0.5"),
    (_with("model.covariance_type", "round"), r"model.covariance_type: Input should be 'full'"),
    (_with("window.as_of", "yesterday"), r"window.as_of: Input should be a valid date"),
    (_with("window.lookback_days", 0), r"window.lookback_days: Input should be greater than 0"),
    (_with("features", ["recency_days"]), r"features: needs at least 2 features"),
    (_with("features", ["recency_days", "recency_days"]), r"features: lists a feature twice"),
    (_with("features", ["recency_days", "clv"]), r"features lists 'clv', which is neither a behavioural feature \['recency_days'"),
    (_with("transform.per_feature", {"monetary": "sqrt"}), r"transform.per_feature.monetary: Input should be"),
    (_with("data.columns.amount", "a"), r"data.columns: set either 'amount' or 'quantity' and 'unit_price'"),
    (_with("data.columns.unit_price", _DELETE), r"data.columns: the line's value is unknown"),
    (_with("data.columns.customer_id", _DELETE), r"data.columns.customer_id: required key is missing"),
    (_with("data.url", "sqlite:///x.db"), r"data: set exactly one of 'path'"),
    (_with("data.table", "t"), r"data: 'table' and 'query' apply to a database 'url'"),
    (_with("data.csv", {"delimiter": ";;"}), r"data.csv.delimiter: needs one character .* or 'whitespace', got ';;'"),
    (_with("naming.rules", [{"name": "X", "recency": [0.8, 0.2]}]),
     r"naming.rules.0.recency: needs 0 <= low <= high <= 1, got \[0.8, 0.2\]"),
    (_with("name", "my segments"), r"name: needs 1 to 100 letters, digits.*got 'my segments'"),
    (_with("data", _DELETE), r"data: required key is missing"),
]


@pytest.mark.parametrize("raw, match", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_each_bad_config_gets_its_message(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(raw, source="configs/bad.yaml")


def test_every_problem_is_reported_at_once_with_the_file_name(tmp_path):
    raw = _with("model.algorithm", "dbscan")
    raw["model"]["n_init"] = 0
    raw["extra"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 3 problems in the configuration:")
    for fragment in ("model.algorithm:", "model.n_init:", "extra: unknown key"):
        assert fragment in message


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  path: x.csv\n  columns: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="configuration file .*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")


def test_non_mapping_document_is_rejected():
    with pytest.raises(ConfigError, match="must hold a mapping of keys, got list"):
        parse_config([1, 2], source="x.yaml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "c.yaml").write_text(yaml.safe_dump(_with("output", {"dir": "../out"})))
    config = load_config(folder / "c.yaml")
    assert Path(config.data.path) == folder / "purchases.csv"
    assert Path(config.output.dir) == tmp_path / "out"


def test_defaults_are_what_the_readme_says():
    config = parse_config(GOOD)
    assert config.features == ["recency_days", "frequency", "monetary"]
    assert config.model.algorithm == "kmeans" and config.model.candidate_ks == list(range(2, 9))
    assert config.model.min_segment_share == 0.02
    assert config.data.returns.policy == "net" and config.data.returns.cancel_prefix == "C"
    assert parse_config(_with("model.n_clusters", 4)).model.candidate_ks == [4]


@pytest.mark.parametrize("name", ["sample.yaml", "online_retail.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "configs" / name)
    assert config.data.path.endswith((".csv", ".parquet"))


def test_shipped_sample_config_matches_the_demo_settings():
    shipped = load_config(REPO / "configs" / "sample.yaml")
    embedded = parse_config(SAMPLE_CONFIG)
    drop = {"data": {"path"}, "customers": {"path"}, "output": True, "tracking": True}
    assert shipped.model_dump(exclude=drop) == embedded.model_dump(exclude=drop)


def test_duckdb_memory_limit_takes_a_size():
    assert parse_config(_with("duckdb", {"memory_limit": "500MB"})).duckdb.memory_limit == "500MB"
    with pytest.raises(ConfigError, match="duckdb.memory_limit: String should match pattern"):
        parse_config(_with("duckdb", {"memory_limit": "lots"}))
