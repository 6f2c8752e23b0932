"""The PDF segment report and the run's summary in words.

The report has two parts, every page A4 landscape with a footer (the
segmentation, the as-of date, the run, the page number):

- for marketing: an overview of the segments (size, revenue, change since
  the last published run, what each is and what to do with it), the sizes
  chart, a page per segment (its customers against the whole base in plain
  units, how alike they are, in words) and what changed since the last
  published run;
- an appendix for analysts: how k was chosen, separation and stability, the
  segments in the model's space, the feature distributions, the customers
  in two dimensions, the data contract and a glossary.

Pages are built from a :class:`ReportData`, computed before anything is
drawn; :func:`markdown_summary` says the same in a few lines of markdown (the
MLflow run's description, the Prefect artifact).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from segml.outputs import write_atomic

#: Every page and figure of the report: A4 landscape, in inches.
PAGE = (11.69, 8.27)
#: Below this homogeneity (model space) a segment is flagged as loose: its customers differ from each
#: other more than 70% as much as customers overall.
LOOSE = 0.3
_INK, _MUTED, _RULE, _FLAG = "#222222", "#666666", "#cccccc", "#b03a2e"


@dataclass
class ReportData:
    """What the report says about one run."""

    name: str
    as_of: str
    run_id: str
    version: int | None
    currency: str
    #: What ``frequency`` counts: ``order`` or ``purchase day``.
    unit: str
    #: The segments (:func:`segml.segmentation.describe_segments` with their ids).
    segments: pd.DataFrame
    #: The whole base's median of every feature.
    base_medians: dict[str, float]
    #: :func:`share_beaten` of every segment.
    beaten: dict[str, dict[str, float]]
    model_features: list[str]
    #: Facts about the run (lines read, k chosen...), one sentence each.
    facts: list[str] = field(default_factory=list)
    #: Whether the run was published; otherwise why not.
    held_back: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: The last published run's as-of date, or None on a first run.
    previous_as_of: str | None = None
    #: ``share_change.<id>`` and ``psi.<feature>`` against the last published run.
    shifts: dict[str, float] = field(default_factory=dict)
    #: ``customers_in_both``, ``customers_changed``, ``changed_share``, ``customers_new``, ``customers_lapsed``.
    migration: dict[str, float] = field(default_factory=dict)
    #: Segment matching (:attr:`segml.identity.Identity.matching`).
    matching: pd.DataFrame | None = None
    #: Per segment and attribute (:func:`segml.profiles.attribute_profiles`), when there are attributes.
    attributes: pd.DataFrame | None = None
    #: Forward validity (:func:`segml.schemes.forward_validity`) over ``forward_days``, when the data allow.
    forward: pd.DataFrame | None = None
    forward_metrics: dict[str, float] = field(default_factory=dict)
    forward_days: int = 0


# --- words --------------------------------------------------------------------------------------

def change_text(delta: float | None) -> str:
    """A share change in percentage points with an arrow: ``▲ +1.2 pts``, ``▼ -0.8 pts``, ``= 0.0 pts``."""
    if delta is None or not np.isfinite(delta):
        return "new"
    points = 100 * delta
    if abs(points) < 0.05:
        return "= 0.0 pts"
    return f"{'▲' if points > 0 else '▼'} {points:+.1f} pts"


_FRACTIONS = [(0.1, "about a tenth as much as"), (1 / 6, "about a sixth as much as"),
              (0.25, "about a quarter as much as"),
              (1 / 3, "about a third as much as"), (0.5, "about half as much as"),
              (2 / 3, "about two thirds as much as"), (0.75, "about three quarters as much as"),
              (0.9, "almost as much as")]


def alike_text(homogeneity: float) -> str:
    """How alike a segment's customers are, from its homogeneity (1 - the mean ratio of the segment's
    spread to the whole base's over the model's features): the ratio as the nearest plain fraction."""
    ratio = 1.0 - homogeneity
    if ratio < 0.05:
        words = "far less than"
    elif ratio >= 0.97:
        words = "as much as or more than"
    else:
        words = min(_FRACTIONS, key=lambda f: abs(f[0] - ratio))[1]
    return f"customers in this segment differ from each other {words} customers overall"


def drift_text(psi: float) -> str:
    """A population stability index in words (below 0.1 stable, to 0.25 a moderate shift, above a shift)."""
    if psi < 0.1:
        return "stable"
    return "moderate shift" if psi <= 0.25 else "large shift: look into the data"


#: How a segment's typical customer compares with all customers, per feature: the sentence, what it says
#: when no customer is beaten, and whether a lower value is the better one (fewer days since a purchase).
_WHERE = {
    "recency_days": ("bought more recently than {:.0%} of customers", "no customer bought longer ago", True),
    "frequency": ("buys more often than {:.0%} of customers", "no customer buys less often", False),
    "monetary": ("spends more than {:.0%} of customers", "no customer spends less", False),
    "tenure_days": ("has been a customer longer than {:.0%} of customers", "no customer is newer", False),
}


def share_beaten(features: pd.DataFrame, segments: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per segment id and feature of :data:`_WHERE`: the share of all customers whose value the segment's
    median customer strictly beats (ties are not beaten: with most customers at 1 order, a segment
    whose median is 1 order beats nobody)."""
    out: dict[str, dict[str, float]] = {}
    for row in segments.itertuples():
        out[row.segment_id] = {}
        for feature, (_, _, lower_is_better) in _WHERE.items():
            median = getattr(row, f"median_{feature}", None)
            if feature not in features or median is None or not np.isfinite(median):
                continue
            values = features[feature].to_numpy(dtype=float)
            out[row.segment_id][feature] = float((values > median).mean() if lower_is_better
                                                 else (values < median).mean())
    return out


