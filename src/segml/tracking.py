"""The MLflow record of a segmentation run. The only module that imports mlflow.

Runs are written through ``MlflowClient`` with explicit run ids, so logging
works from any thread (MLflow's active run is per thread, and flow tasks may
run in worker threads). Only the model itself is logged through the fluent
API, inside a ``start_run(run_id=...)`` block on the calling thread.

The store is handled with care:

- a SQLite store is first opened (created, migrated) under a file lock beside
  it, so concurrent first runs do not break its schema;
- a tracking server that does not answer fails within seconds, as one
  :class:`~segml.errors.SegmlError` naming the URI, not after minutes of retries;
- every URI, param and tag value is masked (:func:`segml.secrets.mask_url`);
- a registered model carries the SHA-256 digest of its files, checked before
  the model is unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

import segml
from segml.config import SegmlConfig
from segml.errors import SegmlError
from segml.models import SegmentModel
from segml.secrets import mask_url

log = logging.getLogger(__name__)

#: MLflow's HTTP settings unless the user set them: 3 retries (about 12 s of back-off, MLflow's own default of 7
#: waits about 4 minutes on a server that is down) and 30 s without an answer.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
#: Tag of a registered model version (and of its run and logged model): the SHA-256 digest of the model's files.
DIGEST_TAG = "segml.model_sha256"

class SegmentPyfunc(mlflow.pyfunc.PythonModel):
    """A fitted segmentation as an MLflow pyfunc model.

    Takes a frame with the model's feature columns and returns one row per
    input row with ``segment_id``, ``segment_name`` and ``segment_probability``.
    """

    def __init__(self, model: SegmentModel, segments: dict[int, tuple[str, str]]):
        self.model = model
        self.segments = dict(segments)  # segment number -> (stable segment id, name)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:  # noqa: ARG002
        frame = pd.DataFrame(model_input)
        labels = self.model.predict(frame)
        proba = self.model.predict_proba(frame)[np.arange(len(labels)), labels]
        return pd.DataFrame({
            "segment_id": [self.segments[int(s)][0] for s in labels],
            "segment_name": [self.segments[int(s)][1] for s in labels],
            "segment_probability": proba.astype("float64"),
        })


def tracking_uri(config: SegmlConfig) -> str:
    """The tracking URI in force: the config's, else ``MLFLOW_TRACKING_URI``, else MLflow's default."""
    return config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def _client(uri: str) -> MlflowClient:
    """A client of the store at ``uri`` (tracking and registry); opens the store on first use in this process.

    Its calls that cannot reach the store raise one :class:`SegmlError`.
    """
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)  # read by MLflow at every request, so setting them now is in time
    # MLflow writes "View run ... at <server URI>" on stdout whenever a run on a server ends (the URI's
    # password in it, once per child run too); segml's summary says where the run is, once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if uri in _opened or _sqlite_file(uri) is None:
        return _Reaching(MlflowClient(tracking_uri=uri, registry_uri=uri), uri)  # type: ignore[return-value]
    with _store_lock(uri):
        # MLflow creates the tracking store with the client, and the registry store on the first registry
        # call; each creates or migrates the database when it finds it incomplete. MLflow keeps both for
        # the rest of the process, so this happens here, under the lock, once.
        with _reaching(uri):
            client = _Reaching(MlflowClient(tracking_uri=uri, registry_uri=uri), uri)
        client.search_registered_models(max_results=1)
    _opened.add(uri)
    return client  # type: ignore[return-value]


_opened: set[str] = set()


def preload(config: SegmlConfig) -> None:
    """Do now, while the caller has nothing else to do (waiting for Prefect's temporary server), what
    the run's first MLflow calls would do later: open the store (its client, its database module) and
    build MLflow's map of installed packages, which logging a model reads to check its requirements.
    Nothing changes but when the time is spent; a store that cannot be reached is left for the run
    to report."""
    try:
        _client(tracking_uri(config))
    except Exception:  # noqa: BLE001 - the run's own first call reports it, with its message
        return
    try:
        from mlflow.utils import requirements_utils

        requirements_utils._init_packages_to_modules_map()  # MLflow's own cache, built once per process
    except (ImportError, AttributeError):  # another MLflow: it builds the map when it needs it
        pass


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; None for any other store or an in-memory one."""
    if not uri.startswith("sqlite:"):
        return None
    import sqlalchemy as sa

    database = sa.engine.make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


@contextmanager
def _store_lock(uri: str):
    """For a SQLite store, an exclusive ``flock`` on ``<database>.lock`` for the block; nothing for others.

    MLflow creates a fresh SQLite store by running its schema migrations; two
    processes doing so at once can leave it broken for good (``table
    _alembic_tmp_params already exists``). A server or PostgreSQL store
    migrates in one place and needs no lock.
    """
    database = _sqlite_file(uri)
    if database is None:
        yield
        return
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _unreachable(exc: BaseException) -> str | None:
    """Why the store could not be reached (``Connection refused``, ``timed out``...), or None for other errors."""
    import requests

    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, requests.exceptions.Timeout):
            return "no answer within MLFLOW_HTTP_REQUEST_TIMEOUT seconds"
        if isinstance(seen, requests.exceptions.ConnectionError):
            found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(seen))
            return found.group(1).strip() if found else "the connection failed"
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def _reaching(uri: str):
    """Turn a failure to reach the store at ``uri`` into one SegmlError naming the URI (masked)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        reason = _unreachable(exc)
        if reason is None:
            raise
        raise SegmlError(
            f"cannot reach the MLflow tracking store at {mask_url(uri)}: {reason} (after "
            f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries); check that the server runs, or "
            "change tracking.uri in the configuration or the MLFLOW_TRACKING_URI environment variable"
        ) from None


class _Reaching:
    """An MlflowClient whose every call goes through :func:`_reaching`."""

    def __init__(self, client: MlflowClient, uri: str):
        self._client = client
        self._uri = uri

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args, **kwargs):
            with _reaching(self._uri):
                return attribute(*args, **kwargs)

        return call


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists as ``a.b.c`` keys with text values (how the config is logged as params)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple) and any(isinstance(v, dict | list | tuple) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: "" if value is None else str(list(value) if isinstance(value, tuple) else value)}
    out: dict[str, str] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


@dataclass(frozen=True)
class RunHandle:
    """An MLflow run being recorded."""

    uri: str
    experiment_id: str
    run_id: str


def start_run(config: SegmlConfig, run_name: str | None = None) -> RunHandle:
    """Create the run (and the experiment on first use); returns its handle."""
    uri = tracking_uri(config)
    client = _client(uri)
    with _store_lock(uri):
        experiment_id = _experiment_id(client, config.experiment_name, config.tracking.artifact_location)
    run = client.create_run(experiment_id, run_name=run_name, tags={"segml.version": segml.__version__})
    log.info("MLflow run %s in experiment %r at %s", run.info.run_id, config.experiment_name, mask_url(uri))
    return RunHandle(uri=uri, experiment_id=experiment_id, run_id=run.info.run_id)


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it first if needed; a run that loses the race to create it uses the winner's."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_child(parent: RunHandle, name: str, tags: dict[str, str] | None = None) -> RunHandle:
    """A child run of ``parent`` in its experiment (shown nested under it in the MLflow UI)."""
    run = _client(parent.uri).create_run(parent.experiment_id, run_name=name, tags={
        "mlflow.parentRunId": parent.run_id, "segml.version": segml.__version__, **(tags or {})})
    return RunHandle(uri=parent.uri, experiment_id=parent.experiment_id, run_id=run.info.run_id)


def end_run(handle: RunHandle, error: BaseException | None = None) -> None:
    """Mark the run finished, or failed with the error's message (masked) as a tag."""
    client = _client(handle.uri)
    if error is not None:
        client.set_tag(handle.run_id, "segml.error", mask_url(str(error))[:5000])
    client.set_terminated(handle.run_id, "FAILED" if error is not None else "FINISHED")


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def log_params_and_metrics(handle: RunHandle, params: dict[str, str], metrics: dict[str, float]) -> None:
    """Log params (text, every URL in them masked) and metrics (finite numbers only) in batches."""
    client = _client(handle.uri)
    for batch in _chunks([Param(k, mask_url(v)[:6000]) for k, v in params.items()], 100):
        client.log_batch(handle.run_id, params=batch)
    timestamp = int(pd.Timestamp.now().timestamp() * 1000)
    clean = [Metric(k, float(v), timestamp, 0) for k, v in metrics.items() if v is not None and np.isfinite(v)]
    for batch in _chunks(clean, 500):
        client.log_batch(handle.run_id, metrics=batch)


