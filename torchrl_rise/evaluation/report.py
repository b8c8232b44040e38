"""Render a report's numbers: markdown, PNG plots, ``runs.csv`` and ``aggregates.json``.

The numbers come from :func:`~torchrl_rise.evaluation.results.compute_results` (runs ->
:class:`~torchrl_rise.evaluation.results.ReportResults`); this module only presents them:
:func:`write_figures` draws the plots, :func:`render_markdown` writes the text, and
:func:`build_report` does all of it from run directories. Reading runs lives in
:mod:`~torchrl_rise.evaluation.runs` (re-exported here).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from torchrl_rise.evaluation.aggregate import IntervalEstimate
from torchrl_rise.evaluation.plots import (
    plot_interval_estimates,
    plot_learning_curves,
    plot_task_curves,
)
from torchrl_rise.evaluation.results import (
    ALL_SUITES,
    ReportResults,
    SuiteResults,
    compute_results,
)
from torchrl_rise.evaluation.runs import (
    CELL_FILE,
    SCORE_KINDS,
    RunResult,
    collect_runs,
    is_run_complete,
    load_run,
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
    "render_markdown",
    "write_figures",
]

logger = logging.getLogger(__name__)

FIGURE_KINDS = ("aggregate", "learning_curves", "per_game")
"""The plots drawn per suite, named ``<suite>_<kind>.png``."""


@dataclass
class Report:
    """What :func:`build_report` wrote, and the numbers behind it.

    Attributes:
        markdown: path of ``report.md``.
        figures: paths of the PNG plots.
        runs: one row per run (cell, raw and normalised score, walltime).
        aggregates: suite -> method -> metric -> :class:`IntervalEstimate`.
        improvement: suite -> ``"X > Y"`` -> :class:`IntervalEstimate` of P(X > Y).
        results: everything computed (:class:`~torchrl_rise.evaluation.results.ReportResults`).
    """

    markdown: Path
    figures: list[Path]
    runs: pd.DataFrame
    aggregates: dict[str, dict[str, dict[str, IntervalEstimate]]]
    improvement: dict[str, dict[str, IntervalEstimate]]
    results: ReportResults | None = None


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


def write_figures(results: ReportResults, out_dir: str | Path) -> dict[str, dict[str, Path]]:
    """Draw each suite's plots into ``out_dir`` (those its numbers allow).

    Returns:
        suite -> kind (:data:`FIGURE_KINDS`) -> PNG path.
    """
    out_dir = Path(out_dir)
    metrics = results.settings["metrics"]
    figures: dict[str, dict[str, Path]] = {}
    if results.overall is not None:
        figures[ALL_SUITES] = {
            "aggregate": plot_interval_estimates(
                results.overall.aggregates,
                out_dir / "all_suites_aggregate.png",
                metrics=metrics,
                title=f"all suites: aggregate normalised score ({len(results.overall.tasks)} tasks)",
            )
        }
    for name, s in results.suites.items():
        made = figures.setdefault(name, {})
        if s.aggregates:
            made["aggregate"] = plot_interval_estimates(
                s.aggregates,
                out_dir / f"{name}_aggregate.png",
                metrics=metrics,
                title=f"{name}: aggregate normalised score ({len(s.tasks)} tasks)",
            )
        if s.curves:
            made["learning_curves"] = plot_learning_curves(
                s.curves,
                out_dir / f"{name}_learning_curves.png",
                title=f"{name}: IQM of normalised {('success' if s.is_success else 'score')}",
                ylabel="IQM normalised score",
            )
        if s.task_curves:
            made["per_game"] = plot_task_curves(
                s.task_curves,
                out_dir / f"{name}_per_game.png",
                title=f"{name}: mean over seeds (band: min-max)",
                ylabel="success rate" if s.is_success else "return",
            )
    return figures


def _suite_markdown(
    s: SuiteResults, figures: Mapping[str, Path], metrics: Sequence[str], baseline: str | None
) -> list[str]:
    def image(kind: str, alt: str) -> list[str]:
        return [f"![{s.suite} {alt}]({Path(figures[kind]).name})", ""] if kind in figures else []

    md = [f"## {s.suite}", "", f"Score: `{s.score}` ({len(s.runs)} runs).", ""]
    sources = sorted({ref.source for ref in s.ranges.values() if ref is not None})
    md += ["Normalisation: " + ("; ".join(sources) if sources else "none available") + "."]
    if s.unnormalised:
        md += [
            f"No normalisation range for {', '.join(s.unnormalised)}: left out of the aggregates"
            " (give `ranges` to include them)."
        ]
    md += [""]
    if s.aggregates:
        rows = [
            [
                m,
                *(s.aggregates[m][k].format() for k in metrics),
                "x".join(map(str, s.matrices[m].shape)),
            ]
            for m in s.aggregates
        ]
        md += [
            f"### Aggregate normalised score ({len(s.tasks)} tasks)",
            "",
            _md_table(["method", *metrics, "runs x tasks"], rows),
            "",
            *image("aggregate", "aggregates"),
        ]
        if s.improvement:
            md += [
                "Probability of improvement over "
                f"`{baseline}` (P(a run of X beats a run of {baseline}), averaged over tasks):",
                "",
                _md_table(
                    ["comparison", "P(X > Y)"], [[k, v.format()] for k, v in s.improvement.items()]
                ),
                "",
            ]
        md += image("learning_curves", "learning curves")
    md += ["### Per game", ""]
    md += [
        _md_table(
            ["task", "method", "runs", f"{s.score} (mean ± std)", "normalised (mean ± std)"],
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
                for (task, method), row in s.per_game.iterrows()
            ],
        ),
        "",
        *image("per_game", "per game"),
    ]
    walltime = _md_table(
        ["method", "runs", "median walltime (h)", "median frames/s", f"walltime / {baseline}"],
        [
            [r.method, r.runs, _fmt(r.walltime_h), _fmt(r.frames_per_s), _fmt(r.ratio)]
            for r in s.walltime.itertuples()
        ],
    )
    md += ["### Walltime", "", walltime, ""]
    return md


def render_markdown(
    results: ReportResults,
    *,
    title: str = "Benchmark report",
    figures: Mapping[str, Mapping[str, str | Path]] | None = None,
    missing: Sequence[str] = (),
) -> str:
    """The report's markdown: per suite, normalisation, aggregates, P(X > baseline), tables.

    Args:
        results: from :func:`~torchrl_rise.evaluation.results.compute_results`.

    Keyword Args:
        title: the top heading.
        figures: suite -> kind -> image path (from :func:`write_figures`); linked by file name,
            so the markdown is meant to sit next to them. Without it, no images.
        missing: descriptions of expected runs that did not finish, listed first.

    Example:
        >>> from pathlib import Path
        >>> runs = [RunResult(Path("."), "rise", "vizdoom", "basic", seed, final=float(seed))
        ...         for seed in range(3)]
        >>> text = render_markdown(compute_results(runs, reps=100), title="ViZDoom")
        >>> print(text.splitlines()[0]); "### Aggregate normalised score (1 tasks)" in text
        # ViZDoom
        True
    """
    settings = results.settings
    reps, confidence = settings.get("reps", "?"), settings.get("confidence", math.nan)
    md = [
        f"# {title}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {results.num_runs} finished runs. "
        "Aggregates are over runs x tasks of normalised scores with "
        f"{int(confidence * 100) if confidence == confidence else '?'}% stratified-bootstrap "
        f"confidence intervals ({reps} replications, rliable).",
        "",
    ]
    if missing:
        md += [f"**{len(missing)} expected runs did not finish** (left out):", ""]
        md += [f"- {m}" for m in missing] + [""]
    if results.overall is not None:
        md += _suite_markdown(
            results.overall,
            {k: Path(v) for k, v in (figures or {}).get(ALL_SUITES, {}).items()},
            settings.get("metrics", []),
            settings.get("baseline"),
        )
    for name, suite in results.suites.items():
        md += _suite_markdown(
            suite,
            {k: Path(v) for k, v in (figures or {}).get(name, {}).items()},
            settings.get("metrics", []),
            settings.get("baseline"),
        )
    return "\n".join(md).rstrip() + "\n"


def _relative_to(path: str, base: Path) -> str:
    resolved = Path(path).expanduser().resolve()
    return str(resolved.relative_to(base)) if resolved.is_relative_to(base) else str(path)


def _write_report(
    results: ReportResults,
    out_dir: str | Path,
    *,
    title: str,
    missing: Sequence[str],
    root: str | Path | None,
) -> Report:
    """Write the figures, ``runs.csv``, ``aggregates.json`` and ``report.md`` of ``results``.

    ``runs.csv`` names run directories relative to ``root`` when it is set (see
    :func:`build_report`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(results, out_dir)
    runs_frame = results.runs
    if root is not None:
        base = Path(root).expanduser().resolve()
        runs_frame = runs_frame.assign(
            run_dir=[_relative_to(p, base) for p in runs_frame["run_dir"]]
        )
    runs_frame.to_csv(out_dir / "runs.csv", index=False)
    (out_dir / "aggregates.json").write_text(json.dumps(results.to_json(), indent=2) + "\n")
    markdown = out_dir / "report.md"
    markdown.write_text(render_markdown(results, title=title, figures=figures, missing=missing))
    paths = [p for per in figures.values() for p in per.values()]
    logger.info("wrote %s with %d figures", markdown, len(paths))
    return Report(
        markdown, paths, runs_frame, results.aggregates, results.improvement, results=results
    )


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
    root: str | Path | None = None,
) -> Report:
    """Aggregate runs into ``out_dir/report.md`` with per-suite tables and PNG plots.

    :func:`~torchrl_rise.evaluation.results.compute_results` computes the numbers (per suite:
    normalised scores, aggregate median / IQM / mean / optimality gap with stratified-bootstrap
    CIs from rliable, P(method > baseline), the aggregate learning curve, per-game tables and
    curves, walltime and throughput per method); :func:`write_figures` and
    :func:`render_markdown` present them.

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
        root: if set, ``runs.csv`` names each run directory relative to it (a grid's output
            directory), so the file holds no machine's path.

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
    results = compute_results(
        runs,
        score=score,
        suite_scores=suite_scores,
        ranges=ranges,
        procgen_mode=procgen_mode,
        fallback=fallback,
        baseline=baseline,
        metrics=metrics,
        reps=reps,
        confidence=confidence,
        seed=seed,
        curve_points=curve_points,
    )
    return _write_report(results, out_dir, title=title, missing=missing, root=root)