def _money(value: float, currency: str) -> str:
    return f"{currency}{value:,.0f}" if len(currency) <= 1 else f"{value:,.0f} {currency}"


def _measures(unit: str, currency: str) -> list[tuple[str, str, Callable[[float], str]]]:
    """Feature, label and formatter of each line of a segment's profile."""
    return [
        ("recency_days", "days since last purchase", lambda v: f"{v:,.0f} days"),
        ("frequency", f"{unit}s", lambda v: f"{v:,.0f}"),
        ("monetary", "net spend", lambda v: _money(v, currency)),
        ("avg_order_value", f"spend per {unit}", lambda v: _money(v, currency)),
        ("tenure_days", "customer for", lambda v: f"{v:,.0f} days"),
    ]


def markdown_summary(data: ReportData, links: dict[str, str] | None = None, state: str | None = None) -> str:
    """The run in a few lines of markdown: state, the segment table with changes and actions, what
    changed (renames, drift), the run's facts and warnings; ``links`` (label -> URL) close it. ``state``
    replaces "Published." for a run that passed its gates but is not published yet."""
    s = data.segments
    lines = [f"**{data.name}** as of {data.as_of}: {int(s['size'].sum()):,} customers in {len(s)} segments. "
             + ("**Not published**: " + data.held_back + "." if data.held_back else state or "Published."), ""]
    first = data.previous_as_of is None
    head = ["id", "segment", "customers", "share"] + ([] if first else ["change"]) + [
        "revenue", "homogeneity", "what they are", "suggested action"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in s.itertuples():
        cells = [r.segment_id, r.segment_name, f"{int(r.size):,}", f"{r.share:.1%}"]
        if not first:
            cells.append(change_text(_change_of(data, r.segment_id)))
        cells += [f"{r.revenue_share:.1%}", f"{r.homogeneity:.2f}", str(r.description).replace("|", "/"),
                  str(getattr(r, "action", "") or "").replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {line}" for line in changes_in_words(data)]
    lines += [f"- {fact}" for fact in data.facts]
    lines += [f"- Warning: {w}" for w in data.warnings]
    if links:
        lines += ["", " · ".join(f"[{label}]({url})" for label, url in links.items())]
    return "\n".join(lines).strip() + "\n"


def _change_of(data: ReportData, segment_id: str) -> float | None:
    """The segment's share change since the published run; None for a segment new in this run."""
    return None if _is_new(data, segment_id) else data.shifts.get(f"share_change.{segment_id}")


def _is_new(data: ReportData, segment_id: str) -> bool:
    m = data.matching
    if m is None or "outcome" not in m:
        return False
    return bool(((m["segment_id"] == segment_id) & (m["outcome"] == "new")).any())


def segment_changes(data: ReportData) -> list[str]:
    """The segments renamed, retired and new since the last published run, one sentence each."""
    out = []
    if data.previous_as_of is None or data.matching is None or "outcome" not in data.matching:
        return out
    for r in data.matching.itertuples():
        if r.outcome == "renamed":
            out.append(f"{r.segment_id} renamed: was \u201c{r.previous_segment_name}\u201d, now "
                       f"\u201c{r.segment_name}\u201d.")
        elif r.outcome == "retired":
            out.append(f"{r.segment_id} (\u201c{r.previous_segment_name}\u201d) retired: no segment of this "
                       "run matches it.")
        elif r.outcome == "new":
            out.append(f"{r.segment_id} (\u201c{r.segment_name}\u201d) is new.")
    return out


def changes_in_words(data: ReportData) -> list[str]:
    """What changed since the last published run, one sentence each (nothing on a first run)."""
    if data.previous_as_of is None:
        return []
    m = data.migration
    out = [f"Since the published run as of {data.previous_as_of}: {m.get('customers_in_both', 0):,.0f} "
           f"customers in both, {m.get('customers_changed', 0):,.0f} changed segment "
           f"({m.get('changed_share', 0):.1%}), {m.get('customers_new', 0):,.0f} new, "
           f"{m.get('customers_lapsed', 0):,.0f} lapsed (not in this run)."]
    out += segment_changes(data)
    psi = {f: data.shifts[f"psi.{f}"] for f in data.model_features if f"psi.{f}" in data.shifts}
    if psi:
        out.append("Drift of the model's features: " + "; ".join(
            f"{f} {drift_text(v)} (PSI {v:.2f})" for f, v in psi.items()) + ".")
    return out


# --- pages --------------------------------------------------------------------------------------

def new_page(title: str, subtitle: str = "") -> Figure:
    """An empty A4 landscape page with its title."""
    fig = Figure(figsize=PAGE)
    fig.text(0.04, 0.95, title, fontsize=17, weight="bold", va="top", color=_INK)
    if subtitle:
        fig.text(0.04, 0.905, subtitle, fontsize=10, va="top", color=_MUTED)
    return fig


def paragraph(fig: Figure, x: float, y: float, text: str, width: float, size: float = 10, **kw) -> float:
    """Text wrapped to ``width`` (a fraction of the page) from ``y`` down; returns the y below it."""
    chars = max(20, int(width * PAGE[0] * 72 / (size * 0.52)))
    lines = textwrap.wrap(text, chars) or [""]
    step = size * 1.45 / 72 / PAGE[1]
    for line in lines:
        fig.text(x, y, line, fontsize=size, va="top", color=kw.get("color", _INK), weight=kw.get("weight"))
        y -= step
    return y


def draw_table(fig: Figure, x: float, y: float, columns: list[tuple[str, float]], rows: list[list[str]],
               size: float = 9, colours: list[str | None] | None = None) -> float:
    """A table of wrapped text: ``columns`` are (header, width as a fraction of the page); returns the y
    below the last row. Row heights follow their longest cell, so nothing is clipped."""
    step = size * 1.4 / 72 / PAGE[1]
    pad = 0.4 * step

    def row(cells: list[str], top: float, weight: str | None = None, colour: str | None = None) -> float:
        left = x
        height = 1
        for (_, width), cell in zip(columns, cells):
            wrapped = _wrap_cell(cell, width, size)
            height = max(height, len(wrapped))
            for i, line in enumerate(wrapped):
                fig.text(left + 0.004, top - pad - i * step, line, fontsize=size, va="top", weight=weight,
                         color=colour or _INK)
            left += width
        bottom = top - height * step - 2 * pad
        fig.add_artist(_rule(x, left, bottom))
        return bottom

    y = row([h for h, _ in columns], y, weight="bold")
    for i, cells in enumerate(rows):
        y = row(cells, y, colour=colours[i] if colours else None)
    return y


def _wrap_cell(cell: object, width: float, size: float) -> list[str]:
    return textwrap.wrap(str(cell), max(4, int(width * PAGE[0] * 72 / (size * 0.62)))) or [""]


def table_height(columns: list[tuple[str, float]], rows: list[list[str]], size: float = 9) -> float:
    """The height :func:`draw_table` takes for ``rows`` (without the header), as a fraction of the page."""
    step = size * 1.4 / 72 / PAGE[1]
    return sum(max(len(_wrap_cell(c, w, size)) for (_, w), c in zip(columns, cells)) * step + 0.8 * step
               for cells in rows)


def paragraph_height(text: str, width: float, size: float = 10) -> float:
    """The height :func:`paragraph` takes for ``text``."""
    chars = max(20, int(width * PAGE[0] * 72 / (size * 0.52)))
    return len(textwrap.wrap(text, chars) or [""]) * size * 1.45 / 72 / PAGE[1]


def _rule(x0: float, x1: float, y: float):
    """A thin horizontal line in page coordinates (the figure sets its transform when it is added)."""
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], color=_RULE, linewidth=0.6)


