"""The segml configuration: YAML validated by pydantic models.

``load_config`` is the only function that reads a configuration file. Every
problem in a file (unknown keys, wrong types, impossible values) is reported
at once, each with its key path, in one :class:`~segml.errors.ConfigError`.
Relative paths in the file are resolved against the file's own folder, so a
configuration means the same thing whatever the working directory.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from segml.contract import CRM_COLUMNS
from segml.dialects import java_datetime_pattern
from segml.engine import ENGINES
from segml.errors import ConfigError
from segml.secrets import mask_config, mask_url

Feature = Literal["recency_days", "frequency", "monetary", "tenure_days", "avg_order_value"]
FEATURES: tuple[str, ...] = get_args(Feature)
TransformMethod = Literal["log", "rank", "none"]
Criterion = Literal["silhouette", "calinski_harabasz", "davies_bouldin", "bic"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


#: ``data.csv.delimiter`` for fields separated by runs of spaces and tabs (fixed-width exports).
WHITESPACE = "whitespace"


class CsvOptions(_Strict):
    """How to read a CSV source.

    ``delimiter`` is one character, or ``whitespace`` for fields separated by
    runs of spaces and tabs (leading spaces ignored, no quoting).
    """

    delimiter: str = ","
    header: bool = True
    quote: str = Field('"', min_length=1, max_length=1)
    encoding: Literal["utf-8", "latin-1", "utf-16"] = "utf-8"

    @field_validator("delimiter")
    @classmethod
    def _one_character_or_whitespace(cls, value: str) -> str:
        if len(value) != 1 and value != WHITESPACE:
            raise ValueError(f"needs one character (',', ';', '|', a tab) or {WHITESPACE!r}, got {value!r}")
        return value


class ColumnMap(_Strict):
    """Names of the source's columns. Either ``amount`` or both ``quantity`` and ``unit_price``."""

    customer_id: str
    timestamp: str
    order_id: str | None = None
    amount: str | None = None
    quantity: str | None = None
    unit_price: str | None = None

    @model_validator(mode="after")
    def _amount_or_quantity_times_price(self) -> ColumnMap:
        has_amount = self.amount is not None
        has_parts = self.quantity is not None or self.unit_price is not None
        if has_amount and has_parts:
            raise ValueError("set either 'amount' or 'quantity' and 'unit_price', not both")
        if not has_amount and (self.quantity is None or self.unit_price is None):
            raise ValueError(
                "the line's value is unknown: set 'amount', or both 'quantity' and 'unit_price'"
            )
        return self


class ReturnsConfig(_Strict):
    """What to do with cancellations and returns.

    A line is a return when its amount (or quantity) is negative, or when its
    order id starts with ``cancel_prefix``. ``net``: returns are subtracted from
    the customer's spend and never count as orders. ``exclude``: returns are
    rejected with the reason ``return_excluded``.
    """

    policy: Literal["net", "exclude"] = "net"
    cancel_prefix: str | None = "C"


#: Text values that mean "no value" in a customer id, timestamp, amount or order id (``data.null_markers``).
NULL_MARKERS = ["NULL", "null", "None", "nan", "NaN", "N/A", "#N/A"]
#: The default earliest of ``data.plausible_dates``: lines dated before it are rejected.
EARLIEST_PLAUSIBLE = dt.date(1990, 1, 1)


#: Kinds of customer attribute: ``category`` (text), ``number``, or ``date`` (turned into whole
#: years or months before the as-of date, e.g. a birth date into an age).
AttributeType = Literal["category", "number", "date"]
#: Names an attribute may not take: the published table's own columns and segml's features.
RESERVED_ATTRIBUTE_NAMES = frozenset({*CRM_COLUMNS, "segmentation", "published_at", "source", "segment",
                                      "customers", "share", "group"})


class AttributeSpec(_Strict):
    """One customer attribute: the source column holding it and its type.

    ``date`` values become whole ``years`` (a birth date: the age) or
    ``months`` (a signup date: months since signup) as of the as-of date.
    """

    column: str = Field(min_length=1)
    type: AttributeType = "category"
    unit: Literal["years", "months"] = "years"

    @model_validator(mode="after")
    def _unit_only_for_dates(self) -> AttributeSpec:
        if self.type != "date" and "unit" in self.model_fields_set:
            raise ValueError(f"'unit' applies to date attributes only; this one is a {self.type}")
        return self

    @property
    def numeric(self) -> bool:
        """Whether the attribute's values are numbers (a number, or a date turned into years or months)."""
        return self.type != "category"


