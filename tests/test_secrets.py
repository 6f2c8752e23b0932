"""Secrets: one masking function for every URL, configurations that keep passwords out of files, and a run
that must not write a planted password anywhere."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from segml.config import data_url, parse_config
from segml.errors import ConfigError
from segml.secrets import mask_config, mask_config_text, mask_url

URLS = [
    ("postgresql+psycopg://crm:s3cret@db:5432/crm", "postgresql+psycopg://crm:***@db:5432/crm"),
    ("postgresql://crm@db/crm?sslmode=require&password=s3cret", "postgresql://crm@db/crm?sslmode=require&password=***"),
    ("postgresql://crm@db/crm?SSLPassword=s3cret&application_name=segml",
     "postgresql://crm@db/crm?SSLPassword=***&application_name=segml"),
    ("https://mlflow.example.com/?token=abc&x=1", "https://mlflow.example.com/?token=***&x=1"),
    ("http://h/api?access_token=a;api_key=b&key=c&secret=d&passwd=e&pwd=f",
     "http://h/api?access_token=***;api_key=***&key=***&secret=***&passwd=***&pwd=***"),
    ("http://user:p@ss@mlflow:5000", "http://user:***@mlflow:5000"),  # requests reads up to the last '@'
    ("postgresql://a@b:pw@host/db", "postgresql://a@b:***@host/db"),  # SQLAlchemy: user up to the first ':'
    ("postgresql://u:pa/ss@host/db", "postgresql://u:***@host/db"),
    ("cannot connect to postgresql://u:pw@h/db: 'host=h password=pw'",
     "cannot connect to postgresql://u:***@h/db: 'host=h password=***'"),
]
UNCHANGED = ["sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "postgresql+psycopg://postgres@127.0.0.1:5432/test",
             "s3://bucket/a@b", "postgresql://h/db?sslkey=/etc/key.pem&options=-csearch_path%3Dx", "plain text"]


@pytest.mark.parametrize("url, masked", URLS, ids=[u for u, _ in URLS])
def test_mask_url_hides_userinfo_passwords_and_secret_parameters(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize("text", UNCHANGED)
def test_mask_url_leaves_urls_without_secrets_alone(text):
    assert mask_url(text) == text


def test_mask_config_masks_urls_and_values_of_secret_keys_at_any_depth():
    config = {"data": {"url": "postgresql://u:pw@h/db", "table": "t"},
              "spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "AKIA", "spark.app.name": "x"}},
              "credentials": {"user": "u", "api_token": ["a", "b"]}, "password": None, "tracking": {"uri": None}}
    assert mask_config(config) == {
        "data": {"url": "postgresql://u:***@h/db", "table": "t"},
        "spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "***", "spark.app.name": "x"}},
        "credentials": {"user": "***", "api_token": ["***", "***"]}, "password": None, "tracking": {"uri": None}}


CONFIG_TEXT = """\
# Purchases from the shop's database.
data:
  url: postgresql+psycopg://shop:S3cr3t@db/shop?sslpassword=S3cr3t   # read-only user
  table: purchases
spark:
  conf:
    "spark.hadoop.fs.s3a.secret.key": S3cr3t
