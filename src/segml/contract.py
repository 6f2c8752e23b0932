"""The assignment table CRM teams import: its columns, in order (documented in the README)."""

CRM_COLUMNS = ["customer_id", "segment_id", "segment_name", "segment_probability", "recency_days", "frequency",
               "monetary", "tenure_days", "avg_order_value", "previous_segment_id", "segment_changed", "as_of",
               "run_id", "model_version"]