def overview_pages(data: ReportData) -> list[Figure]:
    """The segments at a glance: size, revenue, change, what they are and what to do; continued on
    further pages when the segments do not fit on one, the notes after the last row."""
    s = data.segments
    state = f"Not published: {data.held_back}" if data.held_back else "Published to the CRM"
    title = f"Customer segments: {data.name}"
    subtitle = f"As of {data.as_of} · {int(s['size'].sum()):,} customers in {len(s)} segments · {state}"
    first = data.previous_as_of is None
    columns = [("segment", 0.15), ("customers", 0.075), ("share", 0.055)] + (
        [] if first else [("change", 0.075)]) + [("revenue", 0.06), ("what they are", 0.25),
                                                  ("suggested action", 0.255 if not first else 0.33)]
    rows = []
    for r in s.itertuples():
        cells = [f"{r.segment_id} {r.segment_name}", f"{int(r.size):,}", f"{r.share:.0%}"]
        if not first:
            cells.append(change_text(_change_of(data, r.segment_id)))
        cells += [f"{r.revenue_share:.0%}", str(r.description), str(getattr(r, "action", "") or "")]
        rows.append(cells)
    notes = ([f"Change: the segment's share of customers now against the published run as of "
              f"{data.previous_as_of}, in percentage points."] if not first else
             ["This is the first published segmentation: changes show from the next run on."])
    notes += segment_changes(data)  # every rename, retirement and new segment: the CRM's ids change meaning
    notes += [f"Warning: {w}" for w in data.warnings]
    notes += ["", *data.facts[:1], "Each segment has a page of its own; the appendix explains how the segments "
              "were made and how good they are."]
    size, top, bottom = (9 if len(rows) <= 6 else 8), 0.86, 0.07
    pages = [new_page(title, subtitle)]
    y = top
    while rows:
        fits = 0
        while fits < len(rows) and y - table_height(columns, rows[:fits + 1], size) - 0.03 >= bottom:
            fits += 1
        if fits == 0 and y < top:  # not even one more row: the next page
            pages.append(new_page(title + " (continued)", subtitle))
            y = top
            continue
        y = draw_table(pages[-1], 0.04, y, columns, rows[:max(fits, 1)], size=size)
        rows = rows[max(fits, 1):]
        if rows:
            pages.append(new_page(title + " (continued)", subtitle))
            y = top
    if y - sum(paragraph_height(n, 0.92, 8.5) + 0.015 for n in notes) < bottom:
        pages.append(new_page(title + " (notes)", subtitle))
        y = top
    for note in notes:
        y = paragraph(pages[-1], 0.04, y - 0.015, note, 0.92, size=8.5, color=_MUTED)
    return pages


