"""What customers did after the as-of date: the outcomes forward validity is measured on.

The I/O side of :func:`segml.schemes.forward_validity`: the purchases of the
``horizon`` days from the as-of date, read through the same data contract as
the features (the same rejections, returns and window rules), as one row per
customer who bought.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pandas as pd

from segml.config import SegmlConfig, WindowConfig


def horizon_closed(last_purchase: dt.date | None, as_of: dt.date, horizon_days: int) -> bool:
    """Whether the data reach to the end of the horizon: a purchase on or after its last day."""
    return (horizon_days > 0 and last_purchase is not None
            and last_purchase >= as_of + dt.timedelta(days=horizon_days - 1))


def future_outcomes(config: SegmlConfig, as_of: dt.date, horizon_days: int,
                    config_name: str = "the configuration") -> pd.DataFrame:
    """Per customer who bought in ``[as_of, as_of + horizon_days)``: ``bought`` (True) and ``spend``
    (net spend in the horizon, 0 or less for customers whose returns cancel their purchases)."""
    from segml.segmentation import prepare_purchases

    window = WindowConfig(as_of=as_of + dt.timedelta(days=horizon_days), lookback_days=horizon_days)
    future_config = config.model_copy(update={"window": window})
    with tempfile.TemporaryDirectory(prefix="segml-forward-") as tmp:
        purchases = prepare_purchases(future_config, config_name=config_name,
                                      rejected_file=Path(tmp) / "rejected.csv")
    returned = purchases.excluded[purchases.excluded["reason"] == "non_positive_spend"]
    spend = pd.concat([purchases.features["monetary"], returned.set_index("customer_id")["monetary"]])
    return pd.DataFrame({"bought": True, "spend": spend.astype(float)})
