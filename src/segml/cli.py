"""The ``segml`` command."""

from __future__ import annotations

import datetime as dt
import logging
import os
import traceback
from contextlib import contextmanager
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
    # Prefect's own client telemetry, and its first-run notice on a terminal (three lines, printed
    # between the spinner's, whenever PREFECT_HOME is new).
    os.environ.setdefault("DO_NOT_TRACK", "1")


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
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Show every log line of Prefect and MLflow (quiet by default: progress and results).")]


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


def _segment_table(summary: dict, title: str) -> Table:
    from segml.report import change_text

    rerun = bool(summary.get("migration", {}).get("customers_in_both") is not None
                 and "changed_share" in summary.get("migration", {}))
    table = Table(title=title)
    columns = ["id", "name", "customers", "share"] + (["change"] if rerun else []) + ["revenue", "homogeneity"]
    for column in columns:
        table.add_column(column, justify="left" if column == "name" else "right")
    for row in summary["segments"]:
        cells = [str(row["segment_id"]), row["segment_name"], f"{row['size']:,}", f"{row['share']:.0%}"]
        if rerun:
            cells.append(change_text(row.get("share_change")))
        cells += [f"{row['revenue_share']:.0%}", f"{row['homogeneity']:.2f}"]
        table.add_row(*cells)
    return table


def _print_summary(summary: dict, held_back: str | None = None, ui: bool = True) -> None:
    """The run on stdout: the segments, what changed since the last published run, gates, where things are."""
    state = "NOT PUBLISHED" if held_back else "published"
    out.print(_segment_table(summary, f"{summary['n_segments']} segments as of {summary['as_of']}, homogeneity "
                                      f"{summary['homogeneity']:.2f} ({state})"))
    for row in summary["segments"]:
        out.print(f"  {row['segment_id']} [bold]{row['segment_name']}[/]: {row['description']}", highlight=False)
    moved = summary.get("migration", {})
    if "changed_share" in moved:
        out.print(f"Since the published run: {moved['customers_in_both']:,.0f} customers in both, "
                  f"{moved['customers_changed']:,.0f} changed segment ({moved['changed_share']:.1%}), "
                  f"{moved.get('customers_new', 0):,.0f} new, {moved.get('customers_lapsed', 0):,.0f} lapsed.",
                  highlight=False)
    for change in summary.get("renamed", []):
        out.print(f"  {change['segment_id']} renamed from {change['from']!r} to {change['to']!r}: {change['why']}",
                  highlight=False)
    for gone in summary.get("retired", []):
        out.print(f"  {gone['segment_id']} ({gone['previous_segment_name']!r}) retired: no segment matches it now",
                  highlight=False)
    if summary.get("psi"):
        out.print("Drift of the model's features (PSI; above 0.25 is a shift): " + ", ".join(
            f"{f} {v:.2f}" for f, v in summary["psi"].items()), highlight=False)
    if summary.get("forward"):
        f = summary["forward"]
        out.print(f"What customers did in the {f['days']} days after the as-of date: "
                  f"{f['forward.repurchase_rate']:.0%} bought again; ranking them by their segment's repurchase "
                  f"rate separates who did (AUC {f['forward.auc_repurchase']:.2f}; 0.5 is chance), and the "
                  f"segments explain {f['forward.r2_spend']:.0%} of the variance of their spend.", highlight=False)
    if summary.get("gate_results"):
        out.print("Quality gates: " + "; ".join(summary["gate_results"]), highlight=False)
    out.print(f"Lines: {summary['rows_read']:,} read, {summary['rows_used']:,} used, "
              f"{summary['rows_rejected']:,} rejected, {summary['rows_outside_window']:,} outside the window; "
              f"{summary['customers']:,} customers segmented.")
    out.print(f"MLflow: run {summary['run_id']} in experiment {summary['experiment']!r} at "
              f"{summary['tracking_uri']}; model {summary['model_name']!r} version {summary['model_version']}.",
              highlight=False)
    if ui and summary.get("open_mlflow"):
        out.print(f"Review it in the MLflow UI: {summary['open_mlflow']}", highlight=False, soft_wrap=True)
    if held_back:
        out.print(f"[bold red]Not published:[/] {held_back}", highlight=False)
    else:
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


