"""Evaluation the way the field reports it: normalised scores, rliable aggregates, plots, reports.

- :mod:`~torchrl_rise.evaluation.atari_scores`: published Atari-57 random/human scores.
- :mod:`~torchrl_rise.evaluation.normalization`: human-normalised (Atari), Procgen min-max and
  generic min-max scores.
- :mod:`~torchrl_rise.evaluation.aggregate`: median, IQM, mean, optimality gap and probability of
  improvement with stratified-bootstrap CIs (rliable); per-game tables.
- :mod:`~torchrl_rise.evaluation.plots`: learning curves with CI bands and aggregate interval plots
  (PNG).
- :mod:`~torchrl_rise.evaluation.runs`: read runs' ``summary.json``/``eval.csv``.
- :mod:`~torchrl_rise.evaluation.results`: runs -> the numbers of a report, as data
  (:func:`compute_results` -> :class:`ReportResults`, one :class:`SuiteResults` per suite).
- :mod:`~torchrl_rise.evaluation.report`: those numbers -> markdown, PNGs, ``runs.csv`` and
  ``aggregates.json`` (:func:`render_markdown`, :func:`write_figures`; :func:`build_report` does
  everything).

Example:
    >>> from torchrl_rise.evaluation import human_normalized_score
    >>> round(human_normalized_score(-3.05, "ALE/Pong-v5"), 3)
    0.5
"""

from __future__ import annotations

from torchrl_rise.evaluation.aggregate import (
    METRICS,
    IntervalEstimate,
    aggregate_curves,
    aggregate_scores,
    iqm,
    optimality_gap,
    per_game_table,
    probability_of_improvement,
    score_matrices,
)
from torchrl_rise.evaluation.atari_scores import (
    ATARI_5,
    ATARI_57,
    ATARI_REFERENCE_SCORES,
    ATARI_SCORES_SOURCE,
    AtariReference,
    atari_game_name,
    atari_reference,
)
from torchrl_rise.evaluation.normalization import (
    MINIWORLD_RANGES,
    PROCGEN_GAMES,
    PROCGEN_RANGES,
    PROCGEN_RANGES_SOURCE,
    ReferenceRange,
    human_normalized_score,
    min_max_normalized_score,
    normalize_score,
    procgen_game_name,
    procgen_normalized_score,
    reference_range,
)
from torchrl_rise.evaluation.plots import (
    Curve,
    plot_interval_estimates,
    plot_learning_curves,
    plot_task_curves,
)
from torchrl_rise.evaluation.report import Report, build_report, render_markdown, write_figures
from torchrl_rise.evaluation.results import ReportResults, SuiteResults, compute_results
from torchrl_rise.evaluation.runs import (
    SCORE_KINDS,
    RunResult,
    collect_runs,
    is_run_complete,
    load_run,
)

__all__ = [
    "ATARI_5",
    "ATARI_57",
    "ATARI_REFERENCE_SCORES",
    "ATARI_SCORES_SOURCE",
    "METRICS",
    "MINIWORLD_RANGES",
    "PROCGEN_GAMES",
    "PROCGEN_RANGES",
    "PROCGEN_RANGES_SOURCE",
    "SCORE_KINDS",
    "AtariReference",
    "Curve",
    "IntervalEstimate",
    "ReferenceRange",
    "Report",
    "ReportResults",
    "RunResult",
    "SuiteResults",
    "aggregate_curves",
    "aggregate_scores",
    "atari_game_name",
    "atari_reference",
    "build_report",
    "collect_runs",
    "compute_results",
    "human_normalized_score",
    "iqm",
    "is_run_complete",
    "load_run",
    "min_max_normalized_score",
    "normalize_score",
    "optimality_gap",
    "per_game_table",
    "plot_interval_estimates",
    "plot_learning_curves",
    "plot_task_curves",
    "probability_of_improvement",
    "procgen_game_name",
    "procgen_normalized_score",
    "reference_range",
    "render_markdown",
    "score_matrices",
    "write_figures",
]
