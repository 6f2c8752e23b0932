"""Publishing assignments to a database the CRM reads: SQLite by default, PostgreSQL in production.

Tables (created on first use; ``segml_schema`` records the schema version and
older schemas are migrated in place):

- ``segml_assignments``: one row per customer per published as-of date per
  segmentation (primary key ``segmentation, as_of, customer_id``), with the
  ``source`` of the row: ``refit`` (a fitted run) or ``score`` (a scoring run
  with the champion model);
- ``segml_segments``: the segment catalogue per segmentation (id, name,
  description, first and last published as-of date, retired);
- ``segml_publications``: one row per published as-of date (run, model version, source, rows, time);
- ``segml_current``: which publication each segmentation's CRM reads now;
- ``segml_current_assignments`` (a view): the rows of that publication.

The current publication is the last one *made*, not the largest date: a
publication never replaces a current one of a later as-of date unless forced
(:class:`StalePublicationError`), so a far-future date in the data cannot pin
the CRM, and a rerun of a past date does not demote a newer one.

A publication is one transaction: it replaces the rows of its as-of date (a
rerun never duplicates them) and either all of it lands or none of it does.
Publications of one segmentation are serialised (a PostgreSQL advisory lock;
SQLite's write lock), so of two at once one wins cleanly; different
segmentations touch different rows. PostgreSQL is loaded with ``COPY``.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from segml.errors import SegmlError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
CHUNK_ROWS = 50_000

metadata = sa.MetaData()

schema_table = sa.Table(
    "segml_schema", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

assignments_table = sa.Table(
    "segml_assignments", metadata,
    sa.Column("segmentation", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("customer_id", sa.String(200), primary_key=True),
    sa.Column("segment_id", sa.String(20), nullable=False),
    sa.Column("segment_name", sa.String(200), nullable=False),
    sa.Column("segment_probability", sa.Float, nullable=False),
    sa.Column("recency_days", sa.Integer, nullable=False),
    sa.Column("frequency", sa.Integer, nullable=False),
    sa.Column("monetary", sa.Float, nullable=False),
    sa.Column("tenure_days", sa.Integer, nullable=False),
    sa.Column("avg_order_value", sa.Float, nullable=False),
    sa.Column("previous_segment_id", sa.String(20)),
    sa.Column("segment_changed", sa.Boolean),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(10), nullable=False, server_default="refit"),
)

segments_table = sa.Table(
    "segml_segments", metadata,
    sa.Column("segmentation", sa.String(200), primary_key=True),
    sa.Column("segment_id", sa.String(20), primary_key=True),
    sa.Column("segment_name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("first_as_of", sa.Date, nullable=False),
    sa.Column("last_as_of", sa.Date, nullable=False),
    sa.Column("retired", sa.Boolean, nullable=False),
)

publications_table = sa.Table(
    "segml_publications", metadata,
    sa.Column("segmentation", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(10), nullable=False, server_default="refit"),
)

current_table = sa.Table(
    "segml_current", metadata,
    sa.Column("segmentation", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("source", sa.String(10), nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
)

#: The customer attribute columns added to ``segml_assignments`` (one per attribute name, whatever
#: the segmentation) and their type: ``category``, ``number`` or ``date`` (whole years or months).
attribute_columns_table = sa.Table(
    "segml_attribute_columns", metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("type", sa.String(10), nullable=False),
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
)

campaigns_table = sa.Table(
    "segml_campaigns", metadata,
    sa.Column("segmentation", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("sent_date", sa.Date, nullable=False),
    sa.Column("selection", sa.Text, nullable=False),
    sa.Column("control_share", sa.Float, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("report_days", sa.Integer, nullable=False),
    sa.Column("target_customers", sa.Integer, nullable=False),
    sa.Column("control_customers", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True)),
)

campaign_members_table = sa.Table(
    "segml_campaign_members", metadata,
    sa.Column("segmentation", sa.String(200), primary_key=True),
    sa.Column("campaign", sa.String(200), primary_key=True),
    sa.Column("customer_id", sa.String(200), primary_key=True),
    sa.Column("segment_id", sa.String(20), nullable=False),
    sa.Column("campaign_group", sa.String(10), nullable=False),
)

#: The SQL type of an attribute column, by attribute type.
ATTRIBUTE_SQL_TYPES = {"category": sa.String(200), "number": sa.Float(), "date": sa.Integer()}

CURRENT_VIEW = "segml_current_assignments"
_CURRENT_VIEW_SQL = f"""
CREATE VIEW {CURRENT_VIEW} AS
SELECT a.* FROM segml_assignments a
JOIN segml_current c ON a.segmentation = c.segmentation AND a.as_of = c.as_of
"""

#: The columns of the published ``segml_assignments`` table (segmentation.ASSIGNMENT_COLUMNS are the frame's).
TABLE_COLUMNS = [c.name for c in assignments_table.columns]

def _replace_view(dialect: str) -> list[str]:
    """Statements that give the current view its new definition. PostgreSQL replaces it in place, so a
    CRM's own views built on it keep working; SQLite can only drop and create it."""
    if dialect == "postgresql":
        return [_CURRENT_VIEW_SQL.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)]
    return [f"DROP VIEW {CURRENT_VIEW}", _CURRENT_VIEW_SQL]