def log_candidates(handle: RunHandle, candidates: pd.DataFrame, algorithm: str) -> list[str]:
    """One finished child run per candidate k (``k=5 (chosen)`` for the chosen one), with its scores;
    the same scores on the parent run as ``candidate.<score>`` at step k, so its chart view draws the
    selection curves. Returns the child run ids."""
    client = _client(handle.uri)
    timestamp = int(pd.Timestamp.now().timestamp() * 1000)
    curves = [Metric(f"candidate.{m}", float(getattr(row, m)), timestamp, int(row.k))
              for row in candidates.itertuples()
              for m in ("silhouette", "calinski_harabasz", "davies_bouldin", "bic", "inertia", "min_share")
              if hasattr(row, m) and getattr(row, m) is not None and np.isfinite(getattr(row, m))]
    for batch in _chunks(curves, 500):
        client.log_batch(handle.run_id, metrics=batch)
    child_ids = []
    for row in candidates.itertuples():
        child = start_child(handle, f"k={row.k}" + (" (chosen)" if row.chosen else ""), {"segml.candidate": "true"})
        metrics = {m: getattr(row, m) for m in ("silhouette", "calinski_harabasz", "davies_bouldin", "bic",
                                                "inertia", "min_share")}
        metrics["eligible"] = float(row.eligible)
        metrics["chosen"] = float(row.chosen)
        log_params_and_metrics(child, {"k": str(row.k), "algorithm": algorithm, "fitted_on": str(row.fitted_on)},
                               metrics)
        client.set_terminated(child.run_id, "FINISHED")
        child_ids.append(child.run_id)
    return child_ids