def _attribute_specs(value: Any) -> Any:
    """``{country: Country}`` is short for ``{country: {column: Country, type: category}}``."""
    if isinstance(value, dict):
        return {name: {"column": spec} if isinstance(spec, str) else spec for name, spec in value.items()}
    return value


def _check_attribute_names(value: dict[str, AttributeSpec]) -> dict[str, AttributeSpec]:
    for name in value:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
            raise ValueError(f"attribute name {name!r} must be 1 to 63 lowercase letters, digits or '_', starting "
                             "with a letter (it becomes a database column), e.g. 'country' or 'age'")
        if name in RESERVED_ATTRIBUTE_NAMES or name in FEATURES:
            raise ValueError(f"attribute name {name!r} is taken by a column of the assignment table; call it "
                             f"something else, e.g. 'customer_{name}'")
    return value


#: Attributes by name: ``{country: Country}`` is short for ``{country: {column: Country}}``.
AttributeMap = Annotated[dict[str, AttributeSpec], BeforeValidator(_attribute_specs),
                         AfterValidator(_check_attribute_names)]


class _Source(_Strict):
    """Where a table is read from: a file (``path``), or a database (``url`` or ``url_env``) with a
    ``table`` or a ``query``."""

    path: str | None = None
    url: str | None = None
    #: Name of an environment variable holding the database URL: the form for a URL with a password.
    url_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    table: str | None = None
    query: str | None = None
    format: Literal["auto", "csv", "parquet"] = "auto"
    csv: CsvOptions = CsvOptions()

    @model_validator(mode="after")
    def _one_source(self) -> _Source:
        if [self.path, self.url, self.url_env].count(None) != 2:
            raise ValueError("set exactly one of 'path' (a CSV or Parquet file), 'url' (a database) or 'url_env' "
                             "(an environment variable holding the database URL)")
        if self.path is None and (self.table is None) == (self.query is None):
            raise ValueError("a database source needs exactly one of 'table' or 'query'")
        if self.path is not None and (self.table is not None or self.query is not None):
            raise ValueError("'table' and 'query' apply to a database 'url', not to a file 'path'")
        return self