"""


def test_config_text_is_masked_in_place_keeping_comments():
    masked = mask_config_text(CONFIG_TEXT)
    assert "S3cr3t" not in masked
    assert masked.splitlines()[0] == "# Purchases from the shop's database."
    assert "# read-only user" in masked
    assert yaml.safe_load(masked) == mask_config(yaml.safe_load(CONFIG_TEXT))


def test_config_text_with_a_secret_only_parsing_finds_is_re_emitted_masked():
    text = "data: {path: x.csv}\nspark: {conf: {token: S3cr3t}}\n"
    masked = mask_config_text(text)
    assert "S3cr3t" not in masked
    assert yaml.safe_load(masked) == {"data": {"path": "x.csv"}, "spark": {"conf": {"token": "***"}}}


COLUMNS = {"customer_id": "c", "timestamp": "t", "amount": "a"}


@pytest.mark.parametrize("url", ["postgresql://crm:pw@db/crm", "postgresql://crm@db/crm?password=pw",
                                 "postgresql://crm@db/crm?Token=pw"])
def test_publish_url_with_any_password_is_refused(url):
    raw = {"data": {"path": "x.csv", "columns": COLUMNS}, "publish": {"url": url}}
    with pytest.raises(ConfigError, match=r"publish.url: holds a password or a secret query parameter") as info:
        parse_config(raw)
    assert "pw" not in str(info.value).replace("postgresql", "")


def test_data_url_with_a_password_is_accepted_and_masked_in_messages():
    raw = {"data": {"url": "postgresql://u:S3cr3t@h/db", "table": "t", "columns": COLUMNS}}
    assert parse_config(raw).data.url == "postgresql://u:S3cr3t@h/db"  # the driver needs it
    raw["tracking"] = {"uri": ["http://u:S3cr3t@mlflow:5000"]}
    with pytest.raises(ConfigError, match=r"tracking.uri: Input should be a valid string") as info:
        parse_config(raw)
    assert "http://u:***@mlflow:5000" in str(info.value) and "S3cr3t" not in str(info.value)


def test_data_url_env_names_the_variable_holding_the_url():
    config = parse_config({"data": {"url_env": "SHOP_DB_URL", "table": "t", "columns": COLUMNS}})
    assert config.data.url is None
    assert data_url(config.data, {"SHOP_DB_URL": "sqlite:///shop.db"}) == "sqlite:///shop.db"
    with pytest.raises(ConfigError, match=r"data.url_env names the environment variable 'SHOP_DB_URL', which is "
                                          r"not set; export SHOP_DB_URL="):
        data_url(config.data, {})


BAD_SOURCES = [
    ({"path": "x.csv", "url_env": "DB"}, r"data: set exactly one of 'path'.*'url_env'"),
    ({"url": "sqlite:///x.db", "url_env": "DB", "table": "t"}, r"data: set exactly one of 'path'"),
    ({"url_env": "DB"}, r"data: a database source needs exactly one of 'table' or 'query'"),
    ({"url_env": "not a name", "table": "t"}, r"data.url_env: String should match pattern"),
]


@pytest.mark.parametrize("data, match", BAD_SOURCES, ids=[m.split(":")[1].strip()[:30] for _, m in BAD_SOURCES])
def test_each_bad_source_gets_its_message(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"data": {**data, "columns": COLUMNS}})


@pytest.mark.parametrize("name", ["a/b", "team:segments", "..", ".", " ", "a/../b"])
def test_registered_model_names_mlflow_refuses_are_refused_with_the_config(name):
    raw = {"data": {"path": "x.csv", "columns": COLUMNS}, "tracking": {"registered_model": name}}
    with pytest.raises(ConfigError, match=r"tracking.registered_model: MLflow cannot register a model named"):
        parse_config(raw)


def test_registered_model_names_mlflow_accepts_are_accepted():
    raw = {"data": {"path": "x.csv", "columns": COLUMNS}, "tracking": {"registered_model": "segml-shop.v2 EU"}}
    assert parse_config(raw).registered_model_name == "segml-shop.v2 EU"


def test_a_database_source_is_read_from_the_url_in_the_environment(tmp_path, monkeypatch, hand_lines):
    import sqlalchemy as sa

    from conftest import hand_config
    from segml.sources import connect, register_source

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    hand_lines.to_sql("purchases", engine, index=False)
    engine.dispose()
    config = hand_config(data={**hand_config().data.model_dump(exclude={"path"}), "url_env": "SHOP_DB_URL",
                               "table": "purchases"})
    monkeypatch.setenv("SHOP_DB_URL", f"sqlite:///{tmp_path / 'shop.db'}")
    con = connect()
    assert register_source(con, config.data) == ["invoice", "client", "when", "qty", "price"]
    assert con.execute("SELECT count(*) FROM raw_purchases").fetchone()[0] == len(hand_lines)


def test_an_unreachable_source_is_named_with_its_secrets_masked():
    pytest.importorskip("psycopg")
    from conftest import hand_config
    from segml.errors import InputDataError
    from segml.sources import connect, register_source

    url = "postgresql+psycopg://shop:S3cr3t@127.0.0.1:9/shop?sslpassword=S3cr3t&connect_timeout=5"
    config = hand_config(data={**hand_config().data.model_dump(exclude={"path"}), "url": url, "table": "t"})
    with pytest.raises(InputDataError, match=r"postgresql\+psycopg://shop:\*\*\*@127.0.0.1:9/shop\?") as info:
        register_source(connect(), config.data)
    assert "S3cr3t" not in str(info.value)


# --- a run with planted secrets -----------------------------------------------------------------------

SECRET = "S3cr3tPlanted"


def _texts(path: Path):
    """Every text a file may hold: its bytes, a PDF's inflated streams, a Parquet table's values."""
    import re
    import zlib

    raw = path.read_bytes()
    yield raw
    if path.suffix == ".pdf":
        for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", raw, re.S):
            try:
                yield zlib.decompress(stream)
            except zlib.error:
                pass
    elif path.suffix == ".parquet":
        yield pd.read_parquet(path).to_csv().encode()


def _files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file()
            and any(secret.encode() in text for text in _texts(p))]


@pytest.fixture
def planted_schema(postgres_url):
    """A schema of its own in the test database, with a few hundred purchase lines; dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    from segml.sample import generate_purchases

    schema = f"segml_secrets_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(postgres_url)
    lines, _ = generate_purchases(n_customers=40, seed=3, messy=False)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
        lines.astype(str).to_sql("purchases", connection, schema=schema, index=False)
    yield schema, len(lines)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.mark.slow