def log_dataset(handle: RunHandle, name: str, source: str, source_type: str, digest: str,
                columns: list[str], profile: dict[str, int]) -> None:
    """Record the purchases read as the run's training input (an MLflow dataset): where they came from
    (``source``, masked), their fingerprint as the digest, the feature columns as the schema and the
    line and customer counts as the profile. The data themselves stay where they are."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    schema = Schema([ColSpec("double", column) for column in columns])
    dataset = Dataset(name=name, digest=digest[:36], source_type=source_type,
                      source=json.dumps({"uri": mask_url(source)}),
                      schema=json.dumps({"mlflow_colspec": schema.to_dict()}), profile=json.dumps(profile))
    _client(handle.uri).log_inputs(handle.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context",
                                                                                   "training")])])


def run_url(handle: RunHandle) -> str | None:
    """The run's page in the MLflow UI when runs are logged to a tracking server (None for a local store)."""
    if not handle.uri.startswith(("http://", "https://")):
        return None
    return f"{mask_url(handle.uri).rstrip('/')}/#/experiments/{handle.experiment_id}/runs/{handle.run_id}"


def how_to_open(handle: RunHandle) -> str:
    """How to look at the run in the MLflow UI, for any store: its page on a server, else the command."""
    url = run_url(handle)
    if url:
        return f"open {url}"
    return (f"mlflow ui --backend-store-uri {mask_url(handle.uri)}, then "
            f"http://127.0.0.1:5000/#/experiments/{handle.experiment_id}/runs/{handle.run_id}")


def log_artifacts(handle: RunHandle, folder: Path, artifact_path: str | None = None) -> None:
    _client(handle.uri).log_artifacts(handle.run_id, str(folder), artifact_path)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "pandas", "numpy", "scipy", "mlflow")]