class DataConfig(_Source):
    """Where the purchases are and how to read them.

    Text numbers are read with ``decimal`` as the decimal mark and
    ``thousands`` as the only thousands separator, accepted only in strict
    groups of three digits (``1,234,567.89``); ``thousands`` defaults to ``,``
    with ``decimal: "."`` and to ``.`` with ``decimal: ","`` (``null``: none
    accepted). A value that does not read under that convention is rejected,
    never guessed at. ``null_markers`` are text values that count as missing.
    ``plausible_dates`` bounds the purchase dates (the latest defaults to a
    year after the day of the run). ``duplicates``: ``reject`` exact
    repetitions of an earlier line, or ``keep`` them as purchases of their own
    (for sources without an order id, where two identical lines can be two
    sales).
    """

    columns: ColumnMap
    timestamp_format: str | None = None
    returns: ReturnsConfig = ReturnsConfig()
    decimal: Literal[".", ","] = "."
    thousands: Literal[",", ".", " ", "'"] | None = ","
    null_markers: list[str] = NULL_MARKERS
    plausible_dates: tuple[dt.date, dt.date | None] = (EARLIEST_PLAUSIBLE, None)
    duplicates: Literal["reject", "keep"] = "reject"
    #: Customer attributes read from the purchase lines: per customer, the value on its latest used line.
    attributes: AttributeMap = {}

    @model_validator(mode="before")
    @classmethod
    def _thousands_follow_the_decimal_mark(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "thousands" not in raw and raw.get("decimal") == ",":
            return {**raw, "thousands": "."}
        return raw

    @model_validator(mode="after")
    def _separators_differ(self) -> DataConfig:
        if self.thousands == self.decimal:
            raise ValueError(f"thousands and decimal are both {self.decimal!r}; set data.thousands to another "
                             "separator or null")
        return self

    @field_validator("plausible_dates")
    @classmethod
    def _earliest_before_latest(cls, value: tuple[dt.date, dt.date | None]) -> tuple[dt.date, dt.date | None]:
        earliest, latest = value
        if latest is not None and latest <= earliest:
            raise ValueError(f"needs earliest < latest, got [{earliest}, {latest}]")
        return value


class CustomersConfig(_Source):
    """A source of customer attributes: one row per customer, with its id and attribute columns.

    A file (``path``: CSV or Parquet) or a database (``url`` or ``url_env`` with
    ``table`` or ``query``), read like ``data``. ``date_format`` is the strptime
    format of text dates (ISO ``YYYY-MM-DD`` by default); numbers are plain
    numbers with ``.`` as the decimal mark unless ``decimal`` says ``,``.
    """

    id: str = Field(min_length=1)
    attributes: AttributeMap
    date_format: str | None = None
    decimal: Literal[".", ","] = "."
    null_markers: list[str] = NULL_MARKERS

    @field_validator("attributes")
    @classmethod
    def _some_attributes(cls, value: dict[str, AttributeSpec]) -> dict[str, AttributeSpec]:
        if not value:
            raise ValueError("needs at least one attribute, e.g. {country: {column: Country, type: category}}")
        return value


class WindowConfig(_Strict):
    """The as-of date and the optional look-back window.

    Features are computed from purchases strictly before ``as_of`` (midnight at
    the start of that day) and, with ``lookback_days``, on or after
    ``as_of - lookback_days``. Without ``as_of``, the day after the last valid
    purchase is used.
    """

    as_of: dt.date | None = None
    lookback_days: int | None = Field(None, gt=0)

    def at(self, as_of: dt.date | None) -> WindowConfig:
        """This window with ``as_of`` in place of its own (unchanged when ``as_of`` is None)."""
        return self if as_of is None else self.model_copy(update={"as_of": as_of})


class TransformConfig(_Strict):
    """How features are transformed before clustering (part of the fitted model)."""

    default: TransformMethod = "log"
    per_feature: dict[str, TransformMethod] = {}
    scaler: Literal["standard", "robust", "none"] = "standard"

    def method_for(self, feature: str) -> str:
        return self.per_feature.get(feature, self.default)  # type: ignore[call-overload]


class ModelConfig(_Strict):
    """The clustering model and how the number of segments is chosen."""

    algorithm: Literal["kmeans", "gmm"] = "kmeans"
    n_clusters: int | None = Field(None, ge=2)
    k_range: tuple[int, int] = (2, 8)
    criterion: Criterion = "silhouette"
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
    random_state: int = 0
    n_init: int = Field(4, ge=1)
    max_iter: int = Field(300, ge=10)
    min_segment_share: float = Field(0.02, ge=0.0, lt=0.5)
    silhouette_sample: int = Field(10_000, ge=100)
    fit_sample: int | None = Field(200_000, ge=1_000)
    #: Candidate k are compared on a fixed-seed sample of at most this many customers (drawn from the
    #: fit sample); the chosen k is then fitted on the fit sample. ``null``: compare on the fit sample.
    selection_sample: int | None = Field(50_000, ge=1_000)
    #: Processes fitting the candidate k side by side (-1: one per core). Small samples are fitted
    #: in this process, where starting workers would cost more than it saves.
    n_jobs: int = -1

    @field_validator("k_range")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if low < 2 or high < low:
            raise ValueError(f"needs 2 <= low <= high, got [{low}, {high}]")
        return value

    @model_validator(mode="after")
    def _criterion_fits_algorithm(self) -> ModelConfig:
        if self.criterion == "bic" and self.algorithm != "gmm":
            raise ValueError("criterion 'bic' needs algorithm 'gmm'; use silhouette, "
                             "calinski_harabasz or davies_bouldin with kmeans")
        return self

    @property
    def candidate_ks(self) -> list[int]:
        if self.n_clusters is not None:
            return [self.n_clusters]
        return list(range(self.k_range[0], self.k_range[1] + 1))


class QualityConfig(_Strict):
    """Settings of the quality report."""

    stability_resamples: int = Field(10, ge=0)
    stability_sample: int = Field(5_000, ge=100)
    #: Days after the as-of date over which forward validity is measured, when the data reach that far
    #: (``segml.schemes``); 0 turns it off.
    forward_horizon_days: int = Field(90, ge=0)


class NamingRule(_Strict):
    """One row of the naming table: a name and the score ranges it covers.

    Scores run from 0 to 1 and say where the segment's median customer stands
    in the whole population: 1 is the most recent, most frequent, biggest
    spender, longest-standing customer.
    """

    name: str = Field(min_length=1)
    description: str = ""
    #: What marketing might do with the segment, shown beside it in the report and the CRM catalogue.
    action: str = ""
    recency: tuple[float, float] = (0.0, 1.0)
    frequency: tuple[float, float] = (0.0, 1.0)
    monetary: tuple[float, float] = (0.0, 1.0)
    tenure: tuple[float, float] = (0.0, 1.0)

    @field_validator("recency", "frequency", "monetary", "tenure")
    @classmethod
    def _score_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"needs 0 <= low <= high <= 1, got [{low}, {high}]")
        return value


