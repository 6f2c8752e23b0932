"""The ``segml`` command."""

from __future__ import annotations

import datetime as dt
import logging
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from segml.config import SegmlConfig, load_config
from segml.errors import SegmlError

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
    if debug or not isinstance(exc, SegmlError):
        console.print(traceback.format_exc(), markup=False, highlight=False)
    if isinstance(exc, SegmlError):
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _summary_table(segments, metrics) -> Table:
    table = Table(title=f"{int(metrics['n_segments'])} segments, homogeneity {metrics['homogeneity']:.2f}")
    for column in ("id", "name", "customers", "share", "revenue", "homogeneity"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for row in segments.itertuples():
        table.add_row(str(row.segment_id), row.segment_name, f"{row.size:,}", f"{row.share:.0%}",
                      f"{row.revenue_share:.0%}", f"{row.homogeneity:.2f}")
    return table


def run_config(config: SegmlConfig, config_name: str, as_of: dt.date | None) -> Path:
    """Segment the configured purchases and write every table; returns the output folder."""
    from segml.outputs import write_results
    from segml.segmentation import prepare_purchases, segment_customers

    with console.status("Reading and checking purchases..."):
        purchases = prepare_purchases(config, as_of=as_of, config_name=config_name)
    report = purchases.report
    console.print(f"Read {report.rows_read:,} lines: {report.rows_used:,} used, {report.rows_rejected:,} rejected, "
                  f"{report.rows_outside_window:,} outside the window; {len(purchases.features):,} customers "
                  f"as of {report.as_of}.")
    with console.status(f"Fitting {config.model.algorithm} for k in {config.model.candidate_ks}..."):
        result = segment_customers(purchases.features, config, report.as_of)
    folder = Path(config.output.dir) / config.name / report.as_of.isoformat()
    with console.status(f"Writing results to {folder}..."):
        write_results(folder, result.assignments, {
            "segments": result.segments,
            "candidates": result.candidates,
            "homogeneity": result.homogeneity,
            "contract": report.as_frame(),
            "rejected_lines": purchases.rejected,
            "excluded_customers": purchases.excluded,
        })
    out.print(_summary_table(result.segments, result.metrics))
    for row in result.segments.itertuples():
        out.print(f"  {row.segment_id} [bold]{row.segment_name}[/]: {row.description}", highlight=False)
    return folder


@app.command()
def run(config: ConfigArg, as_of: AsOfOpt = None, debug: DebugOpt = False) -> None:
    """Segment the customers of CONFIG's purchases and write the results."""
    try:
        cfg = load_config(config)
        folder = run_config(cfg, str(config), as_of.date() if as_of else None)
    except Exception as exc:  # noqa: BLE001 - every error ends the command with one message
        _fail(exc, debug)
    out.print(f"Results are in {folder}")


@app.command()
def validate(config: ConfigArg, as_of: AsOfOpt = None, debug: DebugOpt = False) -> None:
    """Check CONFIG and its source (columns, data contract, features) without fitting."""
    from segml.segmentation import prepare_purchases

    try:
        cfg = load_config(config)
        purchases = prepare_purchases(cfg, as_of=as_of.date() if as_of else None, config_name=str(config))
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


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Folder for the sample data and results.")] = Path("segml-demo"),
    customers: Annotated[int, typer.Option(help="Number of sample customers.", min=50)] = 3000,
    debug: DebugOpt = False,
) -> None:
    """Generate sample purchases and segment them with the built-in defaults."""
    from segml.sample import write_sample

    try:
        config_path = write_sample(folder, n_customers=customers)
        out.print(f"Sample purchases and configuration written to {config_path.parent}")
        result_folder = run_config(load_config(config_path), str(config_path), None)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    out.print(f"Results are in {result_folder}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()