class _PickleNotice(logging.Filter):
    """MLflow warns on every ``log_model`` that a Python object is pickled. segml records the SHA-256 of the
    model's files at registration and checks it before anything is unpickled (:func:`load_model`), which is
    the care the notice asks for; only that notice is dropped, every other MLflow warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passing a Python object as `python_model`")


logging.getLogger("mlflow.pyfunc").addFilter(_PickleNotice())


def log_model(handle: RunHandle, config: SegmlConfig, model: SegmentModel, names: dict[int, tuple[str, str]],
              example: pd.DataFrame, description: str = "", tags: dict[str, str] | None = None) -> tuple[str, int]:
    """Log the model as a pyfunc and register it under the config's model name, the version with
    ``description`` and ``tags``; returns (model URI, version).

    The segml package is shipped with the model (``code_paths``) so it loads
    where segml is not installed.
    """
    _map_installed_packages()
    pyfunc = SegmentPyfunc(model, names)
    example = example[model.features].head(5)
    signature = _signature(example)
    with _using(handle.uri), mlflow.start_run(run_id=handle.run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc,
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            code_paths=[str(Path(segml.__file__).parent)],
        )
    # Leaving the block ends the run as FINISHED; it is finished only once it is published.
    client = _client(handle.uri)
    client.update_run(handle.run_id, status="RUNNING")
    with _using(handle.uri):  # the registry resolves the logged model through the tracking store in force
        version = _register(client, config.registered_model_name, info, handle.run_id, description, tags or {})
    _record_digest(handle, config.registered_model_name, version, info.model_id)
    return info.model_uri, version


def _map_installed_packages() -> None:
    """Hand MLflow the installed packages the drawing worker mapped, if it did.

    ``log_model`` checks the model's requirements against the installed packages, and to do so
    first maps every installed distribution to its modules, once per process: 0.6 s on the path a
    run waits for. The worker maps them on the other core while the flow reads and fits. This
    reaches into MLflow's module (its one cache of that map); when MLflow has moved on, it maps
    them itself as before."""
    from segml import drawing

    try:
        from mlflow.utils import requirements_utils as requirements
    except ImportError:
        return
    if getattr(requirements, "_MODULES_TO_PACKAGES", "absent") is not None:
        return  # mapped already, or not how MLflow does it any more
    found = drawing.distributions()
    metadata = getattr(requirements, "importlib_metadata", None)
    if found is None or not callable(getattr(metadata, "packages_distributions", None)):
        return
    own = metadata.packages_distributions
    metadata.packages_distributions = lambda: {module: list(names) for module, names in found.items()}
    try:
        requirements._init_modules_to_packages_map()
    except Exception as exc:  # noqa: BLE001 - MLflow maps them itself at log_model
        log.debug("installed packages not handed to MLflow: %r", exc)
        requirements._MODULES_TO_PACKAGES = None
    finally:
        metadata.packages_distributions = own


def _signature(example: pd.DataFrame):
    """The model's signature, declared rather than inferred: counts (``frequency``, day counts) are
    integers (``long``), amounts doubles; the output is the segment id, name and probability. (Inference
    warns on every integer column that it could not hold a missing value; features never miss one.)"""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    kind = {c: "long" if pd.api.types.is_integer_dtype(t) else "double" for c, t in example.dtypes.items()}
    return ModelSignature(inputs=Schema([ColSpec(kind[c], c) for c in example.columns]),
                          outputs=Schema([ColSpec("string", "segment_id"), ColSpec("string", "segment_name"),
                                          ColSpec("double", "segment_probability")]))


def _register(client: MlflowClient, name: str, info: Any, run_id: str, description: str,
              tags: dict[str, str]) -> int:
    """A new version of the registered model ``name`` (created on first use) for the logged model ``info``.

    Through the client rather than ``log_model(registered_model_name=...)``, which prints its progress on
    stderr whatever the logging settings.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="Customer segmentation logged by segml.")
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    found = client.create_model_version(name, source=f"models:/{info.model_id}", run_id=run_id,
                                        model_id=info.model_id, description=description,
                                        tags={k: mask_url(str(v))[:5000] for k, v in tags.items()})
    return int(found.version)


