"""The ``segml`` command."""

from __future__ import annotations

import datetime as dt
import logging
import os
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from segml.config import load_config
from segml.errors import SegmlError


def _quiet_defaults() -> None:
    """Settings for running on a laptop or a closed network, unless the user set them.

    Prefect reads its settings once, when it is first imported, so they are
    set when the command line is loaded (nothing above imports Prefect), not
    when a command runs: a busy machine needs more than Prefect's default
    20 s to start its temporary server.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


_quiet_defaults()

app = typer.Typer(
    name="segml",
    help="Behavioural customer segments from raw purchase records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML configuration file, e.g. configs/online_retail.yaml.")]
AsOfOpt = Annotated[
    dt.datetime | None,
    typer.Option("--as-of", formats=["%Y-%m-%d"],
                 help="Compute features as of this date (YYYY-MM-DD); overrides window.as_of."),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


def _fail(exc: BaseException, debug: bool) -> None:
    """One ``error:`` line (the traceback only with ``--debug``), secrets masked, then exit 1."""
    from rich.markup import escape

    from segml.secrets import mask_url

    if debug:
        console.print(mask_url(traceback.format_exc()), markup=False, highlight=False)
    if isinstance(exc, SegmlError):
        message = mask_url(str(exc))
    else:
        # Infrastructure (a database or tracking server gone, a full disk): what failed, in one line.
        lines = [line for line in str(exc).splitlines() if line.strip()]
        message = f"{type(exc).__name__}: {mask_url(lines[0] if lines else '')[:500]}" + (
            "" if debug else " (run again with --debug for the traceback)")
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    # Drop the failed frames' locals now (open DuckDB connections among them) rather than at exit.
    traceback.clear_frames(exc.__traceback__)
    raise typer.Exit(code=1)


def _print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['n_segments']} segments as of {summary['as_of']}, "
                        f"homogeneity {summary['homogeneity']:.2f}")
    for column in ("id", "name", "customers", "share", "revenue", "homogeneity"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for row in summary["segments"]:
        table.add_row(str(row["segment_id"]), row["segment_name"], f"{row['size']:,}", f"{row['share']:.0%}",
                      f"{row['revenue_share']:.0%}", f"{row['homogeneity']:.2f}")
    out.print(table)
    for row in summary["segments"]:
        out.print(f"  {row['segment_id']} [bold]{row['segment_name']}[/]: {row['description']}", highlight=False)
    for change in summary.get("renamed", []):
        out.print(f"  {change['segment_id']} renamed from {change['from']!r} to {change['to']!r}: {change['why']}",
                  highlight=False)
    out.print(f"Lines: {summary['rows_read']:,} read, {summary['rows_used']:,} used, "
              f"{summary['rows_rejected']:,} rejected, {summary['rows_outside_window']:,} outside the window; "
              f"{summary['customers']:,} customers segmented.")
    out.print(f"MLflow: run {summary['run_id']} in experiment {summary['experiment']!r} at "
              f"{summary['tracking_uri']}; model {summary['model_name']!r} version {summary['model_version']}.")
    out.print(f"Results are in {summary['output_dir']} (report: segment_report.pdf)")
    for line in summary.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {line}", highlight=False)


class _NoTracebackForKnownErrors(logging.Filter):
    """Prefect logs a failed task with its traceback; for segml's own errors the message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SegmlError):
            record.exc_info = None
            record.exc_text = None
        return True


def _prepare(config: Path, debug: bool) -> None:
    """Check the configuration, then set up Prefect's logging for the command line."""
    _quiet_defaults()
    load_config(config)  # fail fast, before starting Prefect, on a bad configuration
    from prefect.logging.configuration import setup_logging

    if not debug:
        setup_logging()
        for handler in logging.getLogger().handlers:  # Prefect's console handler sits on the root logger
            handler.addFilter(_NoTracebackForKnownErrors())


ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Publish even when the CRM reads a publication of a later as-of date.")]


def _run_pipeline(module: str, name: str, config: Path, as_of: dt.date | None, debug: bool,
                  force: bool = False) -> dict:
    import importlib

    _prepare(config, debug)
    return getattr(importlib.import_module(module), name)(str(config), as_of, force)


def run_flow(config: Path, as_of: dt.date | None, debug: bool = False, force: bool = False) -> dict:
    """Run the segmentation flow on CONFIG; returns its summary."""
    return _run_pipeline("pipelines.segment", "segment_customers", config, as_of, debug, force)


