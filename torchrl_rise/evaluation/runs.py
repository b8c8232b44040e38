"""Read training runs: ``summary.json`` + ``eval.csv`` -> :class:`RunResult`.

Each run directory written by :func:`torchrl_rise.training.train` holds ``summary.json`` (schema in
``docs/training.md``) and ``eval.csv``. :func:`load_run` reads one (tolerating missing optional
fields), :func:`collect_runs` every finished run under a directory, and :func:`is_run_complete`
tells finished runs from interrupted ones (grids use it to resume).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CELL_FILE",
    "EXPORTED_FILES",
    "SCORE_KINDS",
    "RunResult",
    "collect_runs",
    "export_run",
    "is_run_complete",
    "load_run",
]

logger = logging.getLogger(__name__)

CELL_FILE = "benchmark_cell.json"
"""Written by ``recipes/benchmark.py`` into each run dir: the grid cell (suite, env, method, seed),
used when a run's ``summary.json`` lacks those fields."""

EXPORTED_FILES = ("summary.json", "eval.csv", CELL_FILE)
"""What :func:`export_run` keeps of a run: everything a report reads, nothing machine-specific."""

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


def _relative_paths(value: Any, root: str) -> Any:
    """``value`` with every string under the directory ``root`` made relative to it."""
    if isinstance(value, Mapping):
        return {k: _relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, root) for v in value]
    if isinstance(value, str) and (value == root or value.startswith(root + "/")):
        return value[len(root) :].lstrip("/") or "."
    return value


def export_run(run_dir: str | Path, dest: str | Path, *, root: str | Path) -> Path:
    """Copy a finished run's result files (:data:`EXPORTED_FILES`) to ``dest``, paths made relative.

    A grid's results are committed this way, one run as it lands: a report rebuilt from the
    copies (``load_run``/``collect_runs`` on ``dest``'s tree) gives the same numbers, and every path
    in ``summary.json`` that lay under ``root`` (the grid's output directory) is written relative
    to it, so no machine's directory enters the repository. Each file is written atomically and
    ``summary.json`` last, so an interrupted export never looks finished.

    Args:
        run_dir: the finished run directory.
        dest: where the copies go (created).
        root: the directory the run's paths are made relative to.

    Returns:
        ``dest``.

    Raises:
        ValueError: ``run_dir`` is not a finished run.

    Example:
        >>> import json, pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> run = root / "runs" / "a"
        >>> run.mkdir(parents=True)
        >>> _ = (run / "summary.json").write_text(json.dumps({"status": "finished",
        ...     "run_dir": str(run), "scores": {"final": {"mean": 1.0}}}))
        >>> out = export_run(run, root / "docs" / "a", root=root)
        >>> json.loads((out / "summary.json").read_text())["run_dir"]
        'runs/a'
    """
    from torchrl_rise._fileio import write_atomic

    run_dir, dest = Path(run_dir), Path(dest)
    if not is_run_complete(run_dir):
        raise ValueError(
            f"{run_dir} is not a finished run (no finished summary.json): nothing to export."
        )
    root_str = str(Path(root).expanduser().resolve())
    dest.mkdir(parents=True, exist_ok=True)
    for name in EXPORTED_FILES[::-1]:  # summary.json last
        src = run_dir / name
        if not src.exists():
            continue
        if name.endswith(".json"):
            data = _relative_paths(json.loads(src.read_text()), root_str)
            write_atomic(dest / name, (json.dumps(data, indent=2) + "\n").encode())
        else:
            write_atomic(dest / name, src.read_bytes())
    return dest


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