class NamingConfig(_Strict):
    """How segments are named; ``rules`` replaces the built-in table when given."""

    rules: list[NamingRule] | None = None
    currency: str = "£"


class OutputConfig(_Strict):
    """Where results are written."""

    dir: str = "outputs"


class TrackingConfig(_Strict):
    """Where runs are recorded in MLflow.

    ``uri`` wins over the ``MLFLOW_TRACKING_URI`` environment variable; with
    neither, MLflow's own default is used (``sqlite:///mlflow.db`` in the
    working directory). A relative ``sqlite:///`` path and
    ``artifact_location`` are resolved against the configuration file's folder.
    """

    uri: str | None = None
    experiment: str | None = None
    registered_model: str | None = None
    artifact_location: str | None = None

    @field_validator("registered_model")
    @classmethod
    def _registrable_name(cls, value: str | None) -> str | None:
        # MLflow's own rule (mlflow.utils.validation._validate_model_name), checked before the fit, not after.
        if value is not None and (not value.strip() or "/" in value or ":" in value
                                  or posixpath.normpath(value) != value or value.startswith(("..", "/"))
                                  or value == "."):
            raise ValueError(f"MLflow cannot register a model named {value!r}: a name must not be empty, contain "
                             "'/' or ':', or read as another path ('.', '..', 'a/../b'); e.g. 'segml-customers'")
        return value


class IdentityConfig(_Strict):
    """Matching a run's segments to the last published ones: a pair keeps its id when its median
    customers are within ``max_distance`` (model space) or it shares at least ``min_overlap`` of its
    customers (Jaccard index among customers in both runs)."""

    max_distance: float = Field(1.0, gt=0)
    min_overlap: float = Field(0.5, gt=0, le=1)


class GatesConfig(_Strict):
    """Quality gates a run must pass before it is promoted and published; unset gates are not checked."""

    min_homogeneity: float | None = Field(None, le=1)
    min_stability: float | None = Field(None, le=1)
    min_segment_share: float | None = Field(None, ge=0, lt=0.5)
    max_changed_share: float | None = Field(None, ge=0, le=1)
    max_psi: float | None = Field(None, gt=0)
    #: The features ``max_psi`` looks at; null: the model's ``features``.
    psi_features: list[Feature] | None = None

    def thresholds(self) -> dict[str, float | None]:
        """The gates and their thresholds (the settings that are not gates left out)."""
        return self.model_dump(exclude={"psi_features"})


class ScheduleConfig(_Strict):
    """Cron schedules of the Prefect deployments (see pipelines/deployments.py)."""

    refit_cron: str | None = "0 3 1 * *"
    score_cron: str | None = "0 4 * * *"
    #: Reports of every open campaign (``segml campaign report``), as of the scheduled day.
    campaigns_cron: str | None = "0 5 * * *"
    timezone: str = "UTC"


