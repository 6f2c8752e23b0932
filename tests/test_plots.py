"""The figures' own statistics, checked against matplotlib's."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib import cbook

from segml.plots import box_stats, plot_feature_distributions, plot_snake


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_statistics_are_matplotlibs(seed):
    rng = np.random.default_rng(seed)
    # Skewed spend with far outliers on both sides, as real purchases have.
    values = np.concatenate([np.exp(rng.normal(4, 1, 5_000)), [1e-2, 1e-2, 5e5, 9e5]])
    ours = box_stats(values)
    theirs = cbook.boxplot_stats(values)[0]
    for key in ("med", "q1", "q3", "whislo", "whishi"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12), key
    assert ours["whishi"] < 5e5  # the large outliers lie beyond the upper whisker
    assert ours["whislo"] == 1e-2  # q1 - 1.5 IQR is below zero: the lower whisker reaches the smallest value


def test_box_statistics_of_nothing_are_missing():
    assert all(np.isnan(v) for v in box_stats(np.array([])).values())


def test_feature_distributions_draw_one_box_per_segment():
    rng = np.random.default_rng(0)
    features = pd.DataFrame({"recency_days": rng.integers(1, 400, 600), "monetary": np.exp(rng.normal(5, 1, 600))})
    labels = np.repeat([0, 1, 2], 200)
    segments = pd.DataFrame({"segment": [0, 1, 2], "segment_id": ["S1", "S2", "S3"],
                             "segment_name": ["Loyal", "New", "Lapsed"]})
    fig = plot_feature_distributions(features, labels, segments)
    assert len(fig.axes) == 2
    assert all(len(ax.patches) == 3 for ax in fig.axes)
    fig.savefig(io.BytesIO(), format="png")


def test_the_snake_plot_shows_each_segments_standardised_mean():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(900, 3)) + np.repeat([[0, 0, 0], [2, 0, -1], [0, 3, 1]], 300, axis=0)
    labels = np.repeat([0, 1, 2], 300)
    segments = pd.DataFrame({"segment": [0, 1, 2], "segment_id": ["S1", "S2", "S3"],
                             "segment_name": ["A", "B", "C"]})
    fig = plot_snake(Z, labels, segments, ["recency_days", "frequency", "monetary"])
    drawn = np.array([line.get_ydata() for line in fig.axes[0].get_lines()[:3]])
    expected = np.array([(Z[labels == s].mean(axis=0) - Z.mean(axis=0)) / Z.std(axis=0) for s in range(3)])
    np.testing.assert_allclose(drawn, expected, atol=1e-12)


def test_each_box_summarises_its_own_segment():
    # Segments interleaved in the rows and of very different spend: each box must hold its own customers.
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 3_000)
    spend = np.exp(rng.normal(2 + 2 * labels, 0.3))
    features = pd.DataFrame({"monetary": spend})
    segments = pd.DataFrame({"segment": [0, 1, 2], "segment_id": ["S1", "S2", "S3"], "segment_name": ["a", "b", "c"]})
    fig = plot_feature_distributions(features, labels, segments)
    medians = [line.get_xdata()[0] for line in fig.axes[0].get_lines() if line.get_color() == "black" and line.get_linewidth() == 1.6]
    np.testing.assert_allclose(medians, [np.median(spend[labels == s]) for s in range(3)])


def _tick_labels(ax) -> list[str]:
    ax.figure.canvas.draw()  # labels exist once the axis is drawn
    low, high = ax.get_xlim()
    return [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if low <= v <= high]


def test_log_axes_are_labelled_in_plain_numbers():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 500)
    features = pd.DataFrame({
        "frequency": rng.integers(1, 40, 1_000),  # under two decades: 1, 2, 5, 10, 20
        "monetary": np.exp(rng.uniform(0, 13, 1_000)),  # about six decades: powers of ten only
        "avg_order_value": rng.uniform(8, 45, 1_000),  # under one decade: 10, 20, 30
    })
    segments = pd.DataFrame({"segment": [0, 1], "segment_id": ["S1", "S2"], "segment_name": ["a", "b"]})
    fig = plot_feature_distributions(features, labels, segments)
    FigureCanvasAgg(fig)
    few, many, narrow = (_tick_labels(ax) for ax in fig.axes)
    assert {"1", "2", "5", "10", "20"} <= set(few)
    assert "1,000" in many and "100,000" in many
    assert not {"2", "5", "20", "200"} & set(many)
    assert narrow == ["10", "20", "30"]
    assert all(not ax.xaxis.get_minorticklocs().size for ax in fig.axes)


def _segments(k: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """A k-segment run: long names, one segment holding most revenue (the legend's old spot), features."""
    rng = np.random.default_rng(k)
    names = ["Champions, highest spend", "Loyal", "Big spenders", "New", "Promising", "At risk", "Can't lose",
             "Lost", "Hibernating", "Occasional, lowest spend"]
    share = np.full(k, 1 / k)
    revenue = np.full(k, 0.4 / max(k - 1, 1))
    revenue[-1] = 0.6 if k > 1 else 1.0
    segments = pd.DataFrame({"segment": range(k), "segment_id": [f"S{i + 1}" for i in range(k)],
                             "segment_name": names[:k], "share": share, "revenue_share": revenue / revenue.sum(),
                             "silhouette": rng.uniform(0.1, 0.9, k), "stability_jaccard": rng.uniform(0.95, 1.0, k)})
    labels = np.repeat(np.arange(k), 60)
    Z = rng.normal(size=(len(labels), 3)) + labels[:, None]
    features = pd.DataFrame({"recency_days": rng.integers(1, 700, len(labels)),
                             "frequency": rng.integers(1, 40, len(labels)),
                             "monetary": np.exp(rng.normal(5, 1, len(labels))),
                             "tenure_days": rng.integers(1, 700, len(labels)),
                             "avg_order_value": np.exp(rng.normal(3, 1, len(labels)))})
    return segments, features, Z, labels


def _candidates() -> pd.DataFrame:
    ks = np.arange(2, 11)
    return pd.DataFrame({"k": ks, "silhouette": 0.5 - 0.01 * ks, "calinski_harabasz": 1000.0 / ks,
                         "davies_bouldin": 0.5 + 0.01 * ks, "bic": np.nan, "inertia": 5000.0 / ks,
                         "min_share": 0.3 / ks, "eligible": ks < 10, "chosen": ks == 6})


def _boxes(fig) -> tuple[list, list]:
    """The window boxes of every legend, and of every bar, value label, tick label and title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *[ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]]
    obstacles = []
    for ax in fig.axes:
        obstacles += [p.get_window_extent(renderer) for p in ax.patches]
        obstacles += [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
        obstacles += [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels()
                      if t.get_visible() and t.get_text()]
        obstacles += [t.get_window_extent(renderer) for t in (ax.title, ax.xaxis.label, ax.yaxis.label)
                      if t.get_text()]
    if fig._suptitle is not None:
        obstacles.append(fig._suptitle.get_window_extent(renderer))
    return [legend.get_window_extent(renderer) for legend in legends], obstacles


@pytest.mark.parametrize("k", [2, 6, 10])
def test_no_legend_covers_a_bar_or_a_label(k):
    from segml.plots import PAGE, plot_migration, segmentation_figures

    segments, features, Z, labels = _segments(k)
    figures = segmentation_figures(features, Z, labels, segments, _candidates(),
                                   ["recency_days", "frequency", "monetary"], "silhouette", 0.02, "£")
    ids = segments["segment_id"]
    counts = pd.DataFrame(np.full((k, k), 5), index=ids, columns=ids)
    figures["migration"] = plot_migration(counts / counts.sum(axis=1).to_numpy()[:, None], counts,
                                          dict(zip(ids, segments["segment_name"])))
    for name, fig in figures.items():
        assert tuple(fig.get_size_inches()) == PAGE, name  # every figure is a report page as it is
        legends, obstacles = _boxes(fig)
        for legend in legends:
            inner = legend.expanded(0.98, 0.98)  # a shared edge pixel is not an overlap
            hits = [b for b in obstacles if inner.overlaps(b)]
            assert not hits, f"{name} with {k} segments: the legend covers {len(hits)} bars or labels"


def test_k_ticks_are_whole_numbers_and_unused_features_are_labelled():
    from segml.plots import plot_feature_distributions, plot_k_selection

    fig = plot_k_selection(_candidates().iloc[:3], "silhouette", 0.02)  # k = 2, 3, 4: a 0.5 step by default
    _boxes(fig)
    for ax in [ax for ax in fig.axes if ax.axison]:  # the legend's cell has no axis
        ticks = ax.get_xticks()
        assert np.allclose(ticks, np.round(ticks)), ticks
    segments, features, _, labels = _segments(3)
    fig = plot_feature_distributions(features, labels, segments, "£", ["recency_days", "frequency", "monetary"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["recency_days", "frequency", "monetary"]
    assert titles[3:] == ["tenure_days (not used by the model)", "avg_order_value (not used by the model)"]
    medians = [line for ax in fig.axes for line in ax.lines if line.get_color() == "black" and line.get_linewidth() == 1.6]
    assert len(medians) == 5 * 3  # one black median line per segment and feature, visible on coloured boxes