def segment_page(data: ReportData, segment: pd.Series) -> Figure:
    """One segment: who its customers are against the whole base, how alike they are, what to do."""
    sid, name = segment["segment_id"], segment["segment_name"]
    change = "" if data.previous_as_of is None else (
        " · new segment" if _is_new(data, sid) else
        f" · {change_text(data.shifts.get(f'share_change.{sid}'))} since {data.previous_as_of}")
    fig = new_page(f"{sid} · {name}", f"{int(segment['size']):,} customers ({segment['share']:.0%} of customers, "
                                      f"{segment['revenue_share']:.0%} of revenue){change}")
    y = paragraph(fig, 0.04, 0.86, str(segment["description"]) + ".", 0.55, size=11)
    if segment.get("action"):
        y = paragraph(fig, 0.04, y - 0.01, f"Suggested action: {segment['action']}.", 0.55, size=11,
                      weight="bold")
    rows, colours = [], []
    for feature, label, fmt in _measures(data.unit, data.currency):
        if f"median_{feature}" not in segment:
            continue
        beaten = data.beaten.get(segment["segment_id"], {}).get(feature)
        if beaten is not None:
            sentence, nobody, _ = _WHERE[feature]
            words = "the typical customer here " + (sentence.format(beaten) if beaten >= 0.005 else
                                                    f"is at the bottom: {nobody}")
        else:
            base = data.base_medians.get(feature, np.nan)
            words = (f"{segment[f'median_{feature}'] / base:.1f} \u00d7 the median of all customers"
                     if base and np.isfinite(base) else "")
        marker = " \u2022" if feature in data.model_features else ""
        rows.append([label + marker, fmt(segment[f"median_{feature}"]), fmt(data.base_medians.get(feature, np.nan)),
                     words])
        colours.append(None)
    y = draw_table(fig, 0.04, y - 0.03, [("", 0.16), ("this segment", 0.095), ("all customers", 0.095),
                                          ("in words", 0.21)], rows, size=9, colours=colours)
    y = paragraph(fig, 0.04, y - 0.01, "Medians: half the customers are above, half below. \u2022 used by the model "
                  "to form the segments.", 0.55, size=8, color=_MUTED)
    loose = segment["homogeneity"] < LOOSE or segment.get("homogeneity_original", 1.0) < 0
    alike = (f"How alike: {alike_text(segment['homogeneity'])} (homogeneity {segment['homogeneity']:.2f}; "
             f"1 = identical, 0 = as varied as the whole base).")
    y = paragraph(fig, 0.04, y - 0.025, alike, 0.55, size=10)
    if loose:
        y = paragraph(fig, 0.04, y - 0.005, "\u26a0 A loose segment: its customers vary a lot, so the medians above "
                      "describe many of them poorly. Check the distributions in the appendix before targeting it "
                      "as one group.", 0.55, size=10, color=_FLAG, weight="bold")
    stability = segment.get("stability_jaccard", np.nan)
    if stability is not None and np.isfinite(stability):
        y = paragraph(fig, 0.04, y - 0.01, f"How stable: refitted on resampled customers, the segment came back "
                      f"with {stability:.0%} of the same customers on average.", 0.55, size=10)
    if data.attributes is not None and len(data.attributes):
        _attribute_lines(fig, data.attributes[data.attributes["segment_id"] == sid], y - 0.02)
    _position_chart(fig, segment)
    return fig