class PublishConfig(_Strict):
    """Where promoted assignments are published for the CRM.

    The database URL comes from the environment variable named by ``url_env``
    when it is set, else from ``url`` (which must not hold a password), else a
    SQLite file ``segml.db`` in ``output.dir``.
    """

    database: bool = True
    url_env: str = Field("SEGML_PUBLISH_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    url: str | None = None
    changes_file: bool = True
    column_map: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and mask_url(value) != value:
            raise ValueError(f"holds a password or a secret query parameter ({mask_url(value)}); configuration "
                             "files get committed, so put the whole URL in the environment variable named by "
                             "publish.url_env instead")
        return value

    @field_validator("column_map")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(CRM_COLUMNS))
        if unknown:
            raise ValueError(f"maps unknown columns {unknown}; the assignment columns are {CRM_COLUMNS}")
        if len(set(value.values())) != len(value):
            raise ValueError("gives two columns the same CRM name")
        return value


class DuckDBConfig(_Strict):
    """Resources of the embedded engine that reads purchases and computes features."""

    memory_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
    threads: int | None = Field(None, ge=1)
    temp_directory: str | None = None


class SparkConfig(_Strict):
    """Where Spark runs when ``engine: spark``.

    ``master`` is a Spark master URL: ``local[*]`` (this machine, every core),
    ``spark://host:7077``, ``yarn`` or ``k8s://...``. ``remote`` is a Spark
    Connect URL (``sc://host:15002``) and wins over ``master``. ``conf`` holds
    any Spark setting (``spark.executor.memory: 8g``). ``jdbc_jars`` are JDBC
    driver jars for reading or writing database tables; the PostgreSQL driver
    of the operating system's package (``/usr/share/java/postgresql.jar``) is
    used when none is given and it exists.
    """

    master: str = "local[*]"
    remote: str | None = Field(None, pattern=r"^sc://")
    app_name: str = "segml"
    conf: dict[str, str] = {}
    jdbc_jars: list[str] = []
    partitions: int | None = Field(None, ge=1)
    #: Scoring on Spark also writes every assignment to this PostgreSQL table (publish URL) over JDBC.
    jdbc_table: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")


#: The longest segmentation ``name``: it names output folders, the MLflow experiment and published rows.
MAX_NAME_LENGTH = 100