def model_digest(folder: Path) -> str:
    """The SHA-256 digest of a model folder: of every file's path and content, in path order.

    ``registered_model_meta``, which MLflow writes into a registered model's
    folder when it downloads it, is left out.
    """
    total = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative == "registered_model_meta":
            continue
        content = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                content.update(block)
        total.update(f"{relative}\0{content.hexdigest()}\n".encode())
    return total.hexdigest()


def _record_digest(handle: RunHandle, name: str, version: int, model_id: str | None) -> None:
    """Tag the registered version, its run and its logged model with the digest of the files as stored."""
    with _using(handle.uri), tempfile.TemporaryDirectory(prefix="segml-model-") as tmp:
        digest = model_digest(Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=tmp)))
    client = _client(handle.uri)
    client.set_model_version_tag(name, str(version), DIGEST_TAG, digest)
    client.set_tag(handle.run_id, DIGEST_TAG, digest)
    if model_id:
        client.set_logged_model_tags(model_id, {DIGEST_TAG: digest})


@contextmanager
def _using(uri: str):
    """MLflow's process-wide tracking and registry URIs set to ``uri`` for the block, then restored exactly.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` (and the
    registry likewise), and restoring through the public setters would pin the
    defaults; the module state and the environment are therefore put back as
    they were, so one run's store never leaks into the next.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    _client(uri)  # the store opened (under its lock) and the HTTP defaults set
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_tracking, saved_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with _reaching(uri):
            yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)
        registry_utils._registry_uri = saved_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_model(model_uri: str, uri: str):
    """Load a registered segmentation model as a pyfunc from the store at ``uri``, once its files are checked.

    ``model_uri`` is ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
    The files are downloaded, their digest compared with the one recorded at
    registration (:data:`DIGEST_TAG`), and only then is the model unpickled,
    from that local copy. A version registered before digests were recorded
    is loaded with a warning; any other URI is loaded unchecked.
    """
    registered = re.fullmatch(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>.+))", model_uri)
    if registered is None:
        log.warning("model %s is not a registered version: its files are not checked", model_uri)
        with _using(uri):
            return mlflow.pyfunc.load_model(model_uri)
    client = _client(uri)
    name = registered["name"]
    found = (client.get_model_version(name, registered["version"]) if registered["version"]
             else client.get_model_version_by_alias(name, registered["alias"]))
    expected = found.tags.get(DIGEST_TAG)
    with _using(uri), tempfile.TemporaryDirectory(prefix="segml-model-") as tmp:
        # The version, not the alias, so the files checked are the files of the version whose digest was read.
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{found.version}",
                                                         dst_path=tmp))
        if expected is None:
            log.warning("model %s version %s has no %s tag (registered before segml recorded digests): its files "
                        "are loaded unchecked", name, found.version, DIGEST_TAG)
        else:
            actual = model_digest(local)
            if actual != expected:
                raise SegmlError(
                    f"the files of model {name!r} version {found.version} changed since registration (SHA-256 "
                    f"{actual[:16]}..., registered {expected[:16]}...): the artifact store of {mask_url(uri)} was "
                    "modified; it is not loaded. Restore the files, or register a new version with `segml run`")
        return mlflow.pyfunc.load_model(str(local))


CHAMPION = "champion"


@dataclass
class Published:
    """The last published (champion) segmentation: what a new run matches and compares against."""

    run_id: str
    version: int
    as_of: str
    catalogue: pd.DataFrame
    assignments: pd.DataFrame


def load_champion(config: SegmlConfig) -> Published | None:
    """The registered model version with the alias ``champion`` and its run's catalogue and assignments."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(config)
    client = _client(uri)  # opening the store may create it: under its lock, like start_run
    try:
        version = client.get_model_version_by_alias(config.registered_model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    run = client.get_run(version.run_id)

    def table(name: str) -> pd.DataFrame:
        with _reaching(uri):
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=name, tracking_uri=uri)
        return pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)

    assignments = table("assignments.parquet")
    assignments["customer_id"] = assignments["customer_id"].astype(str)
    return Published(run_id=version.run_id, version=int(version.version), as_of=run.data.params.get("as_of", ""),
                     catalogue=table("catalogue.csv"), assignments=assignments)


