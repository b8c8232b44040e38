"""Collect training runs (``summary.json`` + ``eval.csv``) into a markdown report with PNG plots.

Each run directory written by :func:`torchrl_rise.training.train` holds ``summary.json`` (schema in
``docs/training.md``) and ``eval.csv``. :func:`collect_runs` finds and reads them (tolerating missing
optional fields), :func:`build_report` normalises the scores per suite, aggregates them with
stratified-bootstrap CIs and writes ``report.md``, ``runs.csv``, ``aggregates.json`` and the plots.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
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
from torchrl_rise.evaluation.plots import (
    Curve,
    plot_interval_estimates,
    plot_learning_curves,
    plot_task_curves,
)

__all__ = [
    "CELL_FILE",
    "SCORE_KINDS",
    "Report",
    "RunResult",
    "build_report",
    "collect_runs",
    "is_run_complete",
    "load_run",
]

logger = logging.getLogger(__name__)

CELL_FILE = "benchmark_cell.json"
"""Written by ``recipes/benchmark.py`` into each run dir: the grid cell (suite, env, method, seed),
used when a run's ``summary.json`` lacks those fields."""

SCORE_KINDS = ("final", "best", "final_success", "best_success")
"""Which number of a run is its score: the final or best evaluation's mean return, or success rate."""