class SegmlConfig(_Strict):
    """A whole segml configuration."""

    name: str = "segml"

    @field_validator("name")
    @classmethod
    def _path_safe_name(cls, value: str) -> str:
        # The name becomes a folder under output.dir: one safe path component, never '.' or '..'.
        if (not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value) or ".." in value
                or len(value) > MAX_NAME_LENGTH):
            raise ValueError(f"needs 1 to {MAX_NAME_LENGTH} letters, digits, '_', '.' or '-', starting with a "
                             f"letter, digit or '_' and without '..' (it names the output folder), got {value!r}")
        return value

    data: DataConfig
    window: WindowConfig = WindowConfig()
    #: Behavioural features, and numeric customer attributes (``customers`` or ``data.attributes``).
    features: list[str] = ["recency_days", "frequency", "monetary"]
    transform: TransformConfig = TransformConfig()
    model: ModelConfig = ModelConfig()
    quality: QualityConfig = QualityConfig()
    naming: NamingConfig = NamingConfig()
    output: OutputConfig = OutputConfig()
    tracking: TrackingConfig = TrackingConfig()
    identity: IdentityConfig = IdentityConfig()
    gates: GatesConfig = GatesConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    publish: PublishConfig = PublishConfig()
    duckdb: DuckDBConfig = DuckDBConfig()
    #: ``duckdb`` (embedded, one machine) or ``spark`` (reading, contract and features on Spark).
    engine: Literal[tuple(ENGINES)] = "duckdb"  # the engines segml.engine names
    spark: SparkConfig = SparkConfig()
    #: Customer attributes from a source of their own (one row per customer).
    customers: CustomersConfig | None = None

    @property
    def attributes(self) -> dict[str, AttributeSpec]:
        """Every customer attribute, from the customers source and from the purchase lines."""
        return {**(self.customers.attributes if self.customers else {}), **self.data.attributes}

    @model_validator(mode="after")
    def _attributes_declared_once_and_features_known(self) -> SegmlConfig:
        both = sorted(set(self.customers.attributes if self.customers else {}) & set(self.data.attributes))
        if both:
            raise ValueError(f"attributes {both} are declared both in customers.attributes and data.attributes; "
                             "keep each in one place")
        attributes = self.attributes
        for feature in self.features:
            spec = attributes.get(feature)
            if feature in FEATURES or (spec is not None and spec.numeric):
                continue
            if spec is not None:
                raise ValueError(f"features lists {feature!r}, a category attribute: categories describe segments "
                                 "but stay out of the distance the model measures; leave it out of features (it is "
                                 "profiled per segment anyway)")
            numeric = sorted(n for n, s in attributes.items() if s.numeric)
            raise ValueError(f"features lists {feature!r}, which is neither a behavioural feature {list(FEATURES)} nor "
                             f"a numeric attribute {numeric}")
        unknown = sorted(set(self.transform.per_feature) - set(FEATURES) - set(attributes))
        if unknown:
            raise ValueError(f"transform.per_feature names {unknown}, which are neither features {list(FEATURES)} "
                             f"nor attributes {sorted(attributes)}")
        return self

    @model_validator(mode="after")
    def _spark_reads_no_attributes(self) -> SegmlConfig:
        if self.engine == "spark" and self.attributes:
            raise ValueError("customer attributes (customers, data.attributes) are not supported by the Spark "
                             "engine yet; use engine 'duckdb' or leave the attributes out")
        return self

    @model_validator(mode="after")
    def _stability_gate_needs_resamples(self) -> SegmlConfig:
        if self.gates.min_stability is not None and self.quality.stability_resamples == 0:
            raise ValueError("gates.min_stability needs quality.stability_resamples > 0")
        return self

    @model_validator(mode="after")
    def _spark_reads_url_not_url_env(self) -> SegmlConfig:
        if self.engine == "spark" and self.data.url_env is not None:
            raise ValueError("data.url_env is read by the DuckDB engine only; with engine 'spark' give data.url "
                             "(the JDBC reader takes the password from it) or use engine 'duckdb'")
        return self

    @model_validator(mode="after")
    def _spark_reads_the_timestamp_format(self) -> SegmlConfig:
        if self.engine == "spark" and self.data.timestamp_format:
            try:
                java_datetime_pattern(self.data.timestamp_format)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model or f"segml-{self.name}"

    @field_validator("features")
    @classmethod
    def _distinct_features(cls, value: list[str]) -> list[str]:
        if len(value) < 2:
            raise ValueError(f"needs at least 2 features to segment on, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a feature twice: {value}")
        return value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class found by following ``loc`` from the root."""
    model: Any = SegmlConfig
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *get_args(annotation)]
        for inner in list(candidates):
            candidates.extend(get_args(inner))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent is not None else []
        return f"{path}: unknown key; allowed keys here are {allowed}"
    if error["type"] == "missing":
        return f"{path}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error", "assertion_error"):
        return f"{path}: {message}"
    return f"{path}: {message} (got {mask_config(error.get('input'))!r})"


def parse_config(raw: Any, source: str = "<config>") -> SegmlConfig:
    """Validate an already-parsed YAML document; ``source`` names it in messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the file must hold a mapping of keys, got {type(raw).__name__}")
    try:
        return SegmlConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        plural = "problem" if len(problems) == 1 else "problems"
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source}: {len(problems)} {plural} in the configuration:\n{lines}") from None


def _resolve(path: str, base: Path) -> str:
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path):
        return path  # a URL (s3a://, hdfs://, file://) is Spark's to read, not a local path
    candidate = Path(path).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())


#: Bounds on a configuration file, so that a hostile or broken one fails at once instead of
#: exhausting memory: its size in characters, its values once aliases are expanded, its nesting.
MAX_CONFIG_CHARS = 1_000_000
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 50

