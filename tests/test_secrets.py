"""Secrets: one masking function for every URL, configurations that keep passwords out of files, and a run
that must not write a planted password anywhere."""

from __future__ import annotations

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
