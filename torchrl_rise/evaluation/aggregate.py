"""Aggregate metrics with stratified-bootstrap confidence intervals (rliable), and per-game tables.

Scores are arranged as rliable expects: one ``[num_runs, num_tasks]`` matrix per method (runs are
seeds, tasks are games), or ``[num_runs, num_tasks, num_points]`` for learning curves. The
metrics are rliable's (:mod:`rliable.metrics`) and the confidence intervals come from
:func:`rliable.library.get_interval_estimates`: a stratified bootstrap that resamples runs within
each task (Agarwal et al., 2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice"), seeded for reproducibility.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "METRICS",
    "IntervalEstimate",
    "aggregate_curves",
    "aggregate_scores",
    "iqm",
    "optimality_gap",
    "per_game_table",
    "probability_of_improvement",
    "score_matrices",
]

logger = logging.getLogger(__name__)


class IntervalEstimate(NamedTuple):
    """A point estimate and its confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float

    def format(self, digits: int = 3) -> str:
        """``"0.512 [0.401, 0.633]"``."""
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def rliable_metrics():
    """:mod:`rliable.metrics`, imported when an aggregate is first computed.

    rliable is a dependency of torchrl_rise; importing it lazily keeps the rest of
    :mod:`torchrl_rise.evaluation` (normalisation, reference scores, the context probe) usable
    in an install without it, such as a GPU machine with only the wheels docs/gpu.md lists.
    """
    try:
        from rliable import metrics
    except ImportError as error:
        raise ImportError(
            "the aggregate scores need rliable, a dependency of torchrl_rise: "
            "pip install 'rliable>=1.2' 'pandas<3' (or reinstall torchrl_rise)."
        ) from error
    return metrics


