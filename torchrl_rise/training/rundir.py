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
import datetime
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchrl_rise.training.builders import _safe_name
from torchrl_rise.training.checkpoint import (
    CRASH_PREFIX,
    PREFIX,
    RunLock,
    find_latest_checkpoint,
    list_checkpoints,
    remove_stale_temp,
)
from torchrl_rise.training.config import ConfigError, TrainConfig

__all__ = [
    "PARTIAL_PREFIX",
    "RUN_FILES",
    "RUN_MARKERS",
    "RunDirState",
    "RunDirectory",
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


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def _make_dirs(path: Path) -> Path | None:
    """``mkdir -p path``; return the topmost directory this call created (``None``: none)."""
    path = Path(path)
    top = None
    probe = path
    while not probe.exists():
        top = probe
        if probe == probe.parent:
            break
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    return top


class RunDirectory:
    """A run's directory: where it is, its lock, what a dead run left in it, its ``train.log``.

    :meth:`open` resolves the directory of ``cfg`` (``logging.run_dir``, or a new time stamped
    folder under ``<logging.root>/<suite>/<env>/<method>/seed<seed>``, or the run a resume
    names), creates it, takes its :class:`~torchrl_rise.training.checkpoint.RunLock` and decides
    with :func:`prepare_run_dir` what the start does; :meth:`close` releases the lock and, if
    asked, removes what this start created.

    Args:
        cfg: the run's configuration.

    Example:
        >>> import tempfile
        >>> from torchrl_rise.training import load_config
        >>> cfg = load_config({"logging": {"run_dir": tempfile.mkdtemp() + "/run"}})
        >>> run = RunDirectory(cfg)
        >>> run.open(), run.path.name, run.locked
        (([], None), 'run', True)
        >>> run.close(remove=True); run.path.exists(), run.locked
        (False, False)
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.path: Path | None = None
        self._lock: RunLock | None = None
        self._created: Path | None = None

    @staticmethod
    def parent(cfg: TrainConfig) -> Path:
        """Where the runs of ``cfg`` go without ``logging.run_dir``."""
        return (
            Path(cfg.logging.root)
            / cfg.env.suite
            / _safe_name(cfg.env.env_id)
            / cfg.method
            / f"seed{cfg.seed}"
        )

    @property
    def locked(self) -> bool:
        """Whether this process holds the run lock."""
        return self._lock is not None

    @property
    def checkpoints(self) -> Path:
        """``<run>/checkpoints``."""
        return self.path / "checkpoints"

    def resolve(self) -> tuple[Path, Path | None]:
        """The run directory and, for an explicit resume path, its checkpoint (unverified)."""
        cfg = self.cfg
        resume = cfg.resume
        if resume is False:
            if cfg.logging.run_dir:
                return Path(cfg.logging.run_dir), None
            return self.parent(cfg) / _stamp(), None
        if resume is True:
            parent = Path(cfg.logging.run_dir) if cfg.logging.run_dir else self.parent(cfg)
            candidates = (
                [parent]
                if cfg.logging.run_dir
                else sorted((p for p in parent.glob("*") if p.is_dir()), reverse=True)
            )
            for run in candidates:
                if list_checkpoints(run):
                    return run, None
            if cfg.logging.run_dir:  # nothing to resume: a new run (prepare_run_dir)
                return parent, None
            return parent / _stamp(), None
        ckpt = find_latest_checkpoint(resume)
        if ckpt is None:
            raise ConfigError(no_checkpoint_message(resume))
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run, ckpt

    def open(self) -> tuple[list[Path], str | None]:
        """Resolve, create and lock the run directory; the checkpoints to try and a note to log.

        ``resume=true`` tries the regular checkpoints newest first (falling back from damaged
        ones); an explicit resume path is the only candidate; none: a new run from frame 0 (a
        run that stopped before its first checkpoint is moved to ``partial-<n>/`` first). A
        directory holding checkpoints is refused to a new run (:func:`prepare_run_dir`).
        """
        cfg = self.cfg
        run, explicit = self.resolve()
        self._created = _make_dirs(run)
        self.path = run
        try:
            self._lock = RunLock(run).acquire()  # first: a live run's directory is never touched
            searched = None if cfg.logging.run_dir else self.parent(cfg)
            return prepare_run_dir(run, resume=cfg.resume, explicit=explicit, searched=searched)
        except BaseException:
            self.close(remove=True)
            raise

    def close(self, *, remove: bool) -> None:
        """Release the run lock; with ``remove``, delete the run directory if this run made it."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if remove and self._created is not None:
            # The run dir goes; of the parents this run made, only the empty ones (another run
            # may have started under them meanwhile).
            shutil.rmtree(self.path, ignore_errors=True)
            if self._created != self.path and self._created in self.path.parents:
                for parent in self.path.parents:
                    with contextlib.suppress(OSError):
                        parent.rmdir()
                    if parent == self._created:
                        break
            self._created = None

    def release(self, *, wrote: bool) -> None:
        """Release the lock at the end of a run; a run that wrote nothing leaves nothing behind.

        Keyword Args:
            wrote: the run wrote something worth keeping (its summary, collected data); the
                directory is also kept while it holds a checkpoint.
        """
        self.close(remove=not (wrote or bool(list_checkpoints(self.path))))

    def reclaim(self, *, own_scratch: bool) -> None:
        """Delete what a dead run left behind (under the run lock: nobody else is here).

        Keyword Args:
            own_scratch: the replay's scratch memmaps live in ``<run>/replay_scratch``.
        """
        run = self.path
        removed = [p.name for p in remove_stale_temp(self.checkpoints)]
        scratch = run / "replay_scratch"
        if own_scratch and scratch.exists():
            size = sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file())
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(f"replay_scratch/ ({size / 2**20:.1f} MiB)")
        if removed:
            pid = self._lock.previous_pid if self._lock is not None else None
            logger.warning(
                "reclaimed what a dead run%s left in %s: %s",
                f" (pid {pid})" if pid else "",
                run,
                ", ".join(removed),
            )

    @contextlib.contextmanager
    def file_log(self) -> Iterator[None]:
        """``<run>/train.log`` gets the package's log records while this lasts."""
        handler = logging.FileHandler(self.path / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package = logging.getLogger("torchrl_rise")
        package.addHandler(handler)
        if package.getEffectiveLevel() > logging.INFO:
            package.setLevel(logging.INFO)
        try:
            yield
        finally:
            package.removeHandler(handler)
            handler.close()