@dataclass
class RunResult:
    """What a report needs from one training run.

    Attributes:
        run_dir: the run directory.
        method / suite / env_id / seed: the grid cell.
        final / best: mean return of the final and the best evaluation (``None`` if absent).
        final_success / best_success: success rates, for envs that report success.
        evaluations: ``(frames, mean return, success rate or NaN)`` per evaluation, by frames.
        frames / updates / walltime_s: the run's counters (``None`` if absent).
        status: ``summary.json``'s status (``"finished"``, ``"interrupted"``) or ``None``.
        encoder: the frozen encoder's description, if any.
    """

    run_dir: Path
    method: str
    suite: str
    env_id: str
    seed: int
    final: float | None = None
    best: float | None = None
    final_success: float | None = None
    best_success: float | None = None
    evaluations: list[tuple[float, float, float]] = field(default_factory=list)
    frames: float | None = None
    updates: float | None = None
    walltime_s: float | None = None
    status: str | None = None
    encoder: Mapping[str, Any] | None = None

    def score(self, kind: str = "final") -> float | None:
        """The run's score of the given kind (one of :data:`SCORE_KINDS`)."""
        if kind not in SCORE_KINDS:
            raise ValueError(f"unknown score kind {kind!r}; choose from {SCORE_KINDS}.")
        return getattr(self, kind)


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_run_complete(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run: ``summary.json`` parses, is not marked interrupted
    and has a final score. Grids use it to skip finished runs when they resume.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> is_run_complete(d)
        False
        >>> _ = (d / "summary.json").write_text('{"status": "finished", "scores": {"final": {"mean": 1}}}')
        >>> is_run_complete(d)
        True
    """
    summary = _read_json(Path(run_dir) / "summary.json")
    if summary is None:
        return False
    if summary.get("status", "finished") != "finished":
        return False
    final = (summary.get("scores") or {}).get("final")
    return isinstance(final, Mapping) and _num(final.get("mean")) is not None


def _read_eval_csv(path: Path) -> list[tuple[float, float, float]]:
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            frames = _num(row.get("frames"))
            mean = _num(row.get("mean", row.get("mean_return")))
            if frames is None or mean is None:
                continue
            success = _num(row.get("success_rate"))
            rows.append((frames, mean, math.nan if success is None else success))
    return rows


def load_run(run_dir: str | Path, *, defaults: Mapping[str, Any] | None = None) -> RunResult:
    """Read one run directory.

    Cell fields (method, suite, env_id, seed) come from ``summary.json``, else from
    ``benchmark_cell.json``, else from ``defaults``. Evaluations come from the summary, else from
    ``eval.csv``; final/best scores fall back to the last/best evaluation.

    Raises:
        FileNotFoundError: the directory has neither ``summary.json`` nor ``eval.csv``.
        ValueError: the cell fields cannot be determined.
    """
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / "summary.json") or {}
    cell = _read_json(run_dir / CELL_FILE) or {}
    evals_csv = _read_eval_csv(run_dir / "eval.csv")
    if not summary and not evals_csv:
        raise FileNotFoundError(f"{run_dir} has no summary.json or eval.csv: not a run directory.")
    fields: dict[str, Any] = {}
    for key in ("method", "suite", "env_id", "seed"):
        value = summary.get(key)
        if value is None:
            value = cell.get(key, (defaults or {}).get(key))
        if value is None:
            raise ValueError(
                f"cannot tell the {key!r} of the run in {run_dir}: summary.json lacks it and no "
                f"{CELL_FILE} or defaults give it."
            )
        fields[key] = value
    scores = summary.get("scores") or {}
    evaluations = []
    for e in scores.get("evaluations") or []:
        frames, mean = _num(e.get("frames")), _num(e.get("mean"))
        if frames is not None and mean is not None:
            success = _num(e.get("success_rate"))
            evaluations.append((frames, mean, math.nan if success is None else success))
    if not evaluations:
        evaluations = evals_csv
    evaluations.sort(key=lambda row: row[0])
    final = _num((scores.get("final") or {}).get("mean"))
    best = _num((scores.get("best") or {}).get("mean"))
    if final is None and evaluations:
        final = evaluations[-1][1]
    if best is None and evaluations:
        best = max(e[1] for e in evaluations)
    success = summary.get("success")
    successes = [e[2] for e in evaluations if not math.isnan(e[2])]
    if isinstance(success, Mapping):
        final_success, best_success = _num(success.get("final")), _num(success.get("best"))
    else:  # a bare number, or absent
        final_success = best_success = _num(success)
    if final_success is None and successes:
        final_success = successes[-1]
    if best_success is None and successes:
        best_success = max(successes)
    return RunResult(
        run_dir=run_dir,
        method=str(fields["method"]),
        suite=str(fields["suite"]),
        env_id=str(fields["env_id"]),
        seed=int(fields["seed"]),
        final=final,
        best=best,
        final_success=final_success,
        best_success=best_success,
        evaluations=evaluations,
        frames=_num(summary.get("frames")) or (evaluations[-1][0] if evaluations else None),
        updates=_num(summary.get("updates")),
        walltime_s=_num(summary.get("walltime_s")),
        status=summary.get("status"),
        encoder=summary.get("encoder"),
    )


def collect_runs(root: str | Path, *, include_incomplete: bool = False) -> list[RunResult]:
    """Every run under ``root`` (any directory holding ``summary.json``), sorted by cell.

    Unreadable runs are logged and skipped; incomplete ones (see :func:`is_run_complete`) are
    skipped unless ``include_incomplete``.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no runs directory {root}.")
    runs = []
    for summary in sorted(root.rglob("summary.json")):
        if not include_incomplete and not is_run_complete(summary.parent):
            logger.info("skipping incomplete run %s", summary.parent)
            continue
        try:
            runs.append(load_run(summary.parent))
        except (OSError, ValueError) as err:
            logger.warning("skipping unreadable run %s: %s", summary.parent, err)
    return sorted(runs, key=lambda r: (r.suite, r.env_id, r.method, r.seed))


@dataclass
class Report:
    """What :func:`build_report` wrote, and the numbers behind it.

    Attributes:
        markdown: path of ``report.md``.
        figures: paths of the PNG plots.
        runs: one row per run (cell, raw and normalised score, walltime).
        aggregates: suite -> method -> metric -> :class:`IntervalEstimate`.
        improvement: suite -> ``"X > Y"`` -> :class:`IntervalEstimate` of P(X > Y).
    """

    markdown: Path
    figures: list[Path]
    runs: pd.DataFrame
    aggregates: dict[str, dict[str, dict[str, IntervalEstimate]]]
    improvement: dict[str, dict[str, IntervalEstimate]]


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"


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


def build_report(
    runs: Sequence[RunResult] | str | Path,
    out_dir: str | Path,
    *,
    title: str = "Benchmark report",
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
    missing: Sequence[str] = (),
) -> Report:
    """Aggregate runs into ``out_dir/report.md`` with per-suite tables and PNG plots.

    Per suite: the normalisation used, aggregate median / IQM / mean / optimality gap of the
    normalised scores with stratified-bootstrap CIs (rliable), P(method > baseline), the aggregate
    learning curve (IQM over runs x tasks at each evaluation, with CI band), per-game tables and
    curves, and walltime / throughput per method.

    Args:
        runs: :class:`RunResult` list, or a directory to :func:`collect_runs` from.
        out_dir: where ``report.md``, ``runs.csv``, ``aggregates.json`` and the PNGs go.
        score: which number is a run's score (:data:`SCORE_KINDS`); ``"final"`` by default
            (rliable's recommendation; BTR's paper reports ``"best"``).
        suite_scores: per-suite override of ``score``, e.g. ``{"memory": "final_success"}``.
        ranges: ``{env_id: (low, high)}`` normalisation ranges, winning over the built-in tables.
        procgen_mode: ``"easy"`` or ``"hard"`` Procgen normalisation constants.
        fallback: for games without a reference range: ``"observed"`` (min-max over the report's
            own runs, flagged in the report) or ``"none"`` (left out of the aggregates).
        baseline: the method the others are compared with (ignored if absent).
        metrics: aggregate metrics (see :data:`~torchrl_rise.evaluation.aggregate.METRICS`).
        reps / confidence / seed: bootstrap settings.
        curve_points: grid size when runs' evaluations are at different frames.
        missing: descriptions of expected runs that did not finish, listed in the report.

    Raises:
        ValueError: no complete run, or a bad option.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for method, final in [("rise", 10.0), ("btr", -5.0)]:
        ...     for seed in range(2):
        ...         d = root / method / str(seed)
        ...         d.mkdir(parents=True)
        ...         _ = (d / "summary.json").write_text(json.dumps({
        ...             "status": "finished", "method": method, "suite": "atari",
        ...             "env_id": "Pong", "seed": seed, "walltime_s": 60.0, "frames": 1e5,
        ...             "scores": {"final": {"mean": final + seed}, "evaluations": [
        ...                 {"frames": 5e4, "mean": -20.0}, {"frames": 1e5, "mean": final + seed}]}}))
        >>> rep = build_report(root, root / "report", reps=200)
        >>> round(rep.aggregates["atari"]["rise"]["iqm"].point, 3)  # (10.5 + 20.7) / 35.3
        0.884
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}.")
    for suite_name, kind in (suite_scores or {}).items():
        if kind not in SCORE_KINDS:
            raise ValueError(
                f"suite_scores[{suite_name!r}] must be one of {SCORE_KINDS}, got {kind!r}."
            )
    if fallback not in ("observed", "none"):
        raise ValueError(f"fallback must be 'observed' or 'none', got {fallback!r}.")
    if isinstance(runs, (str, Path)):
        runs = collect_runs(runs)
    if not runs:
        raise ValueError(
            "no finished runs to report on (a run is finished when its summary.json has "
            "status 'finished' and a final score)."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    rows: list[dict[str, Any]] = []
    aggregates: dict[str, dict[str, dict[str, IntervalEstimate]]] = {}
    improvement: dict[str, dict[str, IntervalEstimate]] = {}
    md = [
        f"# {title}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(runs)} finished runs. Aggregates "
        f"are over runs x tasks of normalised scores with {int(confidence * 100)}% stratified-"
        f"bootstrap confidence intervals ({reps} replications, rliable).",
        "",
    ]
    if missing:
        md += [f"**{len(missing)} expected runs did not finish** (left out):", ""]
        md += [f"- {m}" for m in missing] + [""]

    for suite in sorted({r.suite for r in runs}):
        suite_runs = [r for r in runs if r.suite == suite]
        kind = (suite_scores or {}).get(suite, score)
        is_success = kind.endswith("success")
        value_index = 2 if is_success else 1
        methods = sorted({r.method for r in suite_runs})
        md += [f"## {suite}", "", f"Score: `{kind}` ({len(suite_runs)} runs).", ""]

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
        for r in suite_runs:
            raw = r.score(kind)
            ref = env_ranges[r.env_id]
            norm = (raw - ref.low) / (ref.high - ref.low) if ref and raw is not None else None
            rows.append(
                {
                    "suite": suite,
                    "task": r.env_id,
                    "method": r.method,
                    "seed": r.seed,
                    "score": raw,
                    "normalized": norm,
                    "final": r.final,
                    "best": r.best,
                    "final_success": r.final_success,
                    "frames": r.frames,
                    "updates": r.updates,
                    "walltime_s": r.walltime_s,
                    "run_dir": str(r.run_dir),
                }
            )
        frame = pd.DataFrame([row for row in rows if row["suite"] == suite])

        sources = sorted({ref.source for ref in env_ranges.values() if ref is not None})
        md += ["Normalisation: " + ("; ".join(sources) if sources else "none available") + "."]
        unnormalised = sorted(e for e, ref in env_ranges.items() if ref is None)
        if unnormalised:
            md += [
                f"No normalisation range for {', '.join(unnormalised)}: left out of the aggregates"
                " (give `ranges` to include them)."
            ]
        md += [""]

        norm_frame = frame.dropna(subset=["normalized"])
        if not norm_frame.empty:
            mats, tasks = score_matrices(norm_frame, value="normalized")
            est = aggregate_scores(
                mats, metrics=metrics, reps=reps, confidence=confidence, seed=seed
            )
            aggregates[suite] = est
            header = ["method", *metrics, "runs x tasks"]
            md += [
                f"### Aggregate normalised score ({len(tasks)} tasks)",
                "",
                _md_table(
                    header,
                    [
                        [
                            m,
                            *(est[m][k].format() for k in metrics),
                            "x".join(map(str, mats[m].shape)),
                        ]
                        for m in est
                    ],
                ),
                "",
            ]
            fig = plot_interval_estimates(
                est,
                out_dir / f"{suite}_aggregate.png",
                metrics=metrics,
                title=f"{suite}: aggregate normalised score ({len(tasks)} tasks)",
            )
            figures.append(fig)
            md += [f"![{suite} aggregates]({fig.name})", ""]
            if baseline in mats and len(mats) > 1:
                improvement[suite] = {
                    f"{m} > {baseline}": probability_of_improvement(
                        mats[m], mats[baseline], reps=reps, confidence=confidence, seed=seed
                    )
                    for m in mats
                    if m != baseline
                }
                md += [
                    "Probability of improvement over "
                    f"`{baseline}` (P(a run of X beats a run of {baseline}), averaged over tasks):",
                    "",
                    _md_table(
                        ["comparison", "P(X > Y)"],
                        [[k, v.format()] for k, v in improvement[suite].items()],
                    ),
                    "",
                ]

            curves = _suite_curves(
                [
                    r
                    for r in suite_runs
                    if env_ranges.get(r.env_id) is not None and r.env_id in tasks
                ],
                tasks,
                env_ranges,
                value_index,
                curve_points,
                reps=reps,
                confidence=confidence,
                seed=seed,
            )
            if curves:
                fig = plot_learning_curves(
                    curves,
                    out_dir / f"{suite}_learning_curves.png",
                    title=f"{suite}: IQM of normalised {('success' if is_success else 'score')}",
                    ylabel="IQM normalised score",
                )
                figures.append(fig)
                md += [f"![{suite} learning curves]({fig.name})", ""]

        md += ["### Per game", ""]
        table = per_game_table(frame, values=["score", "normalized"])
        md += [
            _md_table(
                ["task", "method", "runs", f"{kind} (mean ± std)", "normalised (mean ± std)"],
                [
                    [
                        task,
                        method,
                        int(row["runs"]),
                        f"{_fmt(row['score_mean'])} ± {_fmt(row['score_std'])}",
                        f"{_fmt(row['normalized_mean'])} ± {_fmt(row['normalized_std'])}"
                        if not math.isnan(row["normalized_mean"])
                        else "-",
                    ]
                    for (task, method), row in table.iterrows()
                ],
            ),
            "",
        ]
        task_curves = _task_curves(suite_runs, value_index)
        if task_curves:
            fig = plot_task_curves(
                task_curves,
                out_dir / f"{suite}_per_game.png",
                title=f"{suite}: mean over seeds (band: min-max)",
                ylabel="success rate" if is_success else "return",
            )
            figures.append(fig)
            md += [f"![{suite} per game]({fig.name})", ""]

        md += ["### Walltime", "", _walltime_table(frame, methods, baseline), ""]

    runs_frame = pd.DataFrame(rows)
    runs_frame.to_csv(out_dir / "runs.csv", index=False)
    (out_dir / "aggregates.json").write_text(
        json.dumps(
            {
                "aggregates": {
                    s: {m: {k: v._asdict() for k, v in per.items()} for m, per in est.items()}
                    for s, est in aggregates.items()
                },
                "probability_of_improvement": {
                    s: {k: v._asdict() for k, v in per.items()} for s, per in improvement.items()
                },
                "settings": {
                    "score": score,
                    "suite_scores": dict(suite_scores or {}),
                    "reps": reps,
                    "confidence": confidence,
                    "seed": seed,
                },
            },
            indent=2,
        )
        + "\n"
    )
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(md).rstrip() + "\n")
    logger.info("wrote %s with %d figures", markdown, len(figures))
    return Report(markdown, figures, runs_frame, aggregates, improvement)


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


def _walltime_table(frame: pd.DataFrame, methods: Sequence[str], baseline: str | None) -> str:
    base = math.nan
    if baseline in methods:
        base = _median(frame.loc[frame["method"] == baseline, "walltime_s"])
    rows = []
    for m in methods:
        sub = frame[frame["method"] == m]
        walls = pd.to_numeric(sub["walltime_s"], errors="coerce")
        wall = _median(walls)
        fps = _median(pd.to_numeric(sub["frames"], errors="coerce") / walls)
        ratio = wall / base if base > 0 else math.nan
        rows.append([m, len(sub), _fmt(wall / 3600), _fmt(fps), _fmt(ratio)])
    return _md_table(
        ["method", "runs", "median walltime (h)", "median frames/s", f"walltime / {baseline}"], rows
    )