def _rliable_metric(name: str):
    def metric(scores: np.ndarray, *args, **kwargs):
        return getattr(rliable_metrics(), name)(scores, *args, **kwargs)

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = f":func:`rliable.metrics.{name}` (rliable imported on first use)."
    return metric


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the 25%-trimmed mean over all runs and tasks pooled (rliable's).

    Example:
        >>> iqm(np.array([[0.0, 1.0], [2.0, 100.0]]))
        1.5
    """
    return float(rliable_metrics().aggregate_iqm(np.asarray(scores, dtype=np.float64)))


def optimality_gap(scores: np.ndarray, *, gamma: float = 1.0) -> float:
    """How far the scores fall short of ``gamma`` on average (scores above ``gamma`` count as ``gamma``).

    rliable's :func:`~rliable.metrics.aggregate_optimality_gap`.

    Example:
        >>> optimality_gap(np.array([[0.5, 2.0]]))
        0.25
    """
    return float(
        rliable_metrics().aggregate_optimality_gap(
            np.asarray(scores, dtype=np.float64), gamma=gamma
        )
    )


METRICS = {
    "median": _rliable_metric("aggregate_median"),
    "iqm": _rliable_metric("aggregate_iqm"),
    "mean": _rliable_metric("aggregate_mean"),
    "optimality_gap": _rliable_metric("aggregate_optimality_gap"),
}
"""Metric name -> rliable's function of a ``[runs, tasks]`` matrix (:mod:`rliable.metrics`).
Median and mean are over the per-task mean scores; IQM and optimality gap pool all runs and
tasks."""


def _check_matrix(name: str, scores: np.ndarray, ndim: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != ndim or 0 in scores.shape:
        want = "[runs, tasks]" if ndim == 2 else "[runs, tasks, points]"
        raise ValueError(
            f"scores of {name!r} must be a non-empty {want} array, got shape {scores.shape}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError(
            f"scores of {name!r} contain NaN or inf; drop or fill the missing runs before "
            "aggregating (see score_matrices, which keeps a full runs x tasks matrix)."
        )
    return scores


def _interval_estimates(score_dict, func, *, reps, confidence, seed, method="percentile"):
    """:func:`rliable.library.get_interval_estimates`, made reproducible by ``seed``.

    rliable (1.2.0) passes ``random_state`` on, but its ``StratifiedBootstrap.update_indices``
    draws the resampled run indices with ``np.random.choice``, i.e. from NumPy's *global*
    generator, so the same ``random_state`` gives different intervals from call to call and two
    different ones give the same intervals under the same global seed (``tests/test_evaluation.py``
    checks both). The global state is therefore seeded here and restored afterwards; the
    ``RandomState`` still covers ``StratifiedIndependentBootstrap`` (probability of
    improvement), which does use it.
    """
    from rliable import library

    global_state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            # arch (under rliable) deprecates ``random_state`` for ``generator``; rliable only
            # passes the former.
            warnings.filterwarnings(
                "ignore", message="random_state is deprecated", category=FutureWarning
            )
            return library.get_interval_estimates(
                score_dict,
                func,
                method=method,
                reps=reps,
                confidence_interval_size=confidence,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(global_state)


def aggregate_scores(
    scores: Mapping[str, np.ndarray],
    *,
    metrics: Sequence[str] = ("median", "iqm", "mean", "optimality_gap"),
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> dict[str, dict[str, IntervalEstimate]]:
    """Aggregate metrics of each method's ``[runs, tasks]`` score matrix with bootstrap CIs.

    Args:
        scores: method -> ``[num_runs, num_tasks]`` normalised scores.
        metrics: names from :data:`METRICS`.
        reps: bootstrap replications (rliable's papers use 2,000-50,000).
        confidence: coverage of the intervals.
        seed: seeds the bootstrap, so reports are reproducible.
        method: the bootstrap interval method (``"percentile"``, ``"basic"``, ``"bc"``, ``"bca"``).

    Returns:
        method -> metric -> :class:`IntervalEstimate`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> est = aggregate_scores({"rise": rng.uniform(size=(5, 3))}, reps=200)
        >>> e = est["rise"]["iqm"]
        >>> e.low <= e.point <= e.high
        True
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {sorted(METRICS)}.")
    if not scores:
        raise ValueError("no scores to aggregate: pass {method: [runs, tasks] array}.")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}.")
    checked = {name: _check_matrix(name, s, 2) for name, s in scores.items()}
    fns = [METRICS[m] for m in metrics]

    def func(x: np.ndarray) -> np.ndarray:
        return np.array([fn(x) for fn in fns])

    points, intervals = _interval_estimates(
        checked, func, reps=reps, confidence=confidence, seed=seed, method=method
    )
    return {
        name: {
            metric: IntervalEstimate(
                float(points[name][i]), float(intervals[name][0, i]), float(intervals[name][1, i])
            )
            for i, metric in enumerate(metrics)
        }
        for name in checked
    }


def aggregate_curves(
    curves: Mapping[str, np.ndarray],
    *,
    metric: str = "iqm",
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """An aggregate metric at each point of learning curves, with bootstrap CIs.

    Args:
        curves: method -> ``[num_runs, num_tasks, num_points]`` normalised scores.
        metric: a name from :data:`METRICS`.

    Returns:
        method -> ``(point, low, high)``, each ``[num_points]``.

    Example:
        >>> c = np.linspace(0, 1, 4)[None, None, :].repeat(3, 0).repeat(2, 1)
        >>> point, low, high = aggregate_curves({"btr": c}, reps=50)["btr"]
        >>> np.allclose(point, [0, 1 / 3, 2 / 3, 1])
        True
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}.")
    fn = METRICS[metric]
    checked = {name: _check_matrix(name, c, 3) for name, c in curves.items()}

    def func(x: np.ndarray) -> np.ndarray:
        return np.array([fn(x[..., j]) for j in range(x.shape[-1])])

    points, intervals = _interval_estimates(
        checked, func, reps=reps, confidence=confidence, seed=seed
    )
    return {name: (points[name], intervals[name][0], intervals[name][1]) for name in checked}


def probability_of_improvement(
    scores_x: np.ndarray,
    scores_y: np.ndarray,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> IntervalEstimate:
    """P(X > Y): the probability that a run of X beats a run of Y on a random task, with a CI.

    Both are ``[runs, tasks]`` with the same tasks in the same order (runs may differ in number).

    Example:
        >>> x, y = np.full((3, 2), 2.0), np.ones((3, 2))
        >>> probability_of_improvement(x, y, reps=50).point
        1.0
    """
    x = _check_matrix("scores_x", scores_x, 2)
    y = _check_matrix("scores_y", scores_y, 2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"both score matrices need the same tasks, got {x.shape[1]} and {y.shape[1]} columns."
        )
    points, intervals = _interval_estimates(
        {"p": [x, y]},
        _rliable_metric("probability_of_improvement"),
        reps=reps,
        confidence=confidence,
        seed=seed,
    )
    return IntervalEstimate(
        float(points["p"]), float(np.ravel(intervals["p"])[0]), float(np.ravel(intervals["p"])[1])
    )


def score_matrices(
    frame: pd.DataFrame,
    *,
    value: str = "score",
    method: str = "method",
    task: str = "task",
    run: str = "seed",
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Pivot long-format scores (one row per run) into rliable's ``[runs, tasks]`` matrices.

    Only tasks that every method has at least one run of are kept, and each task keeps as many
    runs (lowest ``run`` ids first) as its least-run method has on it, trimmed to the smallest count
    over tasks, so every matrix is full; anything dropped is logged.

    Returns:
        (method -> ``[runs, tasks]`` array, the task names in column order).

    Example:
        >>> df = pd.DataFrame({"method": ["a", "a", "b", "b"], "task": ["t", "t", "t", "t"],
        ...                    "seed": [0, 1, 0, 1], "score": [1.0, 2.0, 3.0, 4.0]})
        >>> mats, tasks = score_matrices(df)
        >>> mats["b"].tolist(), tasks
        ([[3.0], [4.0]], ['t'])
    """
    missing = [c for c in (value, method, task, run) if c not in frame.columns]
    if missing:
        raise ValueError(f"score table lacks columns {missing}; it has {list(frame.columns)}.")
    frame = frame.dropna(subset=[value])
    if frame.empty:
        raise ValueError("no scores to arrange: the table is empty (or all NaN).")
    methods = sorted(frame[method].unique())
    per_method_tasks = [set(frame.loc[frame[method] == m, task]) for m in methods]
    tasks = sorted(set.intersection(*per_method_tasks))
    dropped = sorted(set.union(*per_method_tasks) - set(tasks))
    if dropped:
        logger.warning("tasks %s lack runs of some method; left out of the aggregate", dropped)
    if not tasks:
        raise ValueError(
            f"no task has runs of every method {methods}; aggregate each method separately."
        )
    counts = frame[frame[task].isin(tasks)].groupby([method, task]).size()
    n_runs = int(counts.min())
    if (counts > n_runs).any():
        logger.warning(
            "uneven run counts per (method, task) (%s to %s); keeping the first %d runs of each",
            n_runs,
            int(counts.max()),
            n_runs,
        )
    mats = {}
    for m in methods:
        cols = []
        for t in tasks:
            sub = frame[(frame[method] == m) & (frame[task] == t)].sort_values(run)
            cols.append(sub[value].to_numpy(dtype=np.float64)[:n_runs])
        mats[str(m)] = np.stack(cols, axis=1)
    return mats, [str(t) for t in tasks]


def per_game_table(
    frame: pd.DataFrame,
    *,
    values: Sequence[str] = ("score", "normalized"),
    method: str = "method",
    task: str = "task",
) -> pd.DataFrame:
    """Per-game mean, standard deviation and run count of each value, per method.

    Returns:
        a frame indexed by ``(task, method)`` with columns ``{value}_mean``, ``{value}_std`` and
        ``runs``.

    Example:
        >>> df = pd.DataFrame({"method": ["a", "a"], "task": ["t", "t"], "score": [1.0, 3.0]})
        >>> float(per_game_table(df, values=["score"]).loc[("t", "a"), "score_mean"])
        2.0
    """
    values = [v for v in values if v in frame.columns]
    if not values:
        raise ValueError(f"none of the value columns are in the table {list(frame.columns)}.")
    grouped = frame.groupby([task, method])
    out = pd.DataFrame(index=grouped.size().index)
    for v in values:
        out[f"{v}_mean"] = grouped[v].mean()
        out[f"{v}_std"] = grouped[v].std(ddof=1).fillna(0.0)
    out["runs"] = grouped.size()
    return out