class _OnlyOurs(logging.Filter):
    """Quiet mode: Prefect's own lines (task states, server start, a failure the command reports itself)
    stay in the Prefect UI; warnings of segml's modules still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Prefect's background services log under their class names (EventsWorker...): known by their file.
        return not (record.name.startswith("prefect") or f"{os.sep}prefect{os.sep}" in record.pathname)


class _Plain(logging.Formatter):
    """Quiet mode: a warning reads ``warning: ...``, as the command's own warnings do, without a time
    stamp or a logger name."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


class _Progress(logging.Handler):
    """Shows the step a flow announced (``segml.progress``) beside a spinner on the terminal."""

    def __init__(self, status) -> None:
        super().__init__(logging.INFO)
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        self.status.update(f"{record.getMessage()}...")


def _prepare(config: Path, debug: bool, verbose: bool = False, draws: bool = True) -> None:
    """Check the configuration, start what the command will wait for (Prefect's temporary server;
    the drawing worker for a command that ``draws``), then set up logging for the command line: quiet
    unless ``verbose`` (or ``debug``), when every line of Prefect and MLflow shows."""
    from segml import drawing, prefect_server

    _quiet_defaults()
    load_config(config)  # fail fast, before starting Prefect, on a bad configuration
    # Started first, so both start up on the other core while this process imports Prefect, MLflow
    # and scikit-learn: Prefect's temporary server (when none is configured) and the drawing worker.
    prefect_server.start()
    if draws:
        drawing.start()
    from prefect.logging.configuration import setup_logging

    if not debug:
        setup_logging()
        for handler in logging.getLogger().handlers:  # Prefect's console handler sits on the root logger
            handler.addFilter(_NoTracebackForKnownErrors())
            if not verbose:
                handler.addFilter(_OnlyOurs())
                handler.setFormatter(_Plain())
    if not (verbose or debug):
        # MLflow's store and model progress lines; MLflow sets its level from this when it is imported.
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    prefect_server.adopt()


def _server_ready(config: Path | None = None) -> None:
    """Wait for the temporary Prefect server :func:`_prepare` started, if any; while it is not up yet,
    open the MLflow store of ``config`` (the time is spent either way; waiting, it costs nothing)."""
    from segml import prefect_server

    def meanwhile() -> None:
        from segml import tracking

        tracking.preload(load_config(config))

    prefect_server.ready(meanwhile if config is not None else None)


@contextmanager
def _working(verbose: bool):
    """A spinner with the current step on a terminal (nothing when output is captured or ``verbose``)."""
    if verbose or not console.is_terminal:
        yield
        return
    progress = logging.getLogger("segml.progress")
    with console.status("starting (the Prefect server, on a first run, takes a few seconds)...") as status:
        handler = _Progress(status)
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        # The steps belong beside the spinner only: passed on to the console handler too, some stayed on
        # the terminal as 'info: reading and checking the purchases' lines between the spinner's.
        progress.propagate = False
        try:
            yield
        finally:
            progress.removeHandler(handler)
            progress.propagate = True


ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Publish even when the CRM reads a publication of a later as-of date.")]


def _run_pipeline(module: str, name: str, config: Path, as_of: dt.date | None, debug: bool,
                  force: bool = False, verbose: bool = False, draws: bool = True) -> dict:
    import importlib

    _prepare(config, debug, verbose, draws)
    with _working(verbose or debug):
        pipeline = getattr(importlib.import_module(module), name)  # while the Prefect server starts
        _server_ready(config)
        return pipeline(str(config), as_of, force)


def run_flow(config: Path, as_of: dt.date | None, debug: bool = False, force: bool = False,
             verbose: bool = False) -> dict:
    """Run the segmentation flow on CONFIG; returns its summary."""
    return _run_pipeline("pipelines.segment", "segment_customers", config, as_of, debug, force, verbose)


def _held_back(exc: BaseException, debug: bool) -> None:
    """A run held back by its quality gates: its segment table and why, once, on stdout; exit 1."""
    from segml.errors import QualityGateError

    if isinstance(exc, QualityGateError) and getattr(exc, "summary", None):
        _print_summary(exc.summary, held_back=str(exc))
        console.print("[bold red]error:[/] not published: quality gates failed (see above)", highlight=False)
        raise typer.Exit(code=1)
    _fail(exc, debug)