def tag_failed_gates(handle: RunHandle, failed: list[str]) -> None:
    _client(handle.uri).set_tag(handle.run_id, "segml.failed_gates", "; ".join(failed)[:5000])


# --- The publication protocol's record (see pipelines/publication.py) ---------------------------

PUBLICATION_TAG = "segml.publication"


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = _client(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, mask_url(str(value))[:5000])


def run_record(uri: str, run_id: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """A run's status, tags and params."""
    run = _client(uri).get_run(run_id)
    return run.info.status, dict(run.data.tags), dict(run.data.params)


def set_status(uri: str, run_id: str, status: str) -> None:
    """Mark a run ``FINISHED``, ``FAILED`` or ``KILLED``."""
    _client(uri).set_terminated(run_id, status)


def download_run_files(uri: str, run_id: str, folder: Path) -> Path:
    """Every file the run logged, into ``folder``."""
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(folder),
                                                    tracking_uri=uri))


def champion_version(config: SegmlConfig) -> int | None:
    """The registered model version aliased ``champion``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        version = _client(tracking_uri(config)).get_model_version_by_alias(config.registered_model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return int(version.version)


def next_version(config: SegmlConfig) -> int | None:
    """The version number the next registration of the config's model will most likely get (the
    highest version now, plus one; 1 for a model not registered yet), or None when the registry
    cannot tell. A guess only: a concurrent registration, or a deleted last version, takes or skips
    the number, so whoever uses it checks it against the version actually registered."""
    name = config.registered_model_name
    try:
        found = _client(tracking_uri(config)).search_model_versions(
            f"name = '{name}'", max_results=1, order_by=["version_number DESC"])
    except Exception as exc:  # noqa: BLE001 - a guess only: without one the report waits for the version
        log.debug("no guess at the next model version of %r: %s", name, exc)
        return None
    return int(found[0].version) + 1 if found else 1


def set_champion(config: SegmlConfig, run_id: str, version: int) -> None:
    """Point the alias ``champion`` at ``version`` (logged by ``run_id``)."""
    client = _client(tracking_uri(config))
    client.set_registered_model_alias(config.registered_model_name, CHAMPION, str(version))
    client.set_tag(run_id, "segml.promoted", "true")


def runs_to_settle(config: SegmlConfig, experiment: str) -> list[tuple[str, str, dict[str, str]]]:
    """Runs of ``experiment`` still ``RUNNING`` or with a publication not complete: (run id, status, tags)."""
    client = _client(tracking_uri(config))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200)
    pending = client.search_runs([found.experiment_id], max_results=200,
                                 filter_string=f"tags.`{PUBLICATION_TAG}` = 'pending'")
    seen = {r.info.run_id: r for r in [*runs, *pending]}
    return [(r.info.run_id, r.info.status, dict(r.data.tags)) for r in seen.values()]


def run_of_version(config: SegmlConfig, version: int) -> str:
    """The run that logged a registered model version."""
    return _client(tracking_uri(config)).get_model_version(config.registered_model_name, str(version)).run_id


def version_of_run(config: SegmlConfig, run_id: str) -> int | None:
    """The version of the configuration's registered model that ``run_id`` logged, if any."""
    found = _client(tracking_uri(config)).search_model_versions(
        f"name = '{config.registered_model_name}' and run_id = '{run_id}'")
    return max((int(v.version) for v in found), default=None)


def delete_tag(uri: str, run_id: str, key: str) -> None:
    """Remove a tag from a run, if it has it."""
    client = _client(uri)
    if key in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, key)
