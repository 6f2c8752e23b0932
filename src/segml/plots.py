"""Figures of a segmentation. Every function returns a matplotlib ``Figure`` and saves nothing.

Figures are built with ``matplotlib.figure.Figure`` directly, so no global
backend or pyplot state is touched. Segments keep one colour across figures
(by segment id) and are labelled by name everywhere.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
from sklearn.decomposition import PCA

from segml.features import FEATURE_UNITS

#: Every figure's size: an A4 landscape page, so the PNG files and the report's pages look the same.
PAGE = (11.69, 8.27)

_MONEY = ("monetary", "avg_order_value")
_CRITERION_LABELS = {
    "silhouette": "silhouette (higher is better)",
    "calinski_harabasz": "Calinski–Harabasz (higher is better)",
    "davies_bouldin": "Davies–Bouldin (lower is better)",
    "bic": "BIC (lower is better)",
    "inertia": "inertia: within-segment sum of squares (lower is tighter)",
    "min_share": "smallest segment share",
}


def segment_colours(n_segments: int) -> list:
    palette = colormaps["tab10"] if n_segments <= 10 else colormaps["tab20"]
    return [palette(i % palette.N) for i in range(n_segments)]


def _labels(segments: pd.DataFrame) -> list[str]:
    return [f"{row.segment_id}: {row.segment_name}" for row in segments.itertuples()]


def _with_legend_row(fig: Figure):
    """The figure's plot axes under a thin row of its own for the legend, so no legend sits on the data
    (an outside figure legend would sit on the report's footer)."""
    grid = fig.add_gridspec(2, 1, height_ratios=(1, 16))
    key = fig.add_subplot(grid[0])
    key.axis("off")
    return key, fig.add_subplot(grid[1])


def plot_segment_sizes(segments: pd.DataFrame) -> Figure:
    """Share of customers and share of revenue of every segment."""
    fig = Figure(figsize=PAGE, layout="constrained")
    key, ax = _with_legend_row(fig)
    y = np.arange(len(segments))
    ax.barh(y - 0.2, 100 * segments["share"], height=0.4, label="customers", color="#4c72b0")
    ax.barh(y + 0.2, 100 * segments["revenue_share"], height=0.4, label="revenue", color="#dd8452")
    for yi, (c, r) in enumerate(zip(segments["share"], segments["revenue_share"])):
        ax.text(100 * c + 0.5, yi - 0.2, f"{100 * c:.0f}%", va="center", fontsize=8)
        ax.text(100 * r + 0.5, yi + 0.2, f"{100 * r:.0f}%", va="center", fontsize=8)
    ax.set_yticks(y, _labels(segments))
    ax.invert_yaxis()
    ax.set_xlim(0, 100 * max(segments["share"].max(), segments["revenue_share"].max()) * 1.12 + 1)
    ax.set_xlabel("share (%)")
    fig.suptitle("Segment sizes: share of customers and of revenue")
    key.legend(*ax.get_legend_handles_labels(), loc="center", ncols=2, frameon=False)
    return fig


def plot_snake(Z: np.ndarray, labels: np.ndarray, segments: pd.DataFrame, features: list[str]) -> Figure:
    """Mean of every model feature per segment, in population standard deviations."""
    fig = Figure(figsize=PAGE, layout="constrained")
    ax = fig.add_subplot()
    std = Z.std(axis=0)
    std[std == 0] = 1.0
    k = int(max(labels.max(), segments["segment"].max())) + 1
    sizes = np.maximum(np.bincount(labels, minlength=k), 1)[:, np.newaxis]
    sums = np.column_stack([np.bincount(labels, weights=Z[:, j], minlength=k) for j in range(Z.shape[1])])
    z = (sums / sizes - Z.mean(axis=0)) / std  # each segment's mean, standardised
    colours = segment_colours(len(segments))
    x = np.arange(len(features))
    for row, label in zip(segments.itertuples(), _labels(segments)):
        ax.plot(x, z[row.segment], marker="o", color=colours[row.segment], label=label)
    ax.axhline(0, color="grey", linewidth=0.8)
    hints = {"recency_days": "\n(higher = longer ago)", "tenure_days": "\n(higher = longer-standing)"}
    ax.set_xticks(x, [f + hints.get(f, "") for f in features])
    ax.set_ylabel("segment mean (standard deviations from the population mean)")
    fig.suptitle("Segments in the model's space: each segment's mean of every model feature")
    fig.legend(fontsize=8, loc="outside right upper")
    return fig


def box_stats(values: np.ndarray) -> dict[str, float]:
    """Quartiles and whiskers (the furthest values within 1.5 IQR of the box) for ``Axes.bxp``.

    What ``Axes.boxplot`` computes without its outliers and mean, five times
    faster for a segment of a million customers.
    """
    if len(values) == 0:
        return dict.fromkeys(("med", "q1", "q3", "whislo", "whishi"), np.nan)
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    reach = 1.5 * (q3 - q1)
    return {"med": med, "q1": q1, "q3": q3,
            "whislo": np.min(values, where=values >= q1 - reach, initial=np.inf),
            "whishi": np.max(values, where=values <= q3 + reach, initial=-np.inf)}


def _plain_tick(value: float, _position: int | None = None) -> str:
    """A tick label in plain digits with thousands separators (a module-level function, so that a
    figure pickles: :mod:`segml.drawing` hands figures to another process)."""
    return f"{value:,.10g}"


def _plain_log_axis(ax, stats: list[dict[str, float]]) -> None:
    """A log x axis labelled in plain numbers: 1, 2, 5, 10, 20..., with 3, 30... added within a decade
    and only 1, 10, 100... over many decades.

    Plain numbers read better than powers of ten in a marketing report, and
    leaving out the minor ticks halves the time matplotlib takes to lay the figure out.
    """
    ax.set_xscale("log")
    lows = [s["whislo"] for s in stats if np.isfinite(s["whislo"])]
    highs = [s["whishi"] for s in stats if np.isfinite(s["whishi"])]
    decades = np.log10(max(highs) / min(lows)) if lows and highs else 0.0
    subs = (1.0, 2.0, 3.0, 5.0) if decades <= 1 else (1.0, 2.0, 5.0) if decades <= 4 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain_tick))
    ax.xaxis.set_minor_locator(NullLocator())