@app.command()
def run(config: ConfigArg, as_of: AsOfOpt = None, force: ForceOpt = False, verbose: VerboseOpt = False,
        debug: DebugOpt = False) -> None:
    """Segment the customers of CONFIG's purchases, record the run in MLflow and publish the results."""
    try:
        summary = run_flow(config, as_of.date() if as_of else None, debug, force, verbose)
    except Exception as exc:  # noqa: BLE001 - every error ends the command with one message
        _held_back(exc, debug)
    _print_summary(summary)


_SCORE_LABELS = {"homogeneity_common": "homog", "explained_variance_common": "expl var",
                 "silhouette_common": "silh", "homogeneity_original": "homog units", "stability_ari": "stab",
                 "segment_share_min": "min share", "forward.r2_spend": "fwd R²", "forward.auc_repurchase": "fwd AUC",
                 "homogeneity": "own: homog", "explained_variance": "own: expl var", "silhouette": "own: silh"}


def comparison_table(summary: dict) -> Table:
    """The scores of every scheme, one row each. Score columns never shrink below their numbers
    (``0.62*``): on a narrow terminal or in a file (80 columns) the table runs wider instead of
    cutting every score to ``0.…``."""
    from segml.schemes import SCORES

    rows = summary["table"]
    columns = [c for c in SCORES if any(c in r and r[c] == r[c] for r in rows)]
    table = Table(title=f"{len(rows)} schemes compared on {summary['customers']:,} customers as of "
                        f"{summary['as_of']} (* best of the column)")
    table.add_column("scheme", no_wrap=True)
    table.add_column("k", justify="right", min_width=2)
    for column in columns:
        table.add_column(_SCORE_LABELS.get(column, column), justify="right", min_width=6)
    for r in rows:
        table.add_row(r["scheme"], f"{int(r['k'])}",
                      *["" if r.get(c) != r.get(c) else f"{r[c]:.2f}" + ("*" if r.get(f"best_{c}") else "")
                        for c in columns])
    return table


