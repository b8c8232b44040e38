"""PNG plots: learning curves with confidence bands, and aggregate interval estimates.

Figures are drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``), so
plotting works headless and never touches pyplot's global state or the user's backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from torchrl_rise.evaluation.aggregate import IntervalEstimate

__all__ = ["Curve", "plot_interval_estimates", "plot_learning_curves", "plot_task_curves"]

_METRIC_TITLES = {
    "median": "Median",
    "iqm": "IQM",
    "mean": "Mean",
    "optimality_gap": "Optimality gap",
}


class Curve(NamedTuple):
    """A learning curve: ``x`` (frames), its point estimate ``y`` and the band ``[low, high]``."""

    x: np.ndarray
    y: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _colors(names: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(
            f"plots are written as PNG: give a path ending in .png, got {str(path)!r}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _check_curve(name: str, curve: Curve) -> Curve:
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1) for a in curve]
    if len({a.size for a in arrays}) != 1 or arrays[0].size == 0:
        raise ValueError(
            f"curve {name!r}: x, y, low and high must be non-empty and of one length, got sizes "
            f"{[a.size for a in arrays]}."
        )
    return Curve(*arrays)


def _draw_curves(ax, curves: Mapping[str, Curve], colors: Mapping[str, tuple]) -> None:
    from matplotlib.ticker import EngFormatter

    for name, curve in curves.items():
        c = _check_curve(name, curve)
        ax.plot(c.x, c.y, color=colors[name], marker="o", markersize=3, linewidth=1.8, label=name)
        ax.fill_between(c.x, c.low, c.high, color=colors[name], alpha=0.2, linewidth=0)
    ax.grid(True, alpha=0.25)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 2M, not 2000000


def plot_learning_curves(
    curves: Mapping[str, Curve],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "environment frames",
    ylabel: str = "normalised score (IQM)",
    dpi: int = 120,
) -> Path:
    """Plot one curve per method with its confidence band, and write a PNG.

    Args:
        curves: method -> :class:`Curve` (e.g. from
            :func:`~torchrl_rise.evaluation.aggregate_curves`).
        path: where to write the ``.png``.

    Returns:
        ``path``.

    Example:
        >>> import tempfile
        >>> x = np.array([0.0, 1e5, 2e5])
        >>> c = Curve(x, np.array([0.0, 0.4, 0.8]), np.array([0.0, 0.3, 0.6]), np.array([0.1, 0.5, 0.9]))
        >>> out = plot_learning_curves({"rise": c}, tempfile.mkdtemp() + "/curve.png")
        >>> out.stat().st_size > 1000
        True
    """
    if not curves:
        raise ValueError("no curves to plot: pass {method: Curve(x, y, low, high)}.")
    fig, axes = _new_figure(6.4, 4.2)
    ax = axes[0, 0]
    _draw_curves(ax, curves, _colors(list(curves)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="best", frameon=False)
    return _save(fig, path, dpi)


def plot_task_curves(
    curves: Mapping[str, Mapping[str, Curve]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "environment frames",
    ylabel: str = "return",
    ncols: int = 4,
    dpi: int = 100,
) -> Path:
    """Small multiples: one panel per task, one curve (with band) per method, and write a PNG.

    Args:
        curves: task -> method -> :class:`Curve`.

    Example:
        >>> import tempfile
        >>> c = Curve(np.arange(3.0), np.arange(3.0), np.arange(3.0) - 1, np.arange(3.0) + 1)
        >>> out = plot_task_curves({"pong": {"btr": c}}, tempfile.mkdtemp() + "/tasks.png")
        >>> out.suffix
        '.png'
    """
    if not curves:
        raise ValueError("no task curves to plot: pass {task: {method: Curve}}.")
    tasks = list(curves)
    methods = sorted({m for per_task in curves.values() for m in per_task})
    colors = _colors(methods)
    ncols = max(1, min(ncols, len(tasks)))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = _new_figure(3.4 * ncols, 2.6 * nrows + 0.4, nrows, ncols)
    for i, ax in enumerate(axes.flat):
        if i >= len(tasks):
            ax.set_visible(False)
            continue
        _draw_curves(ax, curves[tasks[i]], colors)
        ax.set_title(tasks[i], fontsize="medium")
        if i % ncols == 0:
            ax.set_ylabel(ylabel)
        if i // ncols == nrows - 1:
            ax.set_xlabel(xlabel)
    handles, labels = [], []
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_interval_estimates(
    estimates: Mapping[str, Mapping[str, IntervalEstimate]],
    path: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "normalised score",
    dpi: int = 120,
) -> Path:
    """rliable-style interval plot: one panel per metric, one bar (CI) and tick (point) per method.

    Args:
        estimates: method -> metric -> :class:`IntervalEstimate` (from
            :func:`~torchrl_rise.evaluation.aggregate_scores`).
        metrics: which metrics, in order (default: those of the first method).

    Example:
        >>> import tempfile
        >>> est = {"rise": {"iqm": IntervalEstimate(0.5, 0.4, 0.6)},
        ...        "btr": {"iqm": IntervalEstimate(0.3, 0.2, 0.4)}}
        >>> plot_interval_estimates(est, tempfile.mkdtemp() + "/agg.png").stat().st_size > 1000
        True
    """
    if not estimates:
        raise ValueError("no estimates to plot: pass {method: {metric: IntervalEstimate}}.")
    methods = list(estimates)
    metrics = list(metrics or next(iter(estimates.values())))
    for m in methods:
        lacking = [k for k in metrics if k not in estimates[m]]
        if lacking:
            raise ValueError(f"method {m!r} has no estimate for metrics {lacking}.")
    colors = _colors(methods)
    fig, axes = _new_figure(3.2 * len(metrics), 0.45 * len(methods) + 1.1, 1, len(metrics))
    for j, metric in enumerate(metrics):
        ax = axes[0, j]
        for i, m in enumerate(methods):
            est = estimates[m][metric]
            ax.barh(i, est.high - est.low, left=est.low, height=0.6, color=colors[m], alpha=0.75)
            ax.vlines(est.point, i - 0.3, i + 0.3, color="k", alpha=0.7)
        ax.set_yticks(range(len(methods)), labels=methods if j == 0 else [""] * len(methods))
        ax.set_ylim(-0.6, len(methods) - 0.4)
        ax.set_title(_METRIC_TITLES.get(metric, metric))
        ax.grid(True, axis="x", alpha=0.25)
        ax.spines[["top", "right", "left"]].set_visible(False)
    fig.supxlabel(xlabel)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)