def _attribute_lines(fig: Figure, profile: pd.DataFrame, y: float) -> float:
    """Who the customers are: the top categories (share and index against the base) and numeric medians."""
    y = paragraph(fig, 0.04, y, "Who they are", 0.55, size=11, weight="bold")
    for attribute, rows in profile.groupby("attribute", sort=False):
        if rows["type"].iloc[0] == "category":
            top = rows[~rows["category"].isin(["(other)", "(missing)"])].head(4)
            text = ", ".join(f"{r.category} {r.share:.0%} (index {r.index:.0f})" for r in top.itertuples())
        else:
            r = rows.iloc[0]
            text = (f"median {r['median']:,.0f} (middle half {r['q1']:,.0f} to {r['q3']:,.0f}); "
                    f"all customers {r['base_median']:,.0f}")
        y = paragraph(fig, 0.04, y - 0.004, f"{attribute}: {text}", 0.55, size=9)
    return paragraph(fig, 0.04, y, "Index: 100 = as common as among all customers, 200 = twice as common.",
                     0.55, size=8, color=_MUTED)


def _position_chart(fig: Figure, segment: pd.Series) -> None:
    """Where the segment's typical customer stands among all customers, 0-100 on each score."""
    ax = fig.add_axes((0.75, 0.3, 0.21, 0.45))
    labels = ["bought recently", "buys often", "spends", "customer for long"]
    values = [100 * float(segment.get(s, np.nan)) for s in ("recency", "frequency", "monetary", "tenure")]
    y = np.arange(len(labels))
    ax.barh(y, values, color="#4c72b0", height=0.55)
    ax.axvline(50, color=_MUTED, linestyle="--", linewidth=0.8)
    for yi, v in zip(y, values):
        if np.isfinite(v):  # beside the bar, or inside its end when it reaches the edge
            inside = v > 85
            ax.text(v - 2 if inside else v + 2, yi, f"{v:.0f}", va="center", fontsize=9,
                    ha="right" if inside else "left", color="white" if inside else _INK)
    ax.set_yticks(y, labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("position among all customers\n(0 = lowest, 100 = highest, 50 = typical)", fontsize=8)
    ax.set_title("Where the typical customer stands", fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def changes_page(data: ReportData) -> Figure:
    """What changed since the last published run: customers, segments, drift."""
    if data.previous_as_of is None:
        fig = new_page("What changed", "First published segmentation")
        paragraph(fig, 0.04, 0.86, "There is no earlier published segmentation to compare with. From the next "
                  "run on, this page shows how many customers moved between segments, new and lapsed customers, "
                  "renamed or retired segments, and whether the customers' behaviour drifted.", 0.9, size=11)
        return fig
    fig = new_page("What changed", f"Against the published run as of {data.previous_as_of}")
    sentences = changes_in_words(data)
    y = paragraph(fig, 0.04, 0.86, sentences[0], 0.92, size=11)
    rows = []
    matching = data.matching if data.matching is not None else pd.DataFrame()
    for r in data.segments.itertuples():
        delta = _change_of(data, r.segment_id)
        before = "" if delta is None else f"{r.share - delta:.1%}"
        found = matching[matching["segment_id"] == r.segment_id] if len(matching) else matching
        status = found["outcome"].iloc[0] if len(found) else ""
        if status == "renamed":
            status = f"renamed, was \u201c{found['previous_segment_name'].iloc[0]}\u201d"
        rows.append([f"{r.segment_id} {r.segment_name}", before, f"{r.share:.1%}",
                     change_text(delta), status])
    if len(matching) and "outcome" in matching:
        for r in matching[matching["outcome"] == "retired"].itertuples():
            rows.append([f"{r.segment_id} {r.previous_segment_name}", "", "", "retired", "retired"])
    y = draw_table(fig, 0.04, y - 0.02, [("segment", 0.3), ("share before", 0.12), ("share now", 0.12),
                                          ("change", 0.12), ("status", 0.3)], rows, size=9.5)
    psi = {f: data.shifts[f"psi.{f}"] for f in data.model_features if f"psi.{f}" in data.shifts}
    if psi:
        y = paragraph(fig, 0.04, y - 0.03, "Did the customers' behaviour drift?", 0.9, size=11, weight="bold")
        y = draw_table(fig, 0.04, y - 0.01, [("model feature", 0.2), ("drift", 0.35), ("PSI", 0.1)],
                       [[f, drift_text(v), f"{v:.3f}"] for f, v in psi.items()], size=9.5)
        paragraph(fig, 0.04, y - 0.015, "PSI (population stability index) compares the spread of each feature "
                  "with the published run's: below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a shift "
                  "worth looking into before trusting the comparison.", 0.9, size=8.5, color=_MUTED)
    return fig


def forward_page(data: ReportData) -> Figure:
    """Do the segments foretell what customers did next? Per segment, and overall in words."""
    days = data.forward_days
    m = data.forward_metrics
    fig = new_page("Do the segments foretell what customers do next?",
                   f"What the customers did in the {days} days after {data.as_of}")
    rows = [[f"{r.segment_id} {r.segment_name}", f"{int(r.customers):,}", f"{r.repurchase_rate:.0%}",
             _money(r.mean_spend, data.currency)] for r in data.forward.itertuples()]
    y = draw_table(fig, 0.04, 0.86, [("segment", 0.3), ("customers", 0.12), (f"bought again within {days} days", 0.2),
                                      ("mean spend in those days", 0.2)], rows, size=10)
    auc_value = m.get("forward.auc_repurchase", float("nan"))
    words = [f"Overall {m.get('forward.repurchase_rate', 0):.0%} of the customers bought again.",
             f"Ranking customers by their segment's repurchase rate tells apart those who bought again from "
             f"those who did not with an AUC of {auc_value:.2f} (0.5 is chance, 1 a perfect separation).",
             f"The segments explain {m.get('forward.r2_spend', 0):.0%} of the variance of what customers spent "
             f"in those {days} days."]
    for line in words:
        y = paragraph(fig, 0.04, y - 0.02, line, 0.9, size=11)
    return fig


def contract_page(contract: pd.DataFrame, descriptions: dict[str, str]) -> Figure:
    """How every line read was accounted for."""
    fig = new_page("Data contract", "Every line read is used, rejected (kept in rejected_lines.csv with its "
                   "reason) or outside the as-of window")
    rows = [[str(r.status), str(r.reason), f"{r.lines:,}", descriptions.get(r.reason, "")]
            for r in contract.itertuples()]
    draw_table(fig, 0.04, 0.86, [("status", 0.12), ("reason", 0.2), ("lines", 0.1), ("meaning", 0.5)], rows, size=9)
    return fig


GLOSSARY = [
    ("segment", "a group of customers who buy alike; its id (S1, S2...) stays the same across reruns, its name "
                "describes its current behaviour"),
    ("recency", "days from the last purchase to the as-of date; fewer days = bought more recently"),
    ("frequency", "number of orders (or purchase days, without an order number) before the as-of date"),
    ("monetary", "net spend before the as-of date: purchases minus returns"),
    ("tenure", "days from the first purchase to the as-of date"),
    ("median", "the middle value: half the customers are above, half below"),
    ("homogeneity", "1 minus the segment's spread divided by the whole base's spread, averaged over the model's "
                    "features (in the model's space); 1 = identical customers, 0 = as varied as everyone"),
    ("silhouette", "how much closer a customer is to its own segment than to the next one, from -1 to 1"),
    ("stability", "ARI: agreement of refits on resampled customers with the fit (1 = the same segments); "
                  "Jaccard per segment: share of its customers found together again"),
    ("PSI", "population stability index: how far a feature's distribution moved since the published run"),
    ("model space", "the features after the configured transforms (e.g. logarithm) and standardisation, "
                    "where distances between customers are measured"),
    ("k", "the number of segments, chosen among the candidates by the configured criterion"),
    ("quality gate", "a threshold a run must meet before it is published to the CRM"),
]


def glossary_page() -> Figure:
    fig = new_page("Glossary")
    draw_table(fig, 0.04, 0.88, [("term", 0.14), ("meaning", 0.78)], [[t, m] for t, m in GLOSSARY], size=9.5)
    return fig


def appendix_divider(facts: list[str]) -> Figure:
    """The start of the analysts' appendix, with the run's technical facts."""
    fig = new_page("Appendix for analysts", "How the segments were made and how good they are")
    y = 0.86
    for fact in facts:
        y = paragraph(fig, 0.04, y, fact, 0.92, size=10) - 0.01
    paragraph(fig, 0.04, y - 0.02, "The pages that follow: choosing the number of segments, separation and "
              "stability, the segments in the model's space, the feature distributions, the customers in two "
              "dimensions, what the customers did next (when the data reach past the as-of date), the data "
              "contract and a glossary.", 0.92, size=10, color=_MUTED)
    return fig


# --- the document -------------------------------------------------------------------------------

def footer(fig: Figure, text: str, number: int, total: int) -> None:
    fig.text(0.04, 0.018, text, fontsize=7.5, color=_MUTED, va="bottom")
    fig.text(0.96, 0.018, f"page {number} of {total}", fontsize=7.5, color=_MUTED, va="bottom", ha="right")


def as_page(fig: Figure) -> Figure:
    """A figure on an A4 landscape page, its layout kept clear of the footer."""
    fig.set_size_inches(*PAGE)
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set"):
        engine.set(rect=(0, 0.04, 1, 0.96))
    return fig


def write_report(path: Path, pages: list[Figure], footer_text: str = "") -> Path:
    """Write ``pages`` (figures, in order) as one PDF of A4 landscape pages with a footer, atomically."""
    from matplotlib.backends.backend_pdf import PdfPages  # here: a command that writes no report skips it

    def write(tmp: Path) -> None:
        with PdfPages(tmp) as pdf:
            for number, page in enumerate(pages, start=1):
                as_page(page)
                footer(page, footer_text, number, len(pages))
                pdf.savefig(page)
    return write_atomic(path, write)