def test_a_planted_secret_appears_nowhere_in_what_a_run_leaves(prefect_harness, planted_schema, tmp_path,
                                                                monkeypatch, caplog, capfd):
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    from conftest import write_flow_config
    from pipelines.segment import segment_customers
    from segml.config import load_config

    schema, n_lines = planted_schema
    server = "127.0.0.1:5432/test"
    config_path = write_flow_config(tmp_path, model={"n_clusters": 3},
                                    spark={"conf": {"spark.hadoop.fs.s3a.secret.key": SECRET}})
    raw = yaml.safe_load(config_path.read_text())
    raw["data"].pop("path")
    raw["data"].update(url=f"postgresql+psycopg://postgres:{SECRET}@{server}?sslpassword={SECRET}",
                       query=f"SELECT * FROM {schema}.purchases")
    config_path.write_text("# planted: a password in data.url\n" + yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("SEGML_PUBLISH_URL", f"postgresql+psycopg://postgres:{SECRET}@{server}"
                                            f"?options=-csearch_path%3D{schema}&password={SECRET}")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("prefect").addHandler(caplog.handler)  # Prefect's loggers do not all propagate
    try:
        summary = segment_customers(str(config_path))
    finally:
        logging.getLogger("prefect").removeHandler(caplog.handler)

    # The secrets were used: the source was read from PostgreSQL and the assignments published there.
    assert summary["rows_read"] == n_lines
    assert summary["database"] == f"postgresql+psycopg://postgres:***@{server}?options=-csearch_path%3D{schema}" \
                                  "&password=***"
    config = load_config(config_path)
    output = Path(summary["output_dir"])
    copied = (output / "config" / config_path.name).read_text()
    assert copied.startswith("# planted: a password in data.url\n") and "postgres:***@" in copied
    messages = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any("published" in m and "postgres:***@" in m for m in messages)

    assert _files_holding(output, SECRET) == []
    client = MlflowClient(tracking_uri=config.tracking.uri, registry_uri=config.tracking.uri)
    run = client.get_run(summary["run_id"])
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert run.data.params["data.url"] == f"postgresql+psycopg://postgres:***@{server}?sslpassword=***"
    for each in [run, *children]:
        assert [k for k, v in {**each.data.params, **each.data.tags}.items() if SECRET in v] == []
    logged = Path(mlflow.artifacts.download_artifacts(run_id=summary["run_id"], artifact_path="",
                                                      dst_path=str(tmp_path / "run"),
                                                      tracking_uri=config.tracking.uri))
    assert (logged / "config" / "resolved.yaml").exists() and _files_holding(logged, SECRET) == []
    version = client.get_model_version(config.registered_model_name, str(summary["model_version"]))
    assert [k for k, v in version.tags.items() if SECRET in v] == []
    # Everything MLflow stored: the artifact root (run files and the logged model) and the store's database.
    assert _files_holding(Path(config.tracking.artifact_location), SECRET) == []
    assert SECRET.encode() not in Path(config.tracking.uri.removeprefix("sqlite:///")).read_bytes()
    assert [m for m in messages if SECRET in m] == []
    assert SECRET not in repr(summary)
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err