#: Schema migrations: version -> statements that bring version - 1 up to it (``VIEW`` stands for
#: :func:`_replace_view`'s statements in the database's dialect).
MIGRATIONS: dict[int, list[str]] = {
    # 2: the source of every row and publication, and an explicit current publication (the
    # latest as-of date of each segmentation, as version 1's view chose it).
    2: [
        "ALTER TABLE segml_assignments ADD COLUMN source VARCHAR(10) DEFAULT 'refit' NOT NULL",
        "ALTER TABLE segml_publications ADD COLUMN source VARCHAR(10) DEFAULT 'refit' NOT NULL",
        "CREATE TABLE segml_current (segmentation VARCHAR(200) NOT NULL PRIMARY KEY, as_of DATE NOT NULL, "
        "run_id VARCHAR(64) NOT NULL, model_version INTEGER NOT NULL, source VARCHAR(10) NOT NULL, "
        "published_at TIMESTAMP WITH TIME ZONE NOT NULL)",
        "INSERT INTO segml_current (segmentation, as_of, run_id, model_version, source, published_at) "
        "SELECT p.segmentation, p.as_of, p.run_id, p.model_version, p.source, p.published_at "
        "FROM segml_publications p JOIN (SELECT segmentation, max(as_of) AS as_of FROM segml_publications "
        "GROUP BY segmentation) latest ON p.segmentation = latest.segmentation AND p.as_of = latest.as_of",
        "VIEW",
    ],
    # 3: customer attribute columns (added to segml_assignments as attributes are first published,
    # recorded here) and campaigns with their target and control members.
    3: [attribute_columns_table, campaigns_table, campaign_members_table],
}


class StalePublicationError(SegmlError):
    """A publication would replace a current one of a later as-of date."""


def create_engine(url: str) -> sa.Engine:
    """An engine whose transactions lock for writing at once (SQLite) and wait for a busy database."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        if engine.url.database and engine.url.database != ":memory:":
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)

        @sa.event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_connection, _record):
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _write_lock_at_begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def missing_sqlite(url: str) -> bool:
    """Whether ``url`` names a SQLite file that does not exist yet (nothing was ever published there;
    opening it would create it)."""
    parsed = sa.engine.make_url(url)
    return (parsed.get_backend_name() == "sqlite" and bool(parsed.database) and parsed.database != ":memory:"
            and not Path(parsed.database).exists())


def ensure_schema(engine: sa.Engine) -> int:
    """Create the tables and the view on first use; migrate an older schema; return the version."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two first publishes at once must not both create the tables.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('segml:schema'))"))
        inspector = sa.inspect(connection)
        if not inspector.has_table(schema_table.name):
            metadata.create_all(connection)
            connection.exec_driver_sql(_CURRENT_VIEW_SQL)
            connection.execute(schema_table.insert().values(version=SCHEMA_VERSION,
                                                            applied_at=dt.datetime.now(dt.UTC)))
            log.info("created the segml tables (schema version %d)", SCHEMA_VERSION)
            return SCHEMA_VERSION
        version = connection.execute(sa.select(sa.func.max(schema_table.c.version))).scalar_one()
        if version > SCHEMA_VERSION:
            raise SegmlError(f"the database holds segml schema version {version}, newer than this segml "
                             f"({SCHEMA_VERSION}); upgrade segml")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS.get(step, []):
                if isinstance(statement, sa.Table):
                    statement.create(connection)
                    continue
                for each in _replace_view(connection.dialect.name) if statement == "VIEW" else [statement]:
                    connection.exec_driver_sql(each)
            connection.execute(schema_table.insert().values(version=step, applied_at=dt.datetime.now(dt.UTC)))
        return SCHEMA_VERSION


