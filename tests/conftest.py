"""Shared fixtures: a hand-worked purchase frame, sample purchases and the real Online Retail lines."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from segml.config import SegmlConfig, parse_config

# No network here and no telemetry wanted from test runs; set before MLflow or Prefect is imported.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

REPO = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = REPO.parent / "shared" / "data" / "online_retail_240k.parquet"

HAND_AS_OF = dt.date(2024, 3, 1)

# order_id, customer_id, timestamp, quantity, unit_price -- all text, as a CSV export gives them.
HAND_LINES = [
    ("O1", "A", "2024-01-01 10:00", "2", "10.0"),      # A: order O1 worth 25
    ("O1", "A", "2024-01-01 10:00", "1", "5.0"),
    ("O2", "A", "2024-02-15 09:00", "1", "30"),         # A: order O2 worth 30, the last purchase
    ("CO1", "A", "2024-01-05 12:00", "1", "5.0"),       # A: cancellation of 5 (prefix C)
    ("O3", "B", "2024-02-29 23:59", "3", "4"),          # B: one order of 12 the day before as-of
    ("O4", "B", "2024-03-01 00:00", "1", "99"),         # B: on the as-of date -> after_as_of
    ("O5", "C", "2023-12-01 08:00", "1", "100"),        # C: two orders on one day
    ("O6", "C", "2023-12-01 17:00", "1", "50"),
    ("C9", "D", "2024-01-10 10:00", "-1", "10"),        # D: only a return -> no_purchases
    ("O7", "E", "2024-01-20 10:00", "1", "10"),         # E: buys 10, returns 20 -> non_positive_spend
    ("O8", "E", "2024-01-21 10:00", "-2", "10"),
    ("O9", None, "2024-01-02 10:00", "1", "10"),        # rejected: missing_customer_id
    ("O10", "A", "", "1", "10"),                        # rejected: missing_timestamp
    ("O11", "A", "31/02/2024", "1", "10"),              # rejected: unparseable_timestamp
    ("O12", "A", "2024-01-03 10:00", None, "10"),       # rejected: missing_amount
    ("O13", "A", "2024-01-03 10:00", "1", "abc"),       # rejected: non_numeric_amount
    ("O14", "A", "2024-01-03 10:00", "1", "0"),         # rejected: zero_price
    ("O15", "A", "2024-01-03 10:00", "1", "-3"),        # rejected: negative_price
    ("O16", "A", "2024-01-03 10:00", "0", "3"),         # rejected: zero_quantity
    ("O3", "B", "2024-02-29 23:59", "3", "4"),          # rejected: duplicate_line (of line 5)
]

# Worked out by hand from HAND_LINES as of 2024-03-01 (2024 is a leap year).
HAND_FEATURES = pd.DataFrame(
    {
        "recency_days": [15, 1, 91],          # Feb 15, Feb 29, Dec 1 -> Mar 1
        "frequency": [2, 1, 2],               # A: O1, O2; B: O3; C: O5, O6
        "monetary": [50.0, 12.0, 150.0],      # A: 25 + 30 - 5
        "tenure_days": [60, 1, 91],           # A: Jan 1 -> Mar 1
        "avg_order_value": [25.0, 12.0, 75.0],
    },
    index=pd.Index(["A", "B", "C"], name="customer_id"),
)


def pdf_pages(pdf: Path) -> int:
    """The number of pages of the PDF file ``pdf``."""
    return len(re.findall(rb"/Type\s*/Page\b", pdf.read_bytes()))


def hand_frame() -> pd.DataFrame:
    return pd.DataFrame(HAND_LINES, columns=["invoice", "client", "when", "qty", "price"], dtype=object)


def hand_config(**overrides) -> SegmlConfig:
    raw = {
        "data": {
            "path": "unused.csv",
            "columns": {"customer_id": "client", "timestamp": "when", "order_id": "invoice",
                        "quantity": "qty", "unit_price": "price"},
            "timestamp_format": "%Y-%m-%d %H:%M",
        },
        "window": {"as_of": HAND_AS_OF.isoformat()},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            raw.setdefault(section, {})[leaf] = value
        else:
            raw[section] = value
    return parse_config(raw)


@pytest.fixture
def hand_lines() -> pd.DataFrame:
    return hand_frame()


@pytest.fixture(scope="session")
def online_retail_path() -> Path:
    if not ONLINE_RETAIL.exists():
        pytest.skip(f"the Online Retail data is not at {ONLINE_RETAIL} (put the shared folder beside the checkout)")
    return ONLINE_RETAIL


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    import sqlalchemy as sa

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'segml[postgres]')")
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"no PostgreSQL reachable at 127.0.0.1:5432 ({str(exc.orig).splitlines()[0]})")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (starting one takes about 15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_flow_config(folder: Path, n_customers: int = 600, seed: int = 0, customers: bool = False,
                      **overrides) -> Path:
    """Sample purchases and a configuration in ``folder`` whose MLflow store and outputs live there too;
    with ``customers`` the sample's customers file (country, age) is configured as well."""
    import yaml

    from segml.sample import write_sample

    path = write_sample(folder, n_customers=n_customers, seed=seed)
    raw = yaml.safe_load(path.read_text())
    if not customers:
        raw.pop("customers", None)
    raw["quality"] = {"stability_resamples": 4}
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
