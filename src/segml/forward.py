"""What customers did after the as-of date: the outcomes forward validity is measured on.

The I/O side of :func:`segml.schemes.forward_validity`: the purchases of the
``horizon`` days from the as-of date, read through the same data contract as
the features (the same rejections, returns and window rules), as one row per
customer who bought.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from segml.config import SegmlConfig, WindowConfig


def horizon_closed(last_purchase: dt.date | None, as_of: dt.date, horizon_days: int) -> bool:
    """Whether the data reach to the end of the horizon: a purchase on or after its last day."""
    return (horizon_days > 0 and last_purchase is not None
            and last_purchase >= as_of + dt.timedelta(days=horizon_days - 1))


#: Loggers whose warnings concern the run's own read, not the horizon's: the horizon's window holds
#: a small part of a long history by construction, and its customers' attributes are not used.
_QUIET = ("segml.validation", "segml.attributes")


@contextmanager
def _without_warnings(names: tuple[str, ...] = _QUIET) -> Iterator[None]:
    """Drop the warnings of the loggers ``names`` (kept at INFO and below) while the horizon is read."""
    class Below(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno < logging.WARNING

    below = Below()
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(below)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(below)


def future_outcomes(config: SegmlConfig, as_of: dt.date, horizon_days: int,
                    config_name: str = "the configuration") -> pd.DataFrame:
    """Per customer who bought in ``[as_of, as_of + horizon_days)``: ``bought`` (True) and ``spend``
    (net spend in the horizon, 0 or less for customers whose returns cancel their purchases).

    The horizon is read without the customers' attributes (a customer missing a numeric attribute the
    model uses still bought) and without the data contract's warnings, which would speak of the
    horizon's window (most lines fall outside it) as if it were the run's."""
    from segml.segmentation import prepare_purchases

    window = WindowConfig(as_of=as_of + dt.timedelta(days=horizon_days), lookback_days=horizon_days)
    future_config = config.model_copy(update={"window": window, "customers": None,
                                              "data": config.data.model_copy(update={"attributes": {}})})
    with tempfile.TemporaryDirectory(prefix="segml-forward-") as tmp, _without_warnings():
        purchases = prepare_purchases(future_config, config_name=config_name,
                                      rejected_file=Path(tmp) / "rejected.csv")
    returned = purchases.excluded[purchases.excluded["reason"] == "non_positive_spend"]
    spend = pd.concat([purchases.features["monetary"], returned.set_index("customer_id")["monetary"]])
    return pd.DataFrame({"bought": True, "spend": spend.astype(float)})