def _rows(assignments: pd.DataFrame, segmentation: str, published_at: dt.datetime, source: str,
          attributes: list[str] = ()) -> pd.DataFrame:
    frame = assignments.assign(segmentation=segmentation, published_at=pd.Timestamp(published_at), source=source)
    frame["as_of"] = pd.to_datetime(frame["as_of"]).dt.date
    frame["segment_changed"] = frame["segment_changed"].astype("boolean")
    frame["previous_segment_id"] = frame["previous_segment_id"].astype(object).where(
        frame["previous_segment_id"].notna(), None)
    return frame[[*TABLE_COLUMNS, *attributes]]


def attribute_types(connection: sa.Connection) -> dict[str, str]:
    """The attribute columns of ``segml_assignments`` and their types (none before schema 3)."""
    if not sa.inspect(connection).has_table(attribute_columns_table.name):
        return {}
    rows = connection.execute(sa.select(attribute_columns_table.c.name, attribute_columns_table.c.type)
                              .order_by(attribute_columns_table.c.added_at, attribute_columns_table.c.name))
    return dict(rows.all())


def add_attribute_columns(connection: sa.Connection, types: dict[str, str]) -> None:
    """Give ``segml_assignments`` a typed column for every attribute of ``types`` it lacks (rows
    published before have NULL there), and the current view with them; an attribute published
    before with another type is an error."""
    known = attribute_types(connection)
    clash = {n: (known[n], t) for n, t in types.items() if n in known and known[n] != t}
    if clash:
        listed = "; ".join(f"{n!r} is published as a {old} column, now declared as {new}" for n, (old, new) in clash.items())
        raise SegmlError(f"{listed}: one attribute name has one type in the CRM database; give the attribute "
                         "another name or its published type")
    new = [n for n in types if n not in known]
    if not new:
        return
    quote = connection.dialect.identifier_preparer.quote
    for name in new:
        sql_type = ATTRIBUTE_SQL_TYPES[types[name]].compile(dialect=connection.dialect)
        connection.exec_driver_sql(f"ALTER TABLE {assignments_table.name} ADD COLUMN {quote(name)} {sql_type}")
        connection.execute(attribute_columns_table.insert().values(name=name, type=types[name],
                                                                   added_at=dt.datetime.now(dt.UTC)))
    for statement in _replace_view(connection.dialect.name):
        connection.exec_driver_sql(statement)
    log.info("added attribute columns %s to %s", new, assignments_table.name)


def _copy_postgres(connection: sa.Connection, rows: pd.DataFrame, after_chunk: Callable[[int], None] | None) -> None:
    """``COPY ... FROM STDIN`` in CSV chunks written by Arrow (an unquoted empty field is NULL)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    cursor = connection.connection.driver_connection.cursor()
    columns = ", ".join(connection.dialect.identifier_preparer.quote(c) for c in rows.columns)
    options = pacsv.WriteOptions(include_header=False)
    with cursor.copy(f"COPY segml_assignments ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
        for start in range(0, len(rows), CHUNK_ROWS):
            buffer = io.BytesIO()
            pacsv.write_csv(pa.Table.from_pandas(rows.iloc[start:start + CHUNK_ROWS], preserve_index=False),
                            buffer, options)
            copy.write(buffer.getvalue())
            if after_chunk:
                after_chunk(min(start + CHUNK_ROWS, len(rows)))


def _insert_rows(connection: sa.Connection, rows: pd.DataFrame, after_chunk: Callable[[int], None] | None) -> None:
    """Plain ``executemany`` on the driver, with values already in SQLAlchemy's SQLite storage formats."""
    values = {}
    columns = list(rows.columns)
    for column in columns:
        series = rows[column]
        if column in ("segmentation", "as_of", "published_at", "source") and len(series) and series.nunique() == 1:
            # One value for the whole publication: format it once.
            first = series.iloc[0]
            if column == "as_of":
                first = first.isoformat()
            elif column == "published_at":
                first = first.tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S.%f")
            values[column] = [first] * len(series)
            continue
        if column == "as_of":
            series = series.map(lambda d: d.isoformat())
        elif column == "published_at":
            series = series.dt.tz_convert("UTC").dt.strftime("%Y-%m-%d %H:%M:%S.%f")
        values[column] = series.astype(object).where(series.notna(), None).tolist()
    cursor = connection.connection.driver_connection.cursor()
    placeholders = ", ".join("?" for _ in columns)
    names = ", ".join(connection.dialect.identifier_preparer.quote(c) for c in columns)
    statement = f"INSERT INTO segml_assignments ({names}) VALUES ({placeholders})"
    table = list(zip(*(values[c] for c in columns)))
    for start in range(0, len(table), CHUNK_ROWS):
        cursor.executemany(statement, table[start:start + CHUNK_ROWS])
        if after_chunk:
            after_chunk(min(start + CHUNK_ROWS, len(table)))