@app.command()
def run(config: ConfigArg, as_of: AsOfOpt = None, force: ForceOpt = False, debug: DebugOpt = False) -> None:
    """Segment the customers of CONFIG's purchases, record the run in MLflow and publish the results."""
    try:
        summary = run_flow(config, as_of.date() if as_of else None, debug, force)
    except Exception as exc:  # noqa: BLE001 - every error ends the command with one message
        _fail(exc, debug)
    _print_summary(summary)


@app.command()
def score(config: ConfigArg, as_of: AsOfOpt = None, force: ForceOpt = False, debug: DebugOpt = False) -> None:
    """Assign every current customer to the champion's segments, without refitting, and publish them."""
    try:
        summary = _run_pipeline("pipelines.score", "score_customers", config, as_of.date() if as_of else None,
                                debug, force)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    table = Table(title=f"{summary['customers']:,} customers scored as of {summary['as_of']} "
                        f"with model version {summary['model_version']}")
    for column in ("id", "name", "customers"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for row in summary["segment_counts"]:
        table.add_row(row["segment_id"], row["segment_name"], f"{row['customers']:,}")
    out.print(table)
    new = summary["customers_new"]
    out.print(f"{new:,} customer{'' if new == 1 else 's'} not in the published segmentation; "
              f"{summary['customers_changed']:,} changed segment.")
    if summary.get("published"):
        out.print("Published to the CRM database: the current assignments are this scoring run's.")
    elif summary.get("held_back"):
        console.print(f"[bold yellow]warning:[/] {summary['held_back']}", highlight=False)
    out.print(f"Results are in {summary['output_dir']}")


@app.command()
def backfill(
    config: ConfigArg,
    start: Annotated[dt.datetime, typer.Option("--from", formats=["%Y-%m-%d"], help="First as-of date.")],
    end: Annotated[dt.datetime, typer.Option("--to", formats=["%Y-%m-%d"], help="Last as-of date (inclusive).")],
    every: Annotated[str, typer.Option(help="Step: day, week, month, or a count such as 7d, 2w, 3m.")] = "month",
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the segmentation for every as-of date from --from to --to, in order, building the id history."""
    try:
        from pipelines.backfill import as_of_dates

        as_of_dates(start.date(), end.date(), every)  # a bad period fails before any flow starts
        _prepare(config, debug)
        from pipelines.backfill import backfill as backfill_flow

        results = backfill_flow(str(config), start.date(), end.date(), every, force)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "results", None):
            _print_backfill(exc.results)  # the steps that were published, and why the others were not
        _fail(exc, debug)
    _print_backfill(results)


def _print_backfill(results: list[dict]) -> None:
    table = Table(title=f"Backfill of {len(results)} as-of dates")
    for column in ("as of", "segments", "homogeneity", "changed segment", "new", "renamed", "output"):
        table.add_column(column)
    for r in results:
        if not r.get("promoted", True):
            table.add_row(r["as_of"], "", "", "", "", "", f"not published: {r['error']}")
            continue
        moved = r["migration"]
        table.add_row(r["as_of"], str(r["n_segments"]), f"{r['homogeneity']:.2f}",
                      f"{moved.get('changed_share', 0):.1%}" if "changed_share" in moved else "first run",
                      f"{moved.get('customers_new', 0):,.0f}",
                      "; ".join(f"{c['segment_id']} {c['from']} \u2192 {c['to']}" for c in r.get("renamed", [])),
                      r["output_dir"])
    out.print(table)


@app.command()
def target(
    config: ConfigArg,
    output: Annotated[Path, typer.Option("--out", help="CSV file to write the list to.")],
    segment: Annotated[list[str] | None, typer.Option("--segment", help="Segment id or name; repeat for several.")] = None,
    where: Annotated[list[str] | None, typer.Option(
        "--where", help="A condition such as 'recency_days between 60 and 180 and monetary > 200'; "
                        "repeat to add more (all must hold).")] = None,
    debug: DebugOpt = False,
) -> None:
    """Write a campaign list: current customers of the chosen segments that meet every condition."""
    from segml.config import publish_url
    from segml.contract import CRM_COLUMNS
    from segml.outputs import write_csv
    from segml.publish import create_engine, missing_sqlite
    from segml.targeting import parse_condition, select_customers

    try:
        cfg = load_config(config)
        for condition in where or []:
            parse_condition(condition)  # every condition is checked before the database is touched
        url = publish_url(cfg, dict(os.environ))
        if missing_sqlite(url):
            raise SegmlError(f"nothing is published for {cfg.name!r} yet (no database at "
                             f"{url.removeprefix('sqlite:///')}): run `segml run {config}` first")
        engine = create_engine(url)
        try:
            selected = select_customers(engine, cfg.name, list(segment or []), list(where or []))
        finally:
            engine.dispose()
        if selected.empty and not segment and not where:
            raise SegmlError(f"nothing is published for {cfg.name!r} yet: run `segml run {config}` first")
        # The columns of assignments.csv, in its order, then where each row came from.
        columns = [c for c in [*CRM_COLUMNS, "source"] if c in selected.columns]
        write_csv(selected[columns].rename(columns=cfg.publish.column_map), output)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    if selected.empty:
        console.print(f"[bold yellow]warning:[/] no current customer matches the selection "
                      f"({'; '.join([*(f'segment {s}' for s in segment or []), *(where or [])])}); "
                      f"{output} holds only the header", highlight=False)
    out.print(f"{len(selected):,} customers written to {output}")


@app.command()
def promote(
    config: ConfigArg,
    run_id: Annotated[str, typer.Argument(help="The MLflow run id of a recorded run held back by its gates.")],
    reason: Annotated[str, typer.Option("--reason", help="Why the run is published despite its gates.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Promote even if the champion changed since the run, or the CRM reads a later date.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Publish a recorded run after review (database, files, champion alias), recording who and why."""
    from pipelines.publication import promote as promote_run

    try:
        cfg = load_config(config)
        done = promote_run(cfg, run_id, reason, force)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    out.print(f"Run {done['run_id']} (model version {done['model_version']}, as of {done['as_of']}) published: "
              f"{done['rows']:,} assignments; files in {done['output_dir']}.")


@app.command()
def repair(
    config: ConfigArg,
    all_machines: Annotated[bool, typer.Option(
        "--all-machines", help="Also settle runs recorded on other machines (when no segml run is going on).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Finish or mark what an interrupted run left half done, so the database, files and alias agree."""
    from pipelines.publication import settle

    try:
        done = settle(load_config(config), everywhere=all_machines)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    for line in done:
        out.print(f"  {line}", highlight=False)
    out.print("Nothing to repair: the database, the files and the alias agree." if not done else
              f"{len(done)} repair{'s' if len(done) > 1 else ''} made.")


@app.command()
def validate(config: ConfigArg, as_of: AsOfOpt = None, debug: DebugOpt = False) -> None:
    """Check CONFIG and its source (columns, data contract, features) without fitting."""
    from segml.segmentation import prepare_purchases

    import tempfile

    try:
        cfg = load_config(config)
        with tempfile.TemporaryDirectory(prefix="segml-validate-") as tmp:
            # Only the counts are shown: the rejected lines go to a file, never into memory.
            purchases = prepare_purchases(cfg, as_of=as_of.date() if as_of else None, config_name=str(config),
                                          rejected_file=Path(tmp) / "rejected_lines.csv")
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    report = purchases.report
    table = Table(title=f"Data contract as of {report.as_of}")
    for column in ("status", "reason", "lines"):
        table.add_column(column)
    for row in report.as_frame().itertuples():
        table.add_row(row.status, row.reason, f"{row.lines:,}")
    out.print(table)
    out.print(f"{report.rows_read:,} lines read; {len(purchases.features):,} customers to segment, "
              f"{len(purchases.excluded):,} left out. The configuration is valid.")
    for line in report.warnings:
        console.print(f"[bold yellow]warning:[/] {line}", highlight=False)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Folder for the sample data and results.")] = Path("segml-demo"),
    customers: Annotated[int, typer.Option(help="Number of sample customers.", min=50)] = 3000,
    debug: DebugOpt = False,
) -> None:
    """Generate sample purchases and run the segmentation flow on them with the built-in defaults."""
    from segml.sample import write_sample

    try:
        config_path = write_sample(folder, n_customers=customers)
        out.print(f"Sample purchases and configuration written to {config_path.parent}")
        summary = run_flow(config_path, None, debug)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    _print_summary(summary)
    db = Path(summary["tracking_uri"].removeprefix("sqlite:///"))
    if summary["tracking_uri"].startswith("sqlite:///"):
        out.print(f"Review the run in the MLflow UI: mlflow ui --backend-store-uri sqlite:///{db}")


def main() -> None:
    import sys

    # The working directory is not a place to import code from: joblib's worker processes inherit
    # this path, and a stray concurrent.py or pandas.py there would run inside them.
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
    app()


if __name__ == "__main__":
    main()
