"""Where a run's checkpoints go, what they cost on disk, and what a full disk means.

:class:`CheckpointPolicy` writes the regular and crash checkpoints of one run (with its replay
dumped incrementally into the run's chunk store ``checkpoints/replay_chunks``), prunes the store
to what the kept checkpoints reference, checks before the start that the disk holds what the run
will write (:func:`disk_budget`) and turns a full disk during a save into a
:class:`DiskFullError` that names the intact checkpoint to resume from.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchrl_rise._fileio import CheckpointCorruptError, is_disk_full
from torchrl_rise.replay import prune_chunk_store
from torchrl_rise.training.builders import Components
from torchrl_rise.training.checkpoint import find_latest_checkpoint, save_checkpoint
from torchrl_rise.training.config import TrainConfig, check_disk_space
from torchrl_rise.training.replay_snapshots import dump_replay

__all__ = [
    "CHUNK_STORE",
    "CheckpointPolicy",
    "DiskFullError",
    "crash_checkpoint_veto",
    "disk_budget",
]

logger = logging.getLogger(__name__)

CHUNK_STORE = "replay_chunks"


class DiskFullError(RuntimeError):
    """The disk filled up during a checkpoint write (the previous checkpoint is intact)."""


class CheckpointPolicy:
    """The checkpoints of one run: saving, chunk store pruning and the disk check.

    Args:
        cfg: the run's configuration (``checkpoint.keep``, ``checkpoint.save_replay``...).
        run_dir: the run directory (checkpoints go to ``<run_dir>/checkpoints``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_rise.training import load_config
        >>> run = Path(tempfile.mkdtemp())
        >>> policy = CheckpointPolicy(load_config({}), run)
        >>> path = policy.save({"counters": {}}, replay=None, frames=8, env_steps=0)
        >>> path.name, policy.chunk_store == run / "checkpoints" / "replay_chunks"
        ('frames_000000000008', True)
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / "checkpoints"
        # Both replay buffers dump incrementally into a chunk store shared by the checkpoints.
        self.chunk_store = self.directory / CHUNK_STORE

    def save(
        self,
        state: dict[str, Any],
        *,
        replay: Any,
        frames: int,
        env_steps: int,
        crash: bool = False,
    ) -> Path:
        """Write a regular checkpoint (``latest``, pruning) or, with ``crash``, a crash one.

        Raises:
            DiskFullError: the disk filled up; the previous checkpoint is intact.
        """
        keep = self.cfg.checkpoint.keep
        save_replay = None
        if self.cfg.checkpoint.save_replay and env_steps:
            # keep >= 2: consecutive checkpoints share no chunk file (one bad chunk costs one)
            save_replay = functools.partial(
                dump_replay, replay, chunk_store=self.chunk_store, redundant=keep > 1
            )
        try:
            return save_checkpoint(
                self.directory,
                state,
                step=int(frames),
                save_replay=save_replay,
                keep=keep,
                crash=crash,
                on_pruned=self.prune_chunks,
            )
        except Exception as err:
            if not is_disk_full(err):
                raise
            raise self._disk_full(err, frames) from err

    def _disk_full(self, err: Exception, frames: int) -> DiskFullError:
        previous = find_latest_checkpoint(self.directory)
        command = f"logging.run_dir={self.run_dir} resume=true"
        then = (
            f"{previous} is intact. Free some space, then resume from it: {command}"
            if previous is not None
            else "there is no earlier checkpoint, so nothing to resume from. Free some "
            "space, then start the run again from frame 0 (its logs are kept in "
            f"partial-<n>/): {command}"
        )
        return DiskFullError(
            f"the disk of {self.run_dir} is full: the checkpoint at {frames} frames could not "
            f"be written ({err}). Its partial folder was removed; {then}."
        )

    def crash_checkpoint(
        self, error: BaseException, *, consistent: bool, save: Callable[[], Path]
    ) -> Path | None:
        """After ``error``: a crash checkpoint by ``save()`` if it may be written, else none.

        Every outcome is logged (the checkpoint, or why there is none).
        """
        veto = crash_checkpoint_veto(error, consistent=consistent)
        if veto is not None:
            logger.error(veto)
            return None
        try:
            path = save()
        except Exception as err:
            logger.error("could not write a crash checkpoint: %s", err)
            return None
        logger.error(
            "crash checkpoint %s written; resume=true ignores it, resume=%s uses it", path, path
        )
        return path

    def prune_chunks(self, kept: list[Path]) -> None:
        """Delete the chunk store files no replay dump of the ``kept`` checkpoints references."""
        store = self.chunk_store
        if not store.exists():
            return
        dumps = [k / "replay" for k in kept if (k / "replay").is_dir()]
        try:
            freed = prune_chunk_store(store, keep=dumps)
        except (OSError, ValueError, CheckpointCorruptError) as err:
            # e.g. a damaged snapshot manifest: keep every chunk rather than guess
            logger.warning("replay chunk store %s not pruned: %s", store, err)
            return
        if freed:
            logger.info("replay chunk store: freed %.1f MiB", freed / 2**20)

    def prune_unreferenced_chunks(self) -> None:
        """At a start: a crash mid-save may have left chunks no checkpoint references."""
        self.prune_chunks([p for p in self.directory.glob("*frames_*") if p.is_dir()])

    def check_disk(self, comps: Components, *, frame_skip: int) -> dict[str, Any]:
        """Check that the disk holds the scratch memmaps plus the checkpoints kept at once.

        Raises:
            ConfigError: it does not (the message says what needs how much, and what helps).
        """
        budget = disk_budget(self.cfg, comps, frame_skip=frame_skip, incremental=True)
        ckpt_dir = self.directory
        existing = (
            sum(f.stat().st_size for f in ckpt_dir.rglob("*") if f.is_file())
            if ckpt_dir.exists()
            else 0
        )
        scratch = Path(getattr(comps.replay, "scratch_dir", self.run_dir))
        same_disk = _device_of(scratch) == _device_of(self.run_dir)
        need = max(0, budget["checkpoints"] - existing) + (budget["scratch"] if same_disk else 0)
        ck = self.cfg.checkpoint
        check_disk_space(
            self.run_dir,
            need,
            what=(
                f"this run (replay scratch {budget['scratch'] / 2**30:.2f} GiB"
                f"{'' if same_disk else ' on another disk, not counted'} + checkpoints "
                f"{budget['checkpoints'] / 2**30:.2f} GiB: checkpoint.keep={ck.keep} kept + 1 "
                f"during a save, replay {budget['replay_per_checkpoint'] / 2**30:.2f} GiB"
                f"{self._increment_note()}"
                f" and model/optimizer {budget['state'] / 2**30:.3f} GiB each; "
                f"{existing / 2**30:.2f} GiB of checkpoints already there)"
            ),
            hint=(
                "Lower replay.capacity or checkpoint.keep, set checkpoint.save_replay=false, or "
                "put logging.run_dir / replay.scratch_dir on a larger disk."
            ),
        )
        return budget

    def _increment_note(self) -> str:
        if self.cfg.checkpoint.keep > 1:
            return " per increment after two full snapshots (consecutive ones share no chunk)"
        return " per increment after a first full snapshot"


def crash_checkpoint_veto(error: BaseException, *, consistent: bool) -> str | None:
    """Why no crash checkpoint may follow ``error`` (``None``: one may).

    Keyword Args:
        consistent: the replay, the weights and the counters agree (no step was half done).

    Example:
        >>> crash_checkpoint_veto(RuntimeError("x"), consistent=True) is None
        True
        >>> crash_checkpoint_veto(RuntimeError("x"), consistent=False)[:9]
        'the error'
    """
    if isinstance(error, DiskFullError) or is_disk_full(error):
        return "disk full: no crash checkpoint; the last regular one is intact"
    if not consistent:
        return (
            "the error interrupted a step (the replay or the weights are half updated): no "
            "crash checkpoint; resume from the last regular one"
        )
    return None


def _device_of(path: Path) -> int | None:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return probe.stat().st_dev
    except OSError:
        return None


def _nbytes(tensors: Any) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, dict):
        return sum(_nbytes(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return sum(_nbytes(v) for v in tensors)
    return 0


def disk_budget(
    cfg: TrainConfig, comps: Components, *, frame_skip: int, incremental: bool
) -> dict[str, Any]:
    """Bytes a run puts on disk: replay scratch memmaps and the checkpoints kept at once.

    ``checkpoint.keep`` checkpoints are kept, plus one being written during a save. Each holds
    the model, target and Adam state (weights + two moments) and, with ``save_replay``, the
    replay: a full copy each, or (incremental snapshots in a chunk store) one full snapshot plus,
    per checkpoint, the chunks written since the previous one (``checkpoint.interval_frames``
    worth of transitions, rounded up to a chunk per env lane); with ``keep >= 2`` consecutive
    snapshots share no chunk file (training/replay_snapshots.py): two full snapshots, and each
    checkpoint writes the chunks changed over two intervals.

    Returns:
        ``{"scratch", "state", "replay_per_checkpoint", "checkpoints", "incremental"}``.
    """
    replay = comps.replay
    per_t = int(getattr(replay, "nbytes_per_transition", 0) or 0)
    nbytes = int(getattr(replay, "nbytes", 0) or per_t * int(replay.capacity))
    trainable = sum(
        p.numel() * p.element_size() for p in comps.loss.parameters() if p.requires_grad
    )
    state = _nbytes(comps.actor.state_dict()) + _nbytes(comps.loss.state_dict()) + 2 * trainable
    copies = cfg.checkpoint.keep + 1
    replay_each = 0
    full = 0
    if cfg.checkpoint.save_replay:
        if incremental:
            chunk = int(getattr(replay, "chunk_nbytes", 0) or 0)
            lineages = 2 if cfg.checkpoint.keep > 1 else 1
            per_interval = math.ceil(cfg.checkpoint.interval_frames / frame_skip) * per_t
            replay_each = min(nbytes, lineages * per_interval + cfg.env.num_envs * chunk)
            full = lineages * nbytes
        else:
            replay_each = nbytes
    return {
        "scratch": nbytes,
        "state": state,
        "replay_per_checkpoint": replay_each,
        "checkpoints": full + copies * (replay_each + state),
        "incremental": incremental,
    }
