"""Publishing a recorded run so that a crash at any step converges.

A run reaches the CRM in four steps, recorded on the MLflow run (tag
``segml.publication``):

1. **pending**: every file of the run is logged to MLflow first, then the
   run is tagged ``pending`` with where it will be published;
2. **commit**: the database transaction (:func:`segml.publish.publish_assignments`)
   makes the run the current publication. This is the commit point: before
   it nothing of the run reached the CRM; after it the run *is* the
   published one. Without a database (``publish.database: false``) the
   ``champion`` alias is the commit point of a refit;
3. **files**: the logged files are copied into the output folder, each
   atomically, and ``publication.json`` (run, model version, as-of date)
   is written last;
4. **complete**: the alias ``champion`` points at the run's model version
   (refits), the tag becomes ``complete`` and the run ``FINISHED``.

:func:`settle` runs at the start of every flow and of ``segml repair``: a
run the database names current but not ``complete`` is finished from its
logged files (steps 3 and 4 again, which are idempotent); a run left
``pending`` or ``RUNNING`` by a process that is gone is marked ``FAILED``
(it never committed) or ``KILLED``. So the database, the files and the alias
always end up on the same run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segml import tracking
from segml.config import SegmlConfig, publish_url
from segml.outputs import publish_folder, write_atomic
from segml.publish import (
    check_base,
    check_not_stale,
    create_engine,
    current_publication,
    missing_sqlite,
    publication_runs,
    publish_assignments,
)

log = logging.getLogger(__name__)

MARKER = "publication.json"
PENDING, COMPLETE = "pending", "complete"


def destination_of(config: SegmlConfig, as_of: dt.date, source: str) -> Path:
    """The output folder of a publication: ``<output.dir>/<name>/[scores/]<as-of date>``."""
    base = Path(config.output.dir) / config.name
    return (base / "scores" if source == "score" else base) / as_of.isoformat()


def process_tags() -> dict[str, str]:
    """Tags that let a later run tell whether this process is still alive."""
    return {"segml.host": socket.gethostname(), "segml.pid": str(os.getpid())}


def begin(uri: str, run_id: str, as_of: dt.date, source: str, version: int, destination: Path) -> None:
    """Step 1: record the intent to publish (the run's files are already logged)."""
    tracking.set_tags(uri, run_id, {tracking.PUBLICATION_TAG: PENDING, "segml.as_of": as_of.isoformat(),
                                    "segml.source": source, "segml.model_version": str(version),
                                    "segml.destination": str(destination)})


def commit(config: SegmlConfig, as_of: dt.date, assignments, catalogue, run_id: str, version: int,
           source: str, force: bool = False, based_on: str | None = None) -> int:
    """Step 2: the database transaction that makes the run current; returns the rows written.

    ``based_on`` is the refit run the run started from (what a refit was
    compared with, ``"none"`` for a first one; the model a scoring run used):
    the publication is refused when another was published since
    (:func:`segml.publish.check_base`). Without a database, a refit's commit
    point is the alias ``champion``, under the same rules.
    """
    if not config.publish.database:
        if source == "refit":
            champion = _champion_publication(config)
            if champion is not None and not force:
                check_not_stale(champion, as_of)
                check_base(champion["run_id"], based_on, source)
            tracking.set_champion(config, run_id, version)
        return 0
    engine = create_engine(publish_url(config, dict(os.environ)))
    try:
        return publish_assignments(engine, config.name, as_of, assignments, catalogue, run_id, version,
                                   source=source, force=force, based_on=based_on,
                                   attributes={name: spec.type for name, spec in config.attributes.items()})
    finally:
        engine.dispose()


@contextmanager
def _published_database(config: SegmlConfig) -> Iterator:
    """An engine on the CRM database, or None when there is none to read (no database configured, or
    a SQLite file never written: it is not created to find that out)."""
    url = publish_url(config, dict(os.environ))
    if not config.publish.database or missing_sqlite(url):
        yield None
        return
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _current(config: SegmlConfig) -> dict | None:
    """The current publication in the CRM database; None without one."""
    with _published_database(config) as engine:
        return None if engine is None else current_publication(engine, config.name)


def _champion_publication(config: SegmlConfig) -> dict | None:
    """Without a database, what stands for the current publication: the champion's run and as-of date."""
    champion = tracking.champion_version(config)
    if champion is None:
        return None
    run = tracking.run_of_version(config, champion)
    _, _, params = tracking.run_record(tracking.tracking_uri(config), run)
    as_of = dt.date.fromisoformat(params["as_of"]) if params.get("as_of") else dt.date.min
    return {"as_of": as_of, "run_id": run}


def check_date(config: SegmlConfig, as_of: dt.date) -> None:
    """Refuse early (before any fitting) a run whose as-of date is before the publication the CRM reads.

    The same check runs again inside the commit's transaction.
    """
    check_not_stale(_current(config) if config.publish.database else _champion_publication(config), as_of)


def same_day_refit(config: SegmlConfig, as_of: dt.date) -> str | None:
    """The run id of a published refit of ``as_of``, if any: a scoring run of that date is not
    published over it (it would replace the refit's record with the same model's assignments)."""
    import sqlalchemy as sa

    from segml.publish import publications_table

    with _published_database(config) as engine:
        if engine is None:
            return None
        with engine.connect() as connection:
            return connection.execute(sa.select(publications_table.c.run_id).where(
                publications_table.c.segmentation == config.name, publications_table.c.as_of == as_of,
                publications_table.c.source == "refit")).scalar()


def crm_assignments(config: SegmlConfig, published: tracking.Published):
    """The assignments the CRM holds now: the current publication's when it is not the champion's own
    (a scoring run published since), else the champion's. Migration and ``changes.csv`` compare with them."""
    from segml.publish import read_current

    with _published_database(config) as engine:
        current = None if engine is None else current_publication(engine, config.name)
        if current is None or current["run_id"] == published.run_id:
            return published.assignments
        return read_current(engine, config.name)


def record_failure(handle: tracking.RunHandle, error: BaseException, begun: bool, committed: bool) -> None:
    """What a failed flow run leaves on its MLflow run: finished later by ``settle`` when it committed,
    else failed, and ``abandoned`` when it had recorded the intent to publish."""
    if committed:
        # Published: the next flow run or `segml repair` finishes it from its logged files.
        tracking.set_tags(handle.uri, handle.run_id, {
            "segml.error": f"published, but finishing failed: {error}; `segml repair` completes it"})
        return
    if begun:
        tracking.set_tags(handle.uri, handle.run_id, {tracking.PUBLICATION_TAG: "abandoned"})
    tracking.end_run(handle, error)


FILES_ONLY = "files_only"


def finish(config: SegmlConfig, uri: str, run_id: str, files: Path, destination: Path, as_of: dt.date,
           version: int, source: str, database: bool = True) -> None:
    """Steps 3 and 4: the files into the output folder, the alias, the run complete and finished.

    ``database`` False: the run's files are published but not its rows (a scoring run of the published
    refit's date, or no database configured); the run says so (``files_only``).
    """
    published = publish_folder(files, destination)
    # A file an earlier run of this date wrote and this one did not (say, changes.csv once switched off)
    # would sit beside this run's files as if it were one of them.
    for stale in [p for p in destination.rglob("*") if p.is_file()]:
        if str(stale.relative_to(destination)) not in published and stale.name != MARKER:
            stale.unlink()
    record = {"run_id": run_id, "model_version": version, "as_of": as_of.isoformat(), "source": source,
              "in_database": database}
    write_atomic(destination / MARKER, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    if source == "refit":
        tracking.set_champion(config, run_id, version)
    tracking.set_tags(uri, run_id, {tracking.PUBLICATION_TAG: COMPLETE if database else FILES_ONLY})
    tracking.set_status(uri, run_id, "FINISHED")


def _finish_from_record(config: SegmlConfig, uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Finish a committed run from the files it logged to MLflow."""
    as_of = dt.date.fromisoformat(tags["segml.as_of"])
    with tempfile.TemporaryDirectory(prefix="segml-repair-") as tmp:
        files = tracking.download_run_files(uri, run_id, Path(tmp))
        finish(config, uri, run_id, files, Path(tags["segml.destination"]), as_of,
               int(tags["segml.model_version"]), tags.get("segml.source", "refit"))


def _process_alive(tags: dict[str, str], everywhere: bool = False) -> bool:
    """Whether the process that recorded a run may still be running: alive on this machine, or on another
    machine, where it cannot be told (unless ``everywhere``: the user says no segml run is going on)."""
    if tags.get("segml.host") != socket.gethostname():
        return tags.get("segml.host") is not None and not everywhere
    return not _process_gone(tags) and tags.get("segml.pid") != str(os.getpid())


def _process_gone(tags: dict[str, str]) -> bool:
    """Whether the process that recorded a run has ended (only known on the same machine)."""
    if tags.get("segml.host") != socket.gethostname() or not tags.get("segml.pid", "").isdigit():
        return False
    pid = int(tags["segml.pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


PROMOTION_TAGS = ("segml.promoted_by", "segml.promotion_reason", "segml.promoted_at")


def _abandon(uri: str, run_id: str) -> None:
    """A publication that never committed: tagged ``abandoned``, and no promotion claimed."""
    tracking.set_tags(uri, run_id, {tracking.PUBLICATION_TAG: "abandoned"})
    for key in PROMOTION_TAGS:
        tracking.delete_tag(uri, run_id, key)


def settle(config: SegmlConfig, everywhere: bool = False) -> list[str]:
    """Bring the database, the files and the alias onto one run after a crash; returns what was done.

    Runs recorded by a process that is still alive are left alone, and so are
    runs recorded on another machine (they may be running now), unless
    ``everywhere`` (``segml repair --all-machines``, when no run is going on anywhere).
    """
    done: list[str] = []
    uri = tracking.tracking_uri(config)
    current_run, published_runs = None, set()
    if config.publish.database:
        with _published_database(config) as engine:
            current = None if engine is None else current_publication(engine, config.name)
            if current is not None:
                current_run, published_runs = current["run_id"], publication_runs(engine, config.name)
    else:
        champion = _champion_publication(config)
        current_run = champion["run_id"] if champion else None
    for experiment in (config.experiment_name, f"{config.experiment_name}-scores"):
        for run_id, status, tags in tracking.runs_to_settle(config, experiment):
            state = tags.get(tracking.PUBLICATION_TAG)
            if run_id == current_run and state == PENDING:
                if _process_alive(tags, everywhere):
                    continue  # it is finishing its publication now
                _finish_from_record(config, uri, run_id, tags)
                done.append(f"run {run_id} was committed but not finished: its files, alias and status "
                            "are now in place")
            elif run_id in published_runs and state == PENDING and not _process_alive(tags, everywhere):
                # Committed, then replaced by a later publication before it finished: history, not current.
                tracking.set_tags(uri, run_id, {tracking.PUBLICATION_TAG: "superseded"})
                tracking.set_status(uri, run_id, "FINISHED")
                done.append(f"run {run_id} was published, then replaced before it finished: marked superseded")
            elif run_id != current_run and (status == "RUNNING" or state == PENDING) and (
                    _process_gone(tags) or (everywhere and not _process_alive(tags, everywhere))):
                # Never committed. A held-back run whose promotion was cut off keeps its status (FAILED).
                never = "before its publication was committed" if state == PENDING else "before it ended"
                tracking.set_tags(uri, run_id, {
                    "segml.error": f"the process stopped {never}; nothing of this run was published"})
                if state == PENDING:
                    _abandon(uri, run_id)
                marked = "FAILED" if state == PENDING else "KILLED"
                if status == "RUNNING":
                    tracking.set_status(uri, run_id, marked)
                done.append(f"run {run_id} was left {'pending' if state == PENDING else 'running'} by a "
                            f"process that is gone: marked {marked if status == 'RUNNING' else 'abandoned'}")
    if current_run is not None and config.publish.database:
        status, tags, _ = tracking.run_record(uri, current_run)
        if tags.get("segml.source", "refit") == "refit" and tags.get("segml.model_version"):
            version = int(tags["segml.model_version"])
            if tracking.champion_version(config) != version:
                tracking.set_champion(config, current_run, version)
                done.append(f"the alias champion pointed at another version than the published run "
                            f"{current_run}: now at version {version}")
    for line in done:
        log.warning("repair: %s", line)
    return done


def promote(config: SegmlConfig, run_id: str, reason: str, force: bool = False) -> dict:
    """Publish a recorded run that was held back (a failed gate) after a person reviewed it.

    The run's logged files are published exactly as recorded (database,
    files, alias ``champion``) through the same steps as a flow run, and the
    run records who promoted it, when and why. A run compared with another
    champion than the current one is refused unless ``force``: its ids and
    migration would describe a CRM that has moved on.
    """
    import getpass

    from segml.errors import SegmlError

    uri = tracking.tracking_uri(config)
    if not reason.strip():
        raise SegmlError("--reason is empty: say why this run is published despite its gates")
    status, tags, params = tracking.run_record(uri, run_id)
    if tags.get(tracking.PUBLICATION_TAG) == COMPLETE:
        raise SegmlError(f"run {run_id} is already published")
    if "as_of" not in params:
        raise SegmlError(f"run {run_id} is not a recorded segmentation of {config.name!r} (it has no as_of param)")
    version = tracking.version_of_run(config, run_id)
    if version is None:
        raise SegmlError(f"run {run_id} registered no version of {config.registered_model_name!r}; "
                         "only a run of this configuration's model can be promoted")
    champion = tracking.champion_version(config)
    champion_run = None if champion is None else tracking.run_of_version(config, champion)
    compared = tags.get("segml.compared_with", "none")
    if compared != (champion_run or "none") and not force:
        raise SegmlError(
            f"run {run_id} was compared with the published run {compared}, but the champion is now "
            f"{champion_run or 'none'}: its segment ids and migration would be out of date. Rerun the date, "
            "or promote with --force")
    as_of = dt.date.fromisoformat(params["as_of"])
    destination = destination_of(config, as_of, "refit")
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="segml-promote-") as tmp:
        files = tracking.download_run_files(uri, run_id, Path(tmp))
        assignments = pd.read_parquet(files / "assignments.parquet")
        catalogue = pd.read_csv(files / "catalogue.csv", dtype=str)
        segments = pd.read_csv(files / "segments.csv", dtype={"segment_id": str})
        catalogue["description"] = catalogue["segment_id"].map(segments.set_index("segment_id")["description"])
        # Who and why go with the intent, so a promotion cut off after its commit still says it;
        # a promotion that never commits takes them back (here, or in settle after a crash).
        tracking.set_tags(uri, run_id, {**process_tags(), "segml.promoted_by": getpass.getuser(),
                                        "segml.promotion_reason": reason,
                                        "segml.promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
        begin(uri, run_id, as_of, "refit", version, destination)
        try:
            rows = commit(config, as_of, assignments, catalogue, run_id, version, "refit", force,
                          None if force else compared)
        except BaseException:
            _abandon(uri, run_id)
            raise
        gate_error = tags.get("segml.error", "")
        if gate_error:
            tracking.set_tags(uri, run_id, {"segml.gate_error": gate_error})
        tracking.delete_tag(uri, run_id, "segml.error")  # published after all: the gate failure is history
        finish(config, uri, run_id, files, destination, as_of, version, "refit")
    log.info("run %s promoted by %s: %s", run_id, getpass.getuser(), reason)
    return {"run_id": run_id, "model_version": version, "as_of": as_of.isoformat(), "rows": rows,
            "output_dir": str(destination)}