def plot_feature_distributions(features: pd.DataFrame, labels: np.ndarray, segments: pd.DataFrame,
                               currency: str = "", model_features: list[str] | None = None) -> Figure:
    """Box plots of every feature by segment, in original units (log scale); features the model does
    not use are labelled so."""
    columns = [c for c in FEATURE_UNITS if c in features.columns]
    fig = Figure(figsize=PAGE, layout="constrained")
    colours = segment_colours(len(segments))
    names = _labels(segments)
    # Customers ordered by segment once: each segment's values are then one slice per feature.
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=int(segments["segment"].max()) + 1)
    ends = np.cumsum(counts)
    starts = ends - counts
    n_cols = 3 if len(columns) > 4 else 2
    n_rows = -(-len(columns) // n_cols)
    size = 8 if len(segments) <= 6 else 6.5
    for i, column in enumerate(columns):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        values = np.clip(features[column].to_numpy(dtype=float)[order], 1e-2, None)
        stats = [box_stats(values[starts[s]:ends[s]]) for s in segments["segment"]]
        box = ax.bxp(stats, orientation="horizontal", patch_artist=True, showfliers=False, widths=0.6,
                     medianprops={"color": "black", "linewidth": 1.6})
        for patch, colour in zip(box["boxes"], colours):
            patch.set_facecolor(colour)
            patch.set_alpha(0.55)
        ax.set_yticks(np.arange(1, len(names) + 1), names if i % n_cols == 0 else [], fontsize=size)
        ax.invert_yaxis()
        _plain_log_axis(ax, stats)
        ax.tick_params(axis="x", labelsize=7)
        unit = FEATURE_UNITS[column] + (f", {currency}" if currency and column in _MONEY else "")
        used = model_features is None or column in model_features
        ax.set_title(column + ("" if used else " (not used by the model)"), fontsize=9,
                     color="black" if used else "#666666")
        ax.set_xlabel(f"{unit}, log scale", fontsize=8)
    fig.suptitle("Feature distributions by segment (boxes: middle half of customers; black line: median; "
                 "whiskers: 1.5 IQR)")
    return fig


def plot_projection(Z: np.ndarray, labels: np.ndarray, segments: pd.DataFrame, max_points: int = 5000,
                    random_state: int = 0) -> Figure:
    """The customers on the first two principal components of the model space."""
    rng = np.random.default_rng(random_state)
    idx = np.sort(rng.choice(len(labels), size=min(max_points, len(labels)), replace=False))
    pca = PCA(n_components=min(2, Z.shape[1]), random_state=random_state).fit(Z)
    P = pca.transform(Z[idx])
    if P.shape[1] == 1:
        P = np.column_stack([P[:, 0], np.zeros(len(P))])
    ratio = list(pca.explained_variance_ratio_) + [0.0]
    fig = Figure(figsize=PAGE, layout="constrained")
    ax = fig.add_subplot()
    colours = segment_colours(len(segments))
    for row, label in zip(segments.itertuples(), _labels(segments)):
        members = labels[idx] == row.segment
        ax.scatter(P[members, 0], P[members, 1], s=6, alpha=0.5, color=colours[row.segment], label=label)
    ax.set_xlabel(f"first principal component ({100 * ratio[0]:.0f}% of variance)")
    ax.set_ylabel(f"second principal component ({100 * ratio[1]:.0f}% of variance)")
    shown = f"{len(idx):,} of {len(labels):,} customers" if len(idx) < len(labels) else f"{len(idx):,} customers"
    fig.suptitle(f"Customers in two dimensions ({shown}, model space)")
    fig.legend(markerscale=3, fontsize=8, loc="outside right upper")
    return fig


def plot_silhouette(segments: pd.DataFrame) -> Figure:
    """Mean silhouette and stability (Jaccard) of every segment."""
    fig = Figure(figsize=PAGE, layout="constrained")
    key, ax = _with_legend_row(fig)
    y = np.arange(len(segments))
    ax.barh(y - 0.2, segments["silhouette"], height=0.4, color="#55a868", label="mean silhouette")
    ax.barh(y + 0.2, segments["stability_jaccard"], height=0.4, color="#8172b2", label="stability (Jaccard)")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(y, _labels(segments))
    ax.invert_yaxis()
    ax.set_xlim(min(-0.1, float(np.nanmin(segments["silhouette"])) - 0.05), 1.0)
    ax.set_xlabel("score (-1 to 1 for silhouette, 0 to 1 for Jaccard; higher is better)")
    fig.suptitle("Separation and stability by segment")
    key.legend(*ax.get_legend_handles_labels(), loc="center", ncols=2, frameon=False)
    return fig


def plot_k_selection(candidates: pd.DataFrame, criterion: str, min_share: float) -> Figure:
    """Every criterion against the number of segments, with the chosen k marked."""
    metrics = [m for m in ("silhouette", "calinski_harabasz", "davies_bouldin", "bic", "inertia")
               if m in candidates and candidates[m].notna().any()] + ["min_share"]
    fig = Figure(figsize=PAGE, layout="constrained")
    chosen = int(candidates.loc[candidates["chosen"], "k"].iloc[0]) if candidates["chosen"].any() else None
    rows = len(metrics) // 2 + 1  # a cell to spare for the legend
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, 2, i + 1)
        values = 100 * candidates[metric] if metric == "min_share" else candidates[metric]
        ax.plot(candidates["k"], values, marker="o", color="#4c72b0")
        ineligible = ~candidates["eligible"]
        ax.scatter(candidates.loc[ineligible, "k"], values[ineligible], marker="x", color="#c44e52", zorder=3,
                   label="a segment below the minimum share")
        if metric == "min_share":
            ax.axhline(100 * min_share, color="#c44e52", linestyle="--", linewidth=0.8)
        if chosen is not None:
            ax.axvline(chosen, color="#55a868", linestyle=":", label=f"chosen k = {chosen}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("number of segments k")
        ax.set_title(("▶ " if metric == criterion else "") + _CRITERION_LABELS[metric]
                     + (" (%)" if metric == "min_share" else ""), fontsize=9)
    key = fig.add_subplot(rows, 2, len(metrics) + 1)
    key.axis("off")
    key.legend(*fig.axes[0].get_legend_handles_labels(), fontsize=9, loc="center", frameon=False)
    fig.suptitle(f"Choosing the number of segments (criterion: {criterion})")
    return fig


def segmentation_figures(features: pd.DataFrame, Z: np.ndarray, labels: np.ndarray, segments: pd.DataFrame,
                         candidates: pd.DataFrame, model_features: list[str], criterion: str,
                         min_share: float, currency: str = "") -> dict[str, Figure]:
    """Every figure of a run, by file stem, in report order."""
    return {
        "segment_sizes": plot_segment_sizes(segments),
        "snake_plot": plot_snake(Z, labels, segments, model_features),
        "feature_distributions": plot_feature_distributions(features, labels, segments, currency, model_features),
        "projection_2d": plot_projection(Z, labels, segments),
        "silhouette_by_segment": plot_silhouette(segments),
        "k_selection": plot_k_selection(candidates, criterion, min_share),
    }


def plot_migration(shares: pd.DataFrame, counts: pd.DataFrame, names: dict[str, str]) -> Figure:
    """Heatmap of where the customers of each previous segment are now (row shares, with counts)."""
    fig = Figure(figsize=PAGE, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(100 * shares.to_numpy(dtype=float), cmap="Blues", vmin=0, vmax=100, aspect="auto")
    for i in range(shares.shape[0]):
        for j in range(shares.shape[1]):
            value = 100 * shares.iat[i, j]
            ax.text(j, i, f"{value:.0f}%\n({counts.iat[i, j]:,})", ha="center", va="center", fontsize=8,
                    color="white" if value > 60 else "black")
    label = lambda s: f"{s}: {names.get(s, 'retired')}"  # noqa: E731
    ax.set_xticks(range(shares.shape[1]), [label(s) for s in shares.columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(shares.shape[0]), [label(s) for s in shares.index], fontsize=8)
    ax.set_xlabel("segment now")
    ax.set_ylabel("segment in the previous published run")
    ax.set_title("Customer migration (share of each previous segment, customers in both runs)")
    fig.colorbar(image, ax=ax, label="% of the previous segment")
    return fig


def plot_comparison(table: pd.DataFrame) -> Figure:
    """Every score of a scheme comparison, one panel each, schemes as bars (baselines in grey), the best
    of each score outlined."""
    from segml.schemes import SCORES

    scores = [c for c in SCORES if c in table and table[c].notna().any()]
    fig = Figure(figsize=PAGE, layout="constrained")
    cols = 3
    rows = -(-len(scores) // cols)
    y = np.arange(len(table))
    colours = ["#4c72b0" if kind == "scheme" else "#999999" for kind in table["kind"]]
    for i, score in enumerate(scores):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = table[score].to_numpy(dtype=float)
        bars = ax.barh(y, np.nan_to_num(values), color=colours, height=0.6)
        for bar, best in zip(bars, table.get(f"best_{score}", pd.Series(False, index=table.index))):
            if best:
                bar.set_edgecolor("black")
                bar.set_linewidth(1.5)
        ax.set_yticks(y, table["scheme"] if i % cols == 0 else [], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(score, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("Schemes compared on the same customers (grey: RFM baselines; outlined: best)")
    return fig