@app.command()
def compare(
    config: ConfigArg,
    schemes: Annotated[Path, typer.Option("--schemes", help="YAML file of schemes: name -> overrides of "
                                                            "features, transform, model, naming, quality.")],
    as_of: AsOfOpt = None,
    write_config: Annotated[str | None, typer.Option(
        "--write-config", help="Write this scheme as a configuration of its own (CONFIG's folder, "
                               "<stem>.<scheme>.yaml) for segml run, and stop.")] = None,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fit every scheme on the same customers and compare them with rule-based RFM baselines."""
    try:
        if write_config:
            from pipelines.compare import write_scheme_config

            written = write_scheme_config(config, schemes, write_config)
            out.print(f"Scheme {write_config!r} written to {written}; run it with: segml run {written}")
            return
        from pipelines.compare import read_schemes

        read_schemes(schemes)  # a bad schemes file fails before any flow starts
        _prepare(config, debug, verbose, draws=False)
        from pipelines.compare import compare_schemes

        _server_ready(config)
        with _working(verbose or debug):
            summary = compare_schemes(str(config), str(schemes), as_of.date() if as_of else None)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    out.print(comparison_table(summary))
    out.print("homog, expl var, silh: in one common space for every scheme (log of recency, frequency and "
              "spend, standardised), so the * ranks them; homog units: in original units; own: in each "
              "scheme's own space, describing it without ranking. RFM rows are the rule-based baselines.",
              highlight=False)
    if summary["forward_days"]:
        out.print(f"fwd: what customers did in the {summary['forward_days']} days after the as-of date.")
    else:
        out.print("No forward validity: the data do not reach quality.forward_horizon_days past the as-of date "
                  "(compare an earlier --as-of to measure it).")
    out.print(f"MLflow: run {summary['run_id']} in experiment {summary['experiment']!r}; table and plot in "
              f"{summary['output_dir']}", highlight=False)
    out.print(f"Run a scheme for real: segml compare {config} --schemes {schemes} --write-config NAME",
              highlight=False)


@app.command()
def score(config: ConfigArg, as_of: AsOfOpt = None, force: ForceOpt = False, verbose: VerboseOpt = False,
          debug: DebugOpt = False) -> None:
    """Assign every current customer to the champion's segments, without refitting, and publish them."""
    try:
        summary = _run_pipeline("pipelines.score", "score_customers", config, as_of.date() if as_of else None,
                                debug, force, verbose, draws=False)
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
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the segmentation for every as-of date from --from to --to, in order, building the id history."""
    try:
        from pipelines.backfill import as_of_dates

        as_of_dates(start.date(), end.date(), every)  # a bad period fails before any flow starts
        _prepare(config, debug, verbose)
        from pipelines.backfill import backfill as backfill_flow

        _server_ready(config)
        with _working(verbose or debug):
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
        "--where", help="A condition such as 'recency_days between 60 and 180 and monetary > 200' or "
                        "\"country in ('France', 'Belgium')\"; repeat to add more (all must hold).")] = None,
    campaign: Annotated[str | None, typer.Option(
        "--campaign", help="Record the list as this campaign, with a control group held out of it.")] = None,
    control: Annotated[str, typer.Option(
        "--control", help="Share of every segment held out as the control group, e.g. 10%.")] = "10%",
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed of the control draw (default: from the campaign's name).")] = None,
    sent: Annotated[dt.datetime | None, typer.Option(
        "--sent", formats=["%Y-%m-%d"], help="The day the campaign is sent (default: today).")] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Days after sending that its report measures.")] = 30,
    replace: Annotated[bool, typer.Option("--replace", help="Record again a campaign name used before.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Write a campaign list: current customers of the chosen segments that meet every condition.

    With --campaign the list is recorded in the CRM database as a campaign, and a random control
    group (--control of every segment) is held out of the file written.
    """
    from segml.config import publish_url
    from segml.contract import CRM_COLUMNS
    from segml.outputs import write_csv
    from segml.publish import create_engine, missing_sqlite
    from segml.targeting import parse_condition, select_customers, target_columns

    held_out = 0
    try:
        cfg = load_config(config)
        attributes = {name: spec.type for name, spec in cfg.attributes.items()}
        for condition in where or []:
            # every condition is checked before the database is touched
            parse_condition(condition, target_columns(attributes))
        control_share = _control_share(control) if campaign else 0.0
        url = publish_url(cfg, dict(os.environ))
        if missing_sqlite(url):
            raise SegmlError(f"nothing is published for {cfg.name!r} yet (no database at "
                             f"{url.removeprefix('sqlite:///')}): run `segml run {config}` first")
        engine = create_engine(url)
        try:
            selected = select_customers(engine, cfg.name, list(segment or []), list(where or []), attributes)
            if selected.empty and not segment and not where:
                raise SegmlError(f"nothing is published for {cfg.name!r} yet: run `segml run {config}` first")
            if campaign:
                selected = _record_campaign(engine, cfg.name, campaign, selected, control_share, seed,
                                            sent.date() if sent else dt.date.today(), days, replace,
                                            list(segment or []), list(where or []))
                held_out = int((selected["campaign_group"] == "control").sum())
                selected = selected[selected["campaign_group"] == "target"]
        finally:
            engine.dispose()
        # The columns of assignments.csv, in its order, then the attributes and where each row came from.
        columns = [c for c in [*CRM_COLUMNS, *attributes, "source"] if c in selected.columns]
        write_csv(selected[columns].rename(columns=cfg.publish.column_map), output)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    if selected.empty:
        console.print(f"[bold yellow]warning:[/] no current customer matches the selection "
                      f"({'; '.join([*(f'segment {s}' for s in segment or []), *(where or [])])}); "
                      f"{output} holds only the header", highlight=False)
    out.print(f"{len(selected):,} customers written to {output}")
    if campaign:
        out.print(f"Campaign {campaign!r} recorded: {len(selected):,} target and {held_out:,} control customers "
                  f"(held out of the list); measure it with `segml campaign report {config} {campaign}`")


def _control_share(text: str) -> float:
    """``10%`` or ``0.1`` as a share; an error naming the value otherwise."""
    try:
        share = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        raise SegmlError(f"--control takes a share such as 10% or 0.1, got {text!r}") from None
    if not 0 < share < 1:
        raise SegmlError(f"--control must be above 0% and below 100%, got {text!r}")
    return share


def _record_campaign(engine, segmentation: str, name: str, selected, control_share: float, seed: int | None,
                     sent: dt.date, days: int, replace: bool, segments: list[str], conditions: list[str]):
    """Draw the control group of the selected customers and record the campaign; returns the
    selection with each customer's ``campaign_group``."""
    import zlib

    from segml.campaigns import draw_control, record_campaign

    if not selected["as_of"].nunique() <= 1:
        raise SegmlError("the selected customers come from several publications; publish again and retry")
    seed = zlib.crc32(name.encode()) % 2**31 if seed is None else seed
    selected = selected.assign(campaign_group=draw_control(selected, control_share, seed))
    selection = "; ".join([*(f"segment {s}" for s in segments), *conditions]) or "all current customers"
    record_campaign(engine, segmentation, name, selected, as_of=selected["as_of"].iloc[0] if len(selected) else sent,
                    run_id=str(selected["run_id"].iloc[0]) if len(selected) else "", sent_date=sent,
                    selection=selection, control_share=control_share, seed=seed, report_days=days, replace=replace)
    return selected


campaign_app = typer.Typer(help="Campaigns recorded with `segml target --campaign`: their reports.",
                           no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


@campaign_app.command("report")
def campaign_report(
    config: ConfigArg,
    name: Annotated[str, typer.Argument(help="The campaign's name, as given to `segml target --campaign`.")],
    days: Annotated[int | None, typer.Option("--days", min=1, help="Days after sending to measure "
                                                                   "(default: as recorded, 30).")] = None,
    as_of: Annotated[dt.datetime | None, typer.Option(
        "--as-of", formats=["%Y-%m-%d"], help="Measure purchases before this date (default: today).")] = None,
    debug: DebugOpt = False,
) -> None:
    """Measure a campaign: per segment and overall, who bought and spent in the target and control
    groups, the uplift with 95% intervals and the incremental revenue."""
    _quiet_defaults()
    try:
        from pipelines.campaigns import report_campaign

        summary = report_campaign(config, name, days, as_of.date() if as_of else None)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    table = Table(title=f"Campaign {name}: {summary['measured_days']} of {summary['days']} days after "
                        f"{summary['sent_date']}")
    for column in ("segment", "target", "control", "bought (t / c)", "uplift [95%]", "spend/customer (t / c)",
                   "incremental revenue [95%]"):
        table.add_column(column, justify="left" if column == "segment" else "right")
    for r in summary["table"].itertuples():
        uplift = (f"{100 * r.uplift:+.1f} pts [{100 * r.uplift_low:+.1f}, {100 * r.uplift_high:+.1f}]"
                  if r.uplift == r.uplift else "no control")
        revenue = (f"{r.incremental_revenue:,.0f} [{r.incremental_revenue_low:,.0f}, {r.incremental_revenue_high:,.0f}]"
                   if r.incremental_revenue == r.incremental_revenue else "")
        segment = f"{r.segment_id} {r.segment_name}" if isinstance(r.segment_name, str) else str(r.segment_id)
        table.add_row(segment, f"{r.target_customers:,}", f"{r.control_customers:,}",
                      f"{r.target_bought_share:.1%} / {r.control_bought_share:.1%}", uplift,
                      f"{r.target_spend_per_customer:,.2f} / {r.control_spend_per_customer:,.2f}", revenue)
    out.print(table)
    if summary["missing_days"]:
        console.print(f"[bold yellow]warning:[/] the {summary['days']}-day window is not over: "
                      f"{summary['missing_days']} days are missing; report again as of "
                      f"{dt.date.fromisoformat(summary['sent_date']) + dt.timedelta(days=summary['days'])} or later",
                      highlight=False)
    out.print(f"MLflow: run {summary['run_id']} in experiment {summary['experiment']!r}. "
              f"Results are in {summary['output_dir']}")


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
    if purchases.attributes is not None:
        attributes = Table(title="Customer attributes", caption="attribute *: whole rows of the customers source")
        for column in ("source", "attribute", "reason", "customers"):
            attributes.add_column(column)
        for row in purchases.attributes.counts.itertuples():
            attributes.add_row(row.source, row.attribute, row.reason, f"{row.customers:,}")
        out.print(attributes)
    out.print(f"{report.rows_read:,} lines read; {len(purchases.features):,} customers to segment, "
              f"{len(purchases.excluded):,} left out. The configuration is valid.")
    for line in report.warnings:
        console.print(f"[bold yellow]warning:[/] {line}", highlight=False)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Folder for the sample data and results.")] = Path("segml-demo"),
    customers: Annotated[int, typer.Option(help="Number of sample customers.", min=50)] = 3000,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate sample purchases and run the segmentation flow on them with the built-in defaults."""
    from segml.sample import write_sample

    try:
        config_path = write_sample(folder, n_customers=customers)
        out.print(f"Sample purchases and configuration written to {config_path.parent}")
        summary = run_flow(config_path, None, debug, verbose=verbose)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    _print_summary(summary, ui=False)  # said last, after the campaign
    _print_attribute_profiles(Path(summary["output_dir"]) / "segment_attributes.csv")
    try:
        _demo_campaign(config_path, summary)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    out.print(f"Review the run in the MLflow UI: {summary['open_mlflow']}", highlight=False)


def _print_attribute_profiles(path: Path) -> None:
    """Each segment's top countries and its age band (the middle half of its ages), from the run's
    ``segment_attributes.csv``."""
    import pandas as pd

    if not path.exists():
        return
    profiles = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for (sid, name), rows in profiles.groupby(["segment_id", "segment_name"], sort=False):
        parts = []
        for attribute, kind_rows in rows.groupby("attribute", sort=False):
            if kind_rows["type"].iloc[0] == "category":
                top = kind_rows[~kind_rows["category"].isin(["(other)", "(missing)"])].head(2)
                parts.append(f"{attribute} " + ", ".join(f"{r.category} {r.share:.0%} (index {r.index:.0f})"
                                                        for r in top.itertuples()))
            else:
                r = kind_rows.iloc[0]
                parts.append(f"{attribute} {r['q1']:.0f}\u2013{r['q3']:.0f} (median {r['median']:.0f}, all "
                             f"customers {r['base_median']:.0f})")
        out.print(f"  {sid} {name}: {'; '.join(parts)}", highlight=False)


def _demo_campaign(config_path: Path, summary: dict) -> None:
    """Record a campaign on the demo's segments, add purchases with a planted effect (+10 points in
    the largest segment, none elsewhere) and report it."""
    import pandas as pd

    from pipelines.campaigns import report_campaign
    from segml.config import publish_url
    from segml.outputs import write_csv
    from segml.publish import create_engine
    from segml.sample import SAMPLE_AS_OF, generate_campaign_purchases
    from segml.targeting import select_customers

    cfg = load_config(config_path)
    largest = max(summary["segments"], key=lambda r: r["size"])["segment_id"]
    engine = create_engine(publish_url(cfg, dict(os.environ)))
    try:
        selected = select_customers(engine, cfg.name, [], [])
        members = _record_campaign(engine, cfg.name, "demo", selected, 0.3, 7, SAMPLE_AS_OF, 30, True, [], [])
    finally:
        engine.dispose()
    planted = generate_campaign_purchases(members, SAMPLE_AS_OF, 30, seed=7, base_rate=0.2, uplift={largest: 0.10})
    purchases = Path(cfg.data.path or "")
    write_csv(pd.concat([pd.read_csv(purchases, dtype=str), planted.astype(str)], ignore_index=True), purchases)
    out.print(f"Campaign 'demo' sent {SAMPLE_AS_OF} to every customer, 30% of each segment held out as control; "
              f"purchases in the 30 days after carry a planted +10 points in {largest} and nothing elsewhere.")
    report = report_campaign(config_path, "demo", as_of=SAMPLE_AS_OF + dt.timedelta(days=30))
    for r in report["table"].itertuples():
        name = f" {r.segment_name}" if isinstance(r.segment_name, str) else ""
        out.print(f"  {r.segment_id}{name}: uplift {100 * r.uplift:+.1f} points (95% interval {100 * r.uplift_low:+.1f} "
                  f"to {100 * r.uplift_high:+.1f}), incremental revenue {cfg.naming.currency}"
                  f"{r.incremental_revenue:,.0f}", highlight=False)
    out.print(f"Campaign report in {report['output_dir']} (MLflow experiment {report['experiment']!r})")


def main() -> None:
    import sys

    # The working directory is not a place to import code from: joblib's worker processes inherit
    # this path, and a stray concurrent.py or pandas.py there would run inside them.
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
    try:
        app()
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: int | str | None) -> None:
    """End the command as Python would (its threads joined, its exit handlers run: Prefect's last
    logs and events sent, the temporary server and the drawing worker stopped, the streams flushed)
    but without tearing down every module it imported one by one, which takes about a second after
    a flow run and does nothing a finished command needs."""
    import atexit
    import sys
    import threading

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter runs first at exit
    if shutdown is None:
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
