"""What segml promises its consumers: the assignment table's columns and the limits of its values.

Defined once here so the data contract (:mod:`segml.validation`) and the
publication (:mod:`segml.publish`) cannot disagree.
"""

#: The columns of the assignment table CRM teams import, in order (documented in the README).
CRM_COLUMNS = ["customer_id", "segment_id", "segment_name", "segment_probability", "recency_days", "frequency",
               "monetary", "tenure_days", "avg_order_value", "previous_segment_id", "segment_changed", "as_of",
               "run_id", "model_version"]

#: The longest customer id, in characters: the published table's ``customer_id`` is ``varchar(200)``.
#: Lines with a longer id are rejected as ``customer_id_too_long`` on every engine.
MAX_ID_LENGTH = 200