def current_publication(engine: sa.Engine, segmentation: str) -> dict | None:
    """The publication the CRM reads now for ``segmentation`` (``as_of``, ``run_id``,
    ``model_version``, ``source``, ``published_at``), or None before the first one."""
    ensure_schema(engine)
    with engine.connect() as connection:
        row = connection.execute(sa.select(current_table).where(
            current_table.c.segmentation == segmentation)).mappings().first()
    return dict(row) if row is not None else None


def publication_runs(engine: sa.Engine, segmentation: str) -> set[str]:
    """The run ids of every publication of ``segmentation`` still recorded."""
    with engine.connect() as connection:
        return set(connection.execute(sa.select(publications_table.c.run_id).where(
            publications_table.c.segmentation == segmentation)).scalars())


def check_not_stale(current: dict | None, as_of: dt.date, force: bool = False) -> None:
    """Refuse a publication as of ``as_of`` while ``current`` is of a later date, unless ``force``."""
    if current is not None and not force and current["as_of"] > as_of:
        raise StalePublicationError(
            f"the current publication is as of {current['as_of']} (run {current['run_id']}); a publication "
            f"as of {as_of} would move it back in time, so it is not made. Rerun with --force to publish "
            "this past date on purpose")


def check_base(latest_refit: str | None, based_on: str | None, source: str, run_id: str | None = None) -> None:
    """Refuse a publication built on another refit than the last one published (unless ``based_on`` is None).

    A refit matched its ids and computed its migration against the refit published when it started
    (``based_on``, ``"none"`` for a first run); a scoring run assigns with that refit's model. When
    another refit was published in between (two runs overlapping), publishing it would reuse ids or
    serve an older model's segments.
    """
    if based_on is None or (latest_refit or "none") == based_on or (run_id is not None and latest_refit == run_id):
        return  # (the last case: a retry of this very publication after its commit went through)
    what = "its segment ids and migration" if source == "refit" else "the model it scored with"
    raise StalePublicationError(
        f"another refit (run {latest_refit}) was published after this run started from run {based_on}: {what} "
        "would be out of date, so it is not published. Run it again")


def _latest_refit(connection: sa.Connection, segmentation: str) -> str | None:
    return connection.execute(
        sa.select(publications_table.c.run_id)
        .where(publications_table.c.segmentation == segmentation, publications_table.c.source == "refit")
        .order_by(publications_table.c.published_at.desc()).limit(1)).scalar()


