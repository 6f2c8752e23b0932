"""The engine interface: where purchases are read, checked, turned into features and scored.

An engine is one module named in :data:`ENGINES` (``engine:`` in the
configuration picks it) with a function ``open_engine(config)`` that returns
an :class:`Engine`. Its steps run in this order on one source of purchases:
:meth:`~Engine.read`, :meth:`~Engine.classify_lines`, then any of
:meth:`~Engine.features`, :meth:`~Engine.rejected_lines` and
:meth:`~Engine.score`, and :meth:`~Engine.write` for what ``score`` returned.
The data contract and the features are written once as SQL
(:mod:`segml.validation`, :mod:`segml.features`, spelled per engine by
:mod:`segml.dialects`), so every engine classifies every line and computes
every feature by the same rules.

Nothing here imports an engine: :func:`open_engine` loads the configured
module by name, so the core never depends on an optional engine (PySpark)
and an engine may import any part of the core.
"""

from __future__ import annotations

import datetime as dt
import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from segml.config import DataConfig, SegmlConfig, WindowConfig
    from segml.models import SegmentModel
    from segml.validation import ContractReport

#: The module of each engine, by its name in ``engine:``.
ENGINES: dict[str, str] = {"duckdb": "segml.duckdb_engine", "spark": "segml.spark_engine"}

#: The columns :meth:`Engine.score` adds to every customer's features.
SCORE_COLUMNS = ["segment", "segment_id", "segment_name", "segment_probability"]


class Engine(ABC):
    """One engine's session over one source of purchases; a context manager that frees what the
    steps kept (:meth:`close`)."""

    #: The name in ``engine:``.
    name: str = ""

    @abstractmethod
    def read(self, data: DataConfig, config_name: str = "the configuration",
             frame: pd.DataFrame | None = None) -> None:
        """Make the configured source, or ``frame`` (purchase lines, every column text), the lines to check."""

    @abstractmethod
    def classify_lines(self, data: DataConfig, window: WindowConfig) -> ContractReport:
        """Apply the data contract to every line read and fix the as-of window; the counts add up to
        the lines read."""

    @abstractmethod
    def features(self, as_of: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(features, excluded)`` as :func:`segml.features.compute_features` returns them."""

    @abstractmethod
    def rejected_lines(self, file: Path | None = None) -> pd.DataFrame | None:
        """The rejected lines (line number, reason, the source's own columns) in line order; with
        ``file`` they are written there as CSV instead and None is returned."""

    @abstractmethod
    def score(self, model: SegmentModel, segments: pd.DataFrame, as_of: dt.date) -> Any:
        """Every customer to segment as of ``as_of`` with its features and :data:`SCORE_COLUMNS`, as
        the engine's own table (see :func:`assign_frame`); it stays in the engine."""

    @abstractmethod
    def write(self, table: Any, path: str | Path | None = None, url: str | None = None,
              table_name: str | None = None, mode: str = "overwrite") -> None:
        """Write a table from :meth:`score` as Parquet to ``path`` and/or to the database table
        ``table_name`` at ``url``."""

    def close(self) -> None:
        """Free what the steps kept (cached tables); the default keeps nothing."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_engine(config: SegmlConfig) -> Engine:
    """The engine ``config.engine`` names, opened with its settings."""
    module = importlib.import_module(ENGINES[config.engine])
    return module.open_engine(config)


def segment_lookup(segments: pd.DataFrame, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """The segment ids and names of the model's segment numbers 0..n-1 (``segments``: columns
    ``segment``, ``segment_id``, ``segment_name``)."""
    by_number = segments.set_index("segment").reindex(range(n_segments))
    return by_number["segment_id"].to_numpy(), by_number["segment_name"].to_numpy()


def assign_frame(features: pd.DataFrame, model: SegmentModel, ids: np.ndarray, names: np.ndarray,
                 with_model_space: bool = False) -> pd.DataFrame:
    """``features`` (one row per customer) with :data:`SCORE_COLUMNS` added: the model's segment
    number, its id and name (``ids``, ``names`` from :func:`segment_lookup`) and the probability of
    the segment. With ``with_model_space`` the coordinates in the model's space too, as ``z_<feature>``.
    """
    Z = model.transform(features)
    labels = model.labels_of(Z)
    out = features.copy()
    out["segment"] = labels.astype("int32")
    out["segment_id"] = ids[labels]
    out["segment_name"] = names[labels]
    out["segment_probability"] = model.proba_of(Z).max(axis=1)
    if with_model_space:
        for i, feature in enumerate(model.features):
            out[f"z_{feature}"] = Z[:, i]
    return out