_YAML_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _ConfigLoader(_YAML_BASE):  # type: ignore[misc, valid-type]
    """YAML's safe loader, refusing a key given twice in one mapping and keeping an impossible
    date (``2024-13-01``) as text, so the configuration check names its key."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in first_line:
                    raise ConfigError(f"line {key_node.start_mark.line + 1}: the key {key!r} is given twice in one "
                                      f"mapping (first at line {first_line[key] + 1}); keep one")

                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_timestamp(self, node: yaml.Node) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _ConfigLoader.construct_yaml_timestamp)


def _count_values(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], depth: int) -> int:
    """The values ``node`` stands for once every alias is expanded (each shared node counted once
    per use, but computed once)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ConfigError(f"line {node.start_mark.line + 1}: an alias refers to the value that contains it; "
                          "a configuration cannot be recursive")
    if depth > MAX_CONFIG_DEPTH:
        raise ConfigError(f"line {node.start_mark.line + 1}: nested more than {MAX_CONFIG_DEPTH} levels deep")
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_count_values(child, sizes, open_nodes, depth + 1) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_count_values(k, sizes, open_nodes, depth + 1) + _count_values(v, sizes, open_nodes, depth + 1)
                    for k, v in node.value)
    open_nodes.discard(key)
    sizes[key] = size
    return size


def read_yaml(text: str, source: str = "<config>") -> Any:
    """Parse a configuration's YAML text, within the bounds above; every problem is a :class:`ConfigError`.

    The document is composed first (aliases still shared) and its expanded
    size counted before any Python object is built, so an alias bomb fails
    in milliseconds.
    """
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"{source}: {len(text):,} characters; a configuration holds settings, not data, and "
                          f"may have at most {MAX_CONFIG_CHARS:,}")
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        values = _count_values(node, {}, set(), 0)
        if values > MAX_CONFIG_VALUES:
            raise ConfigError(f"{source}: {values:,} values once its aliases (*name) are expanded; a configuration "
                              f"may hold at most {MAX_CONFIG_VALUES:,}: check the anchors (&name) and aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    except ConfigError as exc:
        if str(exc).startswith(source):
            raise
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None
    finally:
        loader.dispose()


def load_config(path: str | Path) -> SegmlConfig:
    """Read, validate and resolve a YAML configuration file.

    Relative ``data.path`` and ``output.dir`` are made absolute against the
    folder holding the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {exc.strerror}") from None
    raw = read_yaml(text, source=str(path))
    config = parse_config(raw, source=str(path))
    base = path.resolve().parent
    data = config.data
    if data.path is not None:
        data = data.model_copy(update={"path": _resolve(data.path, base)})
    output = config.output.model_copy(update={"dir": _resolve(config.output.dir, base)})
    tracking = config.tracking
    if tracking.uri and tracking.uri.startswith("sqlite:///") and not tracking.uri.startswith("sqlite:////"):
        tracking = tracking.model_copy(update={"uri": "sqlite:///" + _resolve(tracking.uri[len("sqlite:///"):], base)})
    if tracking.artifact_location and "://" not in tracking.artifact_location:
        tracking = tracking.model_copy(update={"artifact_location": _resolve(tracking.artifact_location, base)})
    publish = config.publish
    if publish.url and publish.url.startswith("sqlite:///") and not publish.url.startswith("sqlite:////"):
        publish = publish.model_copy(update={"url": "sqlite:///" + _resolve(publish.url[len("sqlite:///"):], base)})
    customers = config.customers
    if customers is not None and customers.path is not None:
        customers = customers.model_copy(update={"path": _resolve(customers.path, base)})
    return config.model_copy(update={"data": data, "output": output, "tracking": tracking, "publish": publish,
                                     "customers": customers})


def data_url(data: _Source, environ: Mapping[str, str]) -> str | None:
    """The source database URL: ``data.url``, else the environment variable named by ``data.url_env``."""
    if data.url_env is None:
        return data.url
    url = environ.get(data.url_env)
    if not url:
        raise ConfigError(f"data.url_env names the environment variable {data.url_env!r}, which is not set; "
                          f"export {data.url_env}=<database URL> before running")
    return url


def publish_url(config: SegmlConfig, environ: dict[str, str]) -> str:
    """The publishing database URL: the environment variable, else ``publish.url``, else SQLite in ``output.dir``."""
    from_env = environ.get(config.publish.url_env)
    if from_env:
        return from_env
    if config.publish.url:
        return config.publish.url
    return f"sqlite:///{Path(config.output.dir) / 'segml.db'}"
