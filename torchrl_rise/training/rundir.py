"""What a run directory holds at a start, and what a start may do with it (under the run lock).

:func:`prepare_run_dir` decides, for ``resume=false`` / ``true`` / ``<path>``:

============================================  ===================  ===========================
the run directory holds                       ``resume=false``     ``resume=true``
============================================  ===================  ===========================
nothing of a run                              new run              new run ("nothing to
                                                                   resume", logged)
a run that stopped before its first           its files move to ``partial-<n>/``, a new run
checkpoint (killed, failed, full disk)        starts from frame 0 (logged)
regular checkpoints                           refused: names       resumes the newest good one
                                              ``resume=true``
a finished run whose checkpoints are gone     refused: choose another ``logging.run_dir``
============================================  ===================  ===========================

An explicit ``resume=<run dir or checkpoint>`` uses exactly that checkpoint. A live run is never
touched: the caller holds the run's :class:`~torchrl_rise.training.checkpoint.RunLock` (taken
without waiting, so a live holder fails the start first) before calling anything here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchrl_rise.training.checkpoint import (
    CRASH_PREFIX,
    PREFIX,
    list_checkpoints,
    remove_stale_temp,
)
from torchrl_rise.training.config import ConfigError

__all__ = [
    "PARTIAL_PREFIX",
    "RUN_FILES",
    "RUN_MARKERS",
    "RunDirState",
    "inspect_run_dir",
    "no_checkpoint_message",
    "prepare_run_dir",
    "set_aside",
]

logger = logging.getLogger(__name__)

# What marks a directory as holding a run (a new run there would mix with it).
RUN_MARKERS = ("config.json", "train.csv", "eval.csv", "summary.json", "checkpoints")
# What a run writes into its directory: moved together when a run is set aside.
RUN_FILES = (
    "config.json",
    "config_history.jsonl",
    "train.csv",
    "eval.csv",
    "summary.json",
    "train.log",
    "checkpoints",
    "videos",
    "tb",
    "wandb",
)
PARTIAL_PREFIX = "partial-"


@dataclass(frozen=True)
class RunDirState:
    """What a run directory holds: run files, regular checkpoints, the summary's status.

    Example:
        >>> import tempfile
        >>> state = inspect_run_dir(tempfile.mkdtemp())
        >>> state.found, state.checkpoints, state.restartable
        ((), (), False)
    """

    path: Path
    found: tuple[str, ...]
    checkpoints: tuple[Path, ...]
    summary: dict[str, Any] | None

    @property
    def status(self) -> str | None:
        return (self.summary or {}).get("status")

    @property
    def restartable(self) -> bool:
        """A run that stopped before its first checkpoint: nothing in it can be continued."""
        return bool(self.found) and not self.checkpoints and self.status != "finished"


def inspect_run_dir(path: str | Path) -> RunDirState:
    """Read what ``path`` holds (nothing is changed)."""
    path = Path(path)
    summary = None
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((path / "summary.json").read_text())
    return RunDirState(
        path=path,
        found=tuple(name for name in RUN_MARKERS if (path / name).exists()),
        checkpoints=tuple(list_checkpoints(path)) if path.is_dir() else (),
        summary=summary if isinstance(summary, dict) else None,
    )


def set_aside(run: str | Path) -> tuple[Path, list[str]]:
    """Move the files of a run without checkpoint into ``<run>/partial-<n>/`` (first free n).

    Only the caller holding the run lock may call it, after
    :func:`~torchrl_rise.training.checkpoint.remove_stale_temp` (which puts back a checkpoint a
    dead save had moved aside). The run's logs, config, summary and crash checkpoints are moved,
    never deleted; what holds no record is removed (a ``checkpoints/`` folder without any
    checkpoint folder: replay chunks nothing references). Files the run did not write (a
    launcher's log, ``partial-*``) stay where they are.

    Returns:
        the ``partial-<n>`` folder and what was removed (for the log).
    """
    run = Path(run)
    removed = []
    ckpts = run / "checkpoints"
    names = [p.name for p in ckpts.iterdir()] if ckpts.is_dir() else []
    if ckpts.is_dir() and not any(n.startswith((PREFIX, CRASH_PREFIX, ".")) for n in names):
        size = sum(f.stat().st_size for f in ckpts.rglob("*") if f.is_file())
        shutil.rmtree(ckpts)
        removed.append(f"checkpoints/ without a checkpoint ({size / 2**20:.1f} MiB)")
    n = 1
    while (run / f"{PARTIAL_PREFIX}{n}").exists():
        n += 1
    dest = run / f"{PARTIAL_PREFIX}{n}"
    dest.mkdir()
    for name in RUN_FILES:
        if (run / name).exists():
            os.replace(run / name, dest / name)
    return dest, removed


def _refusal(state: RunDirState) -> str:
    """Why ``resume=false`` (or any start) is refused in ``state``'s directory, and what works."""
    run = state.path
    summary = state.summary or {}
    if state.checkpoints:
        what = f"a run with checkpoints (newest {state.checkpoints[0].name})"
        if state.status == "finished":
            frames = summary.get("frames")
            what = f"a run, finished ({frames} frames, checkpoint {state.checkpoints[0].name})"
            command = f"logging.run_dir={run} resume=true total_frames=<more than {frames}>"
            goal = "To train it on"
        else:
            command = f"logging.run_dir={run} resume=true"
            goal = "To continue it"
        return (
            f"logging.run_dir={str(run)!r} already holds {what}: a new run there would mix "
            f"both runs' logs and overwrite its checkpoints. {goal}: {command}. For a new run, "
            "choose another logging.run_dir."
        )
    return (
        f"logging.run_dir={str(run)!r} holds a finished run ({summary.get('frames')} frames) "
        "whose checkpoints are gone: nothing can continue it, and a new run there would mix "
        "both runs' logs. Choose another logging.run_dir (or move this one away)."
    )


def prepare_run_dir(
    run: str | Path, *, resume: bool | str, explicit: Path | None, searched: Path | None = None
) -> tuple[list[Path], str | None]:
    """Decide what a start does in ``run`` (see the module docstring); the caller holds the lock.

    Args:
        run: the run directory (created).

    Keyword Args:
        resume: the config's ``resume``.
        explicit: the checkpoint of an explicit ``resume=<path>``.
        searched: where ``resume=true`` looked for a checkpoint (named in the log).

    Returns:
        the checkpoints to try, newest first (empty: a new run from frame 0), and what to log
        about the directory (``None``: nothing to say).

    Raises:
        ConfigError: the directory holds a run this start must not touch.
    """
    run = Path(run)
    if explicit is not None:
        return [explicit], None
    state = inspect_run_dir(run)
    removed = []
    if not state.checkpoints and state.found:
        # a save that died after moving the only checkpoint aside: remove_stale_temp puts it back
        removed = [f"checkpoints/{p.name}" for p in remove_stale_temp(run / "checkpoints")]
        state = inspect_run_dir(run)
    if state.checkpoints:
        if resume is True:
            return list(state.checkpoints), None
        raise ConfigError(_refusal(state))
    if not state.found:
        if resume is not True:
            return [], None
        where = searched or run
        return [], (
            f"resume=true: nothing to resume (no checkpoint in {where}): starting a new run from "
            f"frame 0 in {run}"
        )
    if not state.restartable:
        raise ConfigError(_refusal(state))
    dest, deleted = set_aside(run)
    removed += deleted
    crash = sorted(p.name for p in (dest / "checkpoints").glob(f"{CRASH_PREFIX}*"))
    return [], (
        f"{run} held a run that stopped before its first checkpoint ({', '.join(state.found)}; "
        f"status {state.status or 'unknown: it was killed'}): nothing to resume, so the run "
        f"starts again from frame 0. Its files were moved to {dest}"
        + (f" (crash checkpoints kept there: {', '.join(crash)})" if crash else "")
        + (f"; removed {', '.join(removed)}" if removed else "")
    )


def no_checkpoint_message(resume: str) -> str:
    """The error for an explicit ``resume=<path>`` that holds no checkpoint, and what works."""
    path = Path(resume)
    base = (
        f"resume={resume!r}: no checkpoint there (expected a run directory with checkpoints/ or "
        "a checkpoint folder holding state.pt)."
    )
    if path.is_dir() and any((path / name).exists() for name in RUN_MARKERS):
        return (
            f"{base} It holds a run that stopped before its first checkpoint: to start it again "
            f"from frame 0 (its files kept in {PARTIAL_PREFIX}<n>/), run with "
            f"logging.run_dir={path} resume=true."
        )
    return f"{base} To start a new run there: logging.run_dir={path} resume=true."