def publish_assignments(engine: sa.Engine, segmentation: str, as_of: dt.date, assignments: pd.DataFrame,
                        catalogue: pd.DataFrame | None, run_id: str, model_version: int,
                        after_chunk: Callable[[int], None] | None = None, source: str = "refit",
                        force: bool = False, based_on: str | None = None,
                        attributes: dict[str, str] | None = None) -> int:
    """Publish one as-of date of a segmentation in one transaction and make it current; returns the
    rows written.

    ``assignments`` has the CRM columns; ``catalogue`` the segment catalogue
    (``segment_id``, ``segment_name``, ``status``, ``first_as_of``,
    ``last_as_of`` and optionally ``description``), None for a scoring run,
    which leaves the catalogue as it is. ``source`` is ``refit`` or
    ``score``. A current publication of a later as-of date is kept (and
    :class:`StalePublicationError` raised) unless ``force``, as is a refit of
    the same date against a scoring run, and a run ``based_on`` another refit
    than the last one published (:func:`check_base`). ``after_chunk`` is
    called with the rows written so far after each chunk. ``attributes``
    (name -> ``category``, ``number`` or ``date``) are the customer attribute
    columns of ``assignments`` to publish; the table gains a typed column
    for each one it lacks (:func:`add_attribute_columns`).
    """
    ensure_schema(engine)
    published_at = dt.datetime.now(dt.UTC)
    attributes = dict(attributes or {})
    rows = _rows(assignments, segmentation, published_at, source, [a for a in attributes if a in assignments])
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                               {"name": f"segml:{segmentation}"})
        current = connection.execute(sa.select(current_table).where(
            current_table.c.segmentation == segmentation)).mappings().first()
        check_not_stale(dict(current) if current is not None else None, as_of, force)
        if not force:
            check_base(_latest_refit(connection, segmentation), based_on, source, run_id)
            same_day = connection.execute(sa.select(publications_table.c.source, publications_table.c.run_id).where(
                publications_table.c.segmentation == segmentation, publications_table.c.as_of == as_of)).first()
            if source == "score" and same_day is not None and same_day[0] == "refit":
                raise StalePublicationError(
                    f"the refit of {as_of} (run {same_day[1]}) is published; a scoring run of the same date would "
                    "replace its record, so it is not published. Score a later date, or use --force")
        add_attribute_columns(connection, {a: t for a, t in attributes.items() if a in assignments})
        connection.execute(assignments_table.delete().where(assignments_table.c.segmentation == segmentation,
                                                            assignments_table.c.as_of == as_of))
        connection.execute(publications_table.delete().where(publications_table.c.segmentation == segmentation,
                                                             publications_table.c.as_of == as_of))
        if connection.dialect.name == "postgresql":
            _copy_postgres(connection, rows, after_chunk)
        else:
            _insert_rows(connection, rows, after_chunk)
        connection.execute(publications_table.insert().values(
            segmentation=segmentation, as_of=as_of, run_id=run_id, model_version=int(model_version),
            rows=len(rows), published_at=published_at, source=source))
        connection.execute(current_table.delete().where(current_table.c.segmentation == segmentation))
        connection.execute(current_table.insert().values(
            segmentation=segmentation, as_of=as_of, run_id=run_id, model_version=int(model_version),
            source=source, published_at=published_at))
        if catalogue is not None:
            connection.execute(segments_table.delete().where(segments_table.c.segmentation == segmentation))
            connection.execute(segments_table.insert(), [
                {"segmentation": segmentation, "segment_id": r["segment_id"], "segment_name": r["segment_name"],
                 "description": r.get("description"), "first_as_of": pd.Timestamp(r["first_as_of"]).date(),
                 "last_as_of": pd.Timestamp(r["last_as_of"]).date(), "retired": r["status"] == "retired"}
                for r in catalogue.to_dict(orient="records")])
    log.info("published %d assignments of %s as of %s (%s)", len(rows), segmentation, as_of, source)
    return len(rows)


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Published rows as read back, with the types they were written with: SQLite has no boolean
    (``segment_changed`` comes back as 0/1) and no date (``as_of`` comes back as text)."""
    frame = frame.copy()
    if "segment_changed" in frame:
        frame["segment_changed"] = frame["segment_changed"].astype("boolean")
    if "as_of" in frame:
        frame["as_of"] = pd.to_datetime(frame["as_of"]).dt.date
    return frame


def current_view(connection: sa.Connection) -> sa.TableClause:
    """The current view with its columns: the assignment table's and every attribute column."""
    return sa.table(CURRENT_VIEW, *[sa.column(c) for c in [*TABLE_COLUMNS, *attribute_types(connection)]])


def read_current(engine: sa.Engine, segmentation: str) -> pd.DataFrame:
    """The current assignments of a segmentation (its current publication, see ``segml_current``)."""
    with engine.connect() as connection:
        view = current_view(connection)
        return typed(pd.read_sql(sa.select(view).where(view.c.segmentation == segmentation)
                                 .order_by(view.c.customer_id), connection))
