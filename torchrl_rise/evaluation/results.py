"""The numbers of a report, computed from runs and kept as data (no markdown, no files).

:func:`compute_results` normalises each run's score per suite, arranges the scores into rliable's
``[runs, tasks]`` matrices, and computes the aggregates with stratified-bootstrap CIs, P(method >
baseline), the aggregate and per-task learning curves, the per-game table and the walltime table.
The result, :class:`ReportResults` (one :class:`SuiteResults` per suite), is what
:mod:`~torchrl_rise.evaluation.report` renders into markdown and PNGs; it can equally be read
directly, exported, or rendered some other way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchrl_rise.evaluation.aggregate import (
    IntervalEstimate,
    aggregate_curves,
    aggregate_scores,
    per_game_table,
    probability_of_improvement,
    score_matrices,
)
from torchrl_rise.evaluation.normalization import ReferenceRange, reference_range
from torchrl_rise.evaluation.plots import Curve
from torchrl_rise.evaluation.runs import SCORE_KINDS, RunResult, collect_runs

__all__ = ["ReportResults", "SuiteResults", "compute_results"]

RUN_COLUMNS = (
    "suite",
    "task",
    "method",
    "seed",
    "score",
    "normalized",
    "final",
    "best",
    "final_success",
    "frames",
    "updates",
    "walltime_s",
    "run_dir",
)
"""Columns of :attr:`ReportResults.runs` (and of a report's ``runs.csv``)."""

logger = logging.getLogger(__name__)


@dataclass
class SuiteResults:
    """Everything a report says about one suite.

    Attributes:
        suite: the suite name.
        score: which number of a run is its score (one of :data:`SCORE_KINDS`).
        methods: the methods with runs in the suite, sorted.
        runs: one row per run (columns :data:`RUN_COLUMNS`).
        ranges: env id -> the normalisation range used (``None``: left out of the aggregates).
        tasks: the tasks in the aggregates (the columns of ``matrices``).
        matrices: method -> ``[runs, tasks]`` normalised scores.
        aggregates: method -> metric -> :class:`IntervalEstimate` (empty without normalised scores).
        improvement: ``"X > baseline"`` -> :class:`IntervalEstimate` of P(X > baseline).
        curves: method -> the aggregate learning curve (IQM over runs x tasks, CI band); empty when
            the runs' evaluations cannot be aligned.
        task_curves: task -> method -> mean over seeds of the evaluation curve (band: min, max).
        per_game: :func:`~torchrl_rise.evaluation.per_game_table` of ``score`` and ``normalized``.
        walltime: per method: ``runs``, ``walltime_h`` and ``frames_per_s`` (medians) and
            ``ratio`` (median walltime over the baseline's; NaN without a baseline).
    """

    suite: str
    score: str
    methods: list[str]
    runs: pd.DataFrame
    ranges: dict[str, ReferenceRange | None]
    tasks: list[str] = field(default_factory=list)
    matrices: dict[str, np.ndarray] = field(default_factory=dict)
    aggregates: dict[str, dict[str, IntervalEstimate]] = field(default_factory=dict)
    improvement: dict[str, IntervalEstimate] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    task_curves: dict[str, dict[str, Curve]] = field(default_factory=dict)
    per_game: pd.DataFrame = field(default_factory=pd.DataFrame)
    walltime: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def is_success(self) -> bool:
        """Whether the score is a success rate (``final_success`` / ``best_success``)."""
        return self.score.endswith("success")

    @property
    def unnormalised(self) -> list[str]:
        """Env ids without a normalisation range (left out of the aggregates)."""
        return sorted(env for env, ref in self.ranges.items() if ref is None)


@dataclass
class ReportResults:
    """The numbers behind a report: one :class:`SuiteResults` per suite, and the settings used.

    Attributes:
        suites: suite name -> its results, in sorted suite order.
        settings: ``score``, ``suite_scores``, ``metrics``, ``baseline``, ``reps``,
            ``confidence``, ``seed``.
        num_runs: how many runs went in.
        overall: the aggregates over every suite's normalised tasks together (suite
            :data:`ALL_SUITES`; tasks, matrices, aggregates, improvement, per-game table and
            walltime, no curves: budgets differ across suites), when two or more suites have
            normalised scores and every method ran on each of their tasks; else ``None``.
    """

    suites: dict[str, SuiteResults]
    settings: dict[str, Any]
    num_runs: int
    overall: SuiteResults | None = None

    @property
    def runs(self) -> pd.DataFrame:
        """One row per run, all suites (columns :data:`RUN_COLUMNS`)."""
        rows = [row for s in self.suites.values() for row in s.runs.to_dict("records")]
        return pd.DataFrame(rows, columns=list(RUN_COLUMNS))

    @property
    def aggregates(self) -> dict[str, dict[str, dict[str, IntervalEstimate]]]:
        """suite -> method -> metric -> :class:`IntervalEstimate` (suites with aggregates only;
        :data:`ALL_SUITES` for :attr:`overall`)."""
        out = {name: s.aggregates for name, s in self.suites.items() if s.aggregates}
        if self.overall is not None:
            out[ALL_SUITES] = self.overall.aggregates
        return out

    @property
    def improvement(self) -> dict[str, dict[str, IntervalEstimate]]:
        """suite -> ``"X > Y"`` -> P(X > Y) (suites with a baseline comparison only)."""
        out = {name: s.improvement for name, s in self.suites.items() if s.improvement}
        if self.overall is not None and self.overall.improvement:
            out[ALL_SUITES] = self.overall.improvement
        return out

    def to_json(self) -> dict[str, Any]:
        """The interval estimates and settings as plain JSON data (a report's ``aggregates.json``)."""
        return {
            "aggregates": {
                s: {m: {k: v._asdict() for k, v in per.items()} for m, per in est.items()}
                for s, est in self.aggregates.items()
            },
            "probability_of_improvement": {
                s: {k: v._asdict() for k, v in per.items()} for s, per in self.improvement.items()
            },
            "settings": {
                key: self.settings[key]
                for key in ("score", "suite_scores", "reps", "confidence", "seed")
            },
        }


ALL_SUITES = "all suites"
"""The suite name of :attr:`ReportResults.overall`."""


def _aggregate_into(
    out: SuiteResults,
    *,
    baseline: str | None,
    metrics: Sequence[str],
    bootstrap: Mapping[str, Any],
) -> None:
    """Fill ``out``'s matrices, tasks, aggregates and P(improvement) from its normalised runs."""
    norm_frame = out.runs.dropna(subset=["normalized"])
    if norm_frame.empty:
        return
    out.matrices, out.tasks = score_matrices(norm_frame, value="normalized")
    out.aggregates = aggregate_scores(out.matrices, metrics=metrics, **bootstrap)
    if baseline in out.matrices and len(out.matrices) > 1:
        out.improvement = {
            f"{m} > {baseline}": probability_of_improvement(
                out.matrices[m], out.matrices[baseline], **bootstrap
            )
            for m in out.matrices
            if m != baseline
        }


def _overall_results(
    suites: Mapping[str, SuiteResults],
    *,
    baseline: str | None,
    metrics: Sequence[str],
    bootstrap: Mapping[str, Any],
) -> SuiteResults | None:
    """Every suite's normalised tasks pooled into one aggregate (``None`` if not comparable)."""
    normalised = [s for s in suites.values() if s.aggregates]
    if len(normalised) < 2:
        return None
    methods = set(normalised[0].methods)
    if any(set(s.methods) != methods for s in normalised):
        return None
    rows = [r for s in normalised for r in s.runs.dropna(subset=["normalized"]).to_dict("records")]
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    frame = frame.assign(task=frame["suite"] + "/" + frame["task"])  # task ids unique per suite
    ranges = {f"{s.suite}/{env}": ref for s in normalised for env, ref in s.ranges.items()}
    kinds = sorted({s.score for s in normalised})
    out = SuiteResults(
        suite=ALL_SUITES,
        score=kinds[0] if len(kinds) == 1 else "+".join(kinds),
        methods=sorted(methods),
        runs=frame,
        ranges={k: v for k, v in ranges.items() if v is not None},
    )
    try:
        _aggregate_into(out, baseline=baseline, metrics=metrics, bootstrap=bootstrap)
    except ValueError as err:  # e.g. a method with fewer seeds on some task
        logger.warning("no aggregate over all suites: %s", err)
        return None
    out.per_game = per_game_table(out.runs, values=["score", "normalized"])
    out.walltime = _walltime(out.runs, out.methods, baseline)
    return out


def _resolve_range(
    suite: str,
    env_id: str,
    kind: str,
    observed: tuple[float, float] | None,
    *,
    ranges: Mapping[str, Any] | None,
    procgen_mode: str,
    fallback: str,
) -> ReferenceRange | None:
    if kind.endswith("success") and not (ranges and env_id in ranges):
        return ReferenceRange(0.0, 1.0, "success rate (already in [0, 1])")
    ref = reference_range(suite, env_id, ranges=ranges, procgen_mode=procgen_mode)
    if ref is not None or fallback == "none" or observed is None:
        return ref
    low, high = observed
    if not high > low:
        return None
    return ReferenceRange(low, high, "observed min-max over this report's runs (no reference)")


def _curve_matrix(
    runs: Sequence[RunResult], value_index: int, points: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Runs' evaluations on a common frame grid: ``(frames [P], values [runs, P])``."""
    usable = [r for r in runs if len(r.evaluations) >= 2]
    if len(usable) < len(runs) or not usable:
        return None
    frames = [np.array([e[0] for e in r.evaluations]) for r in usable]
    values = [np.array([e[value_index] for e in r.evaluations]) for r in usable]
    if any(np.isnan(v).any() for v in values):
        return None
    if all(f.shape == frames[0].shape and np.array_equal(f, frames[0]) for f in frames):
        return frames[0], np.stack(values)
    start, stop = max(f[0] for f in frames), min(f[-1] for f in frames)
    if not stop > start:
        return None
    grid = np.linspace(start, stop, points)
    return grid, np.stack([np.interp(grid, f, v) for f, v in zip(frames, values)])


def _suite_curves(
    runs: Sequence[RunResult],
    tasks: Sequence[str],
    env_ranges: Mapping[str, ReferenceRange | None],
    value_index: int,
    points: int,
    **bootstrap: Any,
) -> dict[str, Curve]:
    """Per method: IQM over runs x tasks of the normalised evaluation curves, with CI band."""
    per_method: dict[str, np.ndarray] = {}
    grids: dict[str, np.ndarray] = {}
    for method in sorted({r.method for r in runs}):
        columns, grid = [], None
        for task in tasks:
            task_runs = sorted(
                (r for r in runs if r.method == method and r.env_id == task), key=lambda r: r.seed
            )
            aligned = _curve_matrix(task_runs, value_index, points)
            if aligned is None:
                return {}
            frames, values = aligned
            ref = env_ranges[task]
            values = (values - ref.low) / (ref.high - ref.low)
            if grid is None:
                grid = frames
            if frames.shape != grid.shape or not np.allclose(frames, grid):
                values = np.stack([np.interp(grid, frames, v) for v in values])
            columns.append(values)
        n_runs = min(c.shape[0] for c in columns)
        per_method[method] = np.stack([c[:n_runs] for c in columns], axis=1)
        grids[method] = grid
    if not per_method:
        return {}
    agg = aggregate_curves(per_method, **bootstrap)
    return {m: Curve(grids[m], *agg[m]) for m in per_method}


def _task_curves(runs: Sequence[RunResult], value_index: int) -> dict[str, dict[str, Curve]]:
    """Per task and method: mean over seeds of the evaluation curve, band = min and max."""
    out: dict[str, dict[str, Curve]] = {}
    for task in sorted({r.env_id for r in runs}):
        for method in sorted({r.method for r in runs}):
            aligned = _curve_matrix(
                [r for r in runs if r.env_id == task and r.method == method], value_index, 20
            )
            if aligned is None:
                continue
            frames, values = aligned
            out.setdefault(task, {})[method] = Curve(
                frames, values.mean(0), values.min(0), values.max(0)
            )
    return out


def _median(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.median()) if len(values) else math.nan


def _walltime(frame: pd.DataFrame, methods: Sequence[str], baseline: str | None) -> pd.DataFrame:
    base = math.nan
    if baseline in methods:
        base = _median(frame.loc[frame["method"] == baseline, "walltime_s"])
    rows = []
    for m in methods:
        sub = frame[frame["method"] == m]
        walls = pd.to_numeric(sub["walltime_s"], errors="coerce")
        wall = _median(walls)
        fps = _median(pd.to_numeric(sub["frames"], errors="coerce") / walls)
        rows.append(
            {
                "method": m,
                "runs": len(sub),
                "walltime_h": wall / 3600,
                "frames_per_s": fps,
                "ratio": wall / base if base > 0 else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["method", "runs", "walltime_h", "frames_per_s", "ratio"])


def _run_row(suite: str, run: RunResult, raw: float | None, norm: float | None) -> dict[str, Any]:
    return {
        "suite": suite,
        "task": run.env_id,
        "method": run.method,
        "seed": run.seed,
        "score": raw,
        "normalized": norm,
        "final": run.final,
        "best": run.best,
        "final_success": run.final_success,
        "frames": run.frames,
        "updates": run.updates,
        "walltime_s": run.walltime_s,
        "run_dir": str(run.run_dir),
    }


def _suite_results(
    suite: str,
    suite_runs: Sequence[RunResult],
    kind: str,
    *,
    ranges: Mapping[str, Any] | None,
    procgen_mode: str,
    fallback: str,
    baseline: str | None,
    metrics: Sequence[str],
    curve_points: int,
    bootstrap: Mapping[str, Any],
) -> SuiteResults:
    value_index = 2 if kind.endswith("success") else 1
    env_ranges: dict[str, ReferenceRange | None] = {}
    for env_id in sorted({r.env_id for r in suite_runs}):
        env_runs = [r for r in suite_runs if r.env_id == env_id]
        seen = [r.score(kind) for r in env_runs if r.score(kind) is not None]
        seen += [e[value_index] for r in env_runs for e in r.evaluations]
        seen = [v for v in seen if not math.isnan(v)]
        observed = (min(seen), max(seen)) if seen else None
        env_ranges[env_id] = _resolve_range(
            suite,
            env_id,
            kind,
            observed,
            ranges=ranges,
            procgen_mode=procgen_mode,
            fallback=fallback,
        )
    rows = []
    for r in suite_runs:
        raw, ref = r.score(kind), env_ranges[r.env_id]
        norm = (raw - ref.low) / (ref.high - ref.low) if ref and raw is not None else None
        rows.append(_run_row(suite, r, raw, norm))
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    methods = sorted({r.method for r in suite_runs})
    out = SuiteResults(suite=suite, score=kind, methods=methods, runs=frame, ranges=env_ranges)

    _aggregate_into(out, baseline=baseline, metrics=metrics, bootstrap=bootstrap)
    if out.aggregates:
        out.curves = _suite_curves(
            [
                r
                for r in suite_runs
                if env_ranges.get(r.env_id) is not None and r.env_id in out.tasks
            ],
            out.tasks,
            env_ranges,
            value_index,
            curve_points,
            **bootstrap,
        )
    out.per_game = per_game_table(frame, values=["score", "normalized"])
    out.task_curves = _task_curves(suite_runs, value_index)
    out.walltime = _walltime(frame, methods, baseline)
    return out


def _check_score_options(
    score: str, *, suite_scores: Mapping[str, str] | None, fallback: str
) -> None:
    """Raise ``ValueError`` for a score kind or fallback :func:`compute_results` does not know."""
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}.")
    for suite_name, kind in (suite_scores or {}).items():
        if kind not in SCORE_KINDS:
            raise ValueError(
                f"suite_scores[{suite_name!r}] must be one of {SCORE_KINDS}, got {kind!r}."
            )
    if fallback not in ("observed", "none"):
        raise ValueError(f"fallback must be 'observed' or 'none', got {fallback!r}.")


def _finished_runs(runs: Sequence[RunResult] | str | Path) -> Sequence[RunResult]:
    """``runs``, collected first when it is a directory; ``ValueError`` when there is none."""
    if isinstance(runs, (str, Path)):
        runs = collect_runs(runs)
    if not runs:
        raise ValueError(
            "no finished runs to report on (a run is finished when its summary.json has "
            "status 'finished' and a final score)."
        )
    return runs


def compute_results(
    runs: Sequence[RunResult] | str | Path,
    *,
    score: str = "final",
    suite_scores: Mapping[str, str] | None = None,
    ranges: Mapping[str, Any] | None = None,
    procgen_mode: str = "easy",
    fallback: str = "observed",
    baseline: str | None = "btr",
    metrics: Sequence[str] = ("median", "iqm", "mean", "optimality_gap"),
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    curve_points: int = 20,
) -> ReportResults:
    """Normalise, aggregate and tabulate runs per suite; nothing is written.

    The options are those of :func:`~torchrl_rise.evaluation.build_report` (which calls this and
    renders the result).

    Raises:
        ValueError: no complete run, or a bad option.

    Example:
        >>> import json, tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for method, final in [("rise", 10.0), ("btr", -5.0)]:
        ...     for seed in range(2):
        ...         d = root / method / str(seed)
        ...         d.mkdir(parents=True)
        ...         _ = (d / "summary.json").write_text(json.dumps({
        ...             "status": "finished", "method": method, "suite": "atari",
        ...             "env_id": "Pong", "seed": seed, "scores": {"final": {"mean": final}}}))
        >>> res = compute_results(root, reps=200)
        >>> atari = res.suites["atari"]
        >>> atari.tasks, atari.matrices["rise"].shape, round(atari.aggregates["rise"]["iqm"].point, 3)
        (['Pong'], (2, 1), 0.87)
        >>> atari.improvement["rise > btr"].point
        1.0
    """
    _check_score_options(score, suite_scores=suite_scores, fallback=fallback)
    runs = _finished_runs(runs)
    bootstrap = dict(reps=reps, confidence=confidence, seed=seed)
    suites = {
        suite: _suite_results(
            suite,
            [r for r in runs if r.suite == suite],
            (suite_scores or {}).get(suite, score),
            ranges=ranges,
            procgen_mode=procgen_mode,
            fallback=fallback,
            baseline=baseline,
            metrics=metrics,
            curve_points=curve_points,
            bootstrap=bootstrap,
        )
        for suite in sorted({r.suite for r in runs})
    }
    settings = {
        "score": score,
        "suite_scores": dict(suite_scores or {}),
        "metrics": list(metrics),
        "baseline": baseline,
        **bootstrap,
    }
    overall = _overall_results(suites, baseline=baseline, metrics=metrics, bootstrap=bootstrap)
    return ReportResults(suites=suites, settings=settings, num_runs=len(runs), overall=overall)
