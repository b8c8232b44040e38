"""The run's ``summary.json``: config, encoder, versions, scores, frames and walltime.

Schema (documented in ``docs/training.md``)::

    {"status": "finished" | "interrupted" | "failed", "reason": str | null, "config": {...}, "method", "suite", "env_id", "seed",
     "run_dir", "encoder": {"name", "weights_source", "embedding_dim"} | null,
     "versions": {"torchrl_rise", "torch", "torchrl", "tensordict", "python"},
     "frames", "updates", "episodes", "walltime_s",
     "scores": {"final": {"mean", "std", "episodes": [...]} | null,
                "best": {"frames", "mean", "std", "n"} | null,
                "evaluations": [{"frames", "mean", "std", "n"}, ...]},
     "success": {"final": float, "best": float} (only if the env reports success)}
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchrl_rise._fileio import write_atomic

__all__ = ["library_versions", "make_summary", "write_summary"]


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import tensordict
    import torch
    import torchrl

    import torchrl_rise

    return {
        "torchrl_rise": torchrl_rise.__version__,
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "python": platform.python_version(),
    }


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, numbers to Python types."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):
        try:
            return _clean(value.item())
        except (ValueError, RuntimeError):
            return str(value)
    return value


def make_summary(
    *,
    config: Mapping[str, Any],
    run_dir: str | Path,
    encoder: Mapping[str, Any] | None,
    frames: int,
    updates: int,
    episodes: int,
    walltime_s: float,
    evaluations: Sequence[Mapping[str, Any]],
    final: Mapping[str, Any] | None,
    status: str = "finished",
    reason: str | None = None,
) -> dict[str, Any]:
    """Assemble the summary dict.

    Args:
        config: the resolved config (plain dicts).
        run_dir: the run directory.
        encoder: ``{"name", "weights_source", "embedding_dim"}`` or ``None`` (BTR).
        frames / updates / episodes / walltime_s: the run's counters.
        evaluations: one ``{"frames", "mean", "std", "n", ...}`` per evaluation.
        final: the last evaluation with its per-episode scores (``"episodes"``), or ``None``.
        status: ``"finished"`` (collected ``total_frames``), ``"interrupted"`` (a stop request;
            resumable) or ``"failed"`` (an error, a full disk, a collector that ran dry).
        reason: why the run stopped (the stop request or the error), ``None`` when finished.

    Example:
        >>> s = make_summary(config={"method": "btr", "seed": 0, "env": {"suite": "atari",
        ...     "env_id": "Pong"}}, run_dir="runs/x", encoder=None, frames=100, updates=1,
        ...     episodes=0, walltime_s=1.0, evaluations=[{"frames": 100, "mean": -21.0,
        ...     "std": 0.0, "n": 1}], final={"mean": -21.0, "std": 0.0, "episodes": [-21.0]})
        >>> s["scores"]["best"]["mean"], s["method"]
        (-21.0, 'btr')
    """
    env = config.get("env", {})
    evals = [
        {k: e[k] for k in ("frames", "mean", "std", "n", "success_rate") if k in e}
        for e in evaluations
    ]
    best = max(evals, key=lambda e: e["mean"]) if evals else None
    summary: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "config": config,
        "method": config.get("method"),
        "suite": env.get("suite"),
        "env_id": env.get("env_id"),
        "seed": config.get("seed"),
        "run_dir": str(run_dir),
        "encoder": dict(encoder) if encoder is not None else None,
        "versions": library_versions(),
        "frames": int(frames),
        "updates": int(updates),
        "episodes": int(episodes),
        "walltime_s": float(walltime_s),
        "scores": {
            "final": (
                {
                    "mean": final["mean"],
                    "std": final["std"],
                    "episodes": list(final.get("episodes", [])),
                }
                if final is not None
                else None
            ),
            "best": best,
            "evaluations": evals,
        },
    }
    rates = [e["success_rate"] for e in evals if e.get("success_rate") is not None]
    if rates:
        summary["success"] = {
            "final": (final or {}).get("success_rate", rates[-1]),
            "best": max(rates),
        }
    return _clean(summary)


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` as indented JSON, atomically (temp file, fsync, rename)."""
    path = Path(path)
    write_atomic(path, (json.dumps(summary, indent=2, sort_keys=False) + "\n").encode())
    return path
