"""What a checkpoint holds of a run, and restoring a run from the first good checkpoint.

:func:`checkpoint_state` is the state dict every checkpoint saves (format
:data:`~torchrl_rise.training.counters.STATE_FORMAT`); :func:`restore_first_good` loads the
first checkpoint of a list that is intact into the run's components (replay first, then actor,
loss, optimizer, target updater, RNG) and returns the rest as a :class:`RunProgress`. Whether a
resume may change the config is ``training/resume.py``'s business.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchrl_rise._fileio import CheckpointCorruptError
from torchrl_rise.training.builders import Components
from torchrl_rise.training.checkpoint import get_rng_state, load_checkpoint, set_rng_state
from torchrl_rise.training.config import TrainConfig
from torchrl_rise.training.counters import STATE_FORMAT, Counters, Schedule, state_counters
from torchrl_rise.training.replay_snapshots import load_replay
from torchrl_rise.training.resume import check_resume, plain_config, trained_config

__all__ = ["RunProgress", "checkpoint_state", "restore_first_good"]

logger = logging.getLogger(__name__)


@dataclass
class RunProgress:
    """What a run restored besides its components: counters, schedule, evaluations, episodes.

    The default is a new run's (nothing restored).

    Attributes:
        path: the checkpoint it came from (``None``: a new run).
        changes: the config changes the resume accepted (``training/resume.py``).

    Example:
        >>> RunProgress().counters.frames, RunProgress().path
        (0, None)
    """

    path: Path | None = None
    counters: Counters = field(default_factory=Counters)
    schedule: Schedule = field(default_factory=Schedule)
    evaluations: dict[str, Any] = field(
        default_factory=lambda: {"evaluations": [], "final_eval": {}}
    )
    recent: dict[str, list[float]] = field(
        default_factory=lambda: {"scores": [], "lengths": [], "success": []}
    )
    changes: list = field(default_factory=list)


def checkpoint_state(
    cfg: TrainConfig,
    comps: Components,
    *,
    counters: Counters,
    schedule: Schedule,
    evaluations: dict[str, Any],
    recent: dict[str, list[float]],
) -> dict[str, Any]:
    """The state dict a checkpoint saves (``evaluations``: ``EvalSchedule.state_dict()``)."""
    return {
        "format": STATE_FORMAT,
        "method": cfg.method,
        "suite": cfg.env.suite,
        "env_id": cfg.env.env_id,
        "config": plain_config(cfg),  # what a resume compares (training/resume.py)
        "actor": comps.actor.state_dict(),
        "loss": comps.loss.state_dict(),
        "optimizer": comps.optimizer.state_dict(),
        "target_updater_counter": int(getattr(comps.target_updater, "counter", 0)),
        "counters": dataclasses.asdict(counters),
        "schedule": dataclasses.asdict(schedule),
        **evaluations,
        "recent": recent,
        "rng": get_rng_state(),
    }


def restore_checkpoint(
    cfg: TrainConfig, comps: Components, ckpt: Path, *, run_dir: Path, chunk_store: Path
) -> RunProgress:
    """Restore ``ckpt`` into ``comps`` (and the RNGs); return the rest of the run's state.

    Raises:
        CheckpointCorruptError: a file of the checkpoint (or its replay) is damaged; nothing
            was changed but possibly the replay.
        ConfigError: the config differs from the trained one in a way a resume refuses.
    """
    loaded = load_checkpoint(ckpt)  # verifies every file against the manifest
    state = loaded["state"]
    counters, schedule = state_counters(state, path=loaded["path"])
    # Before any state is loaded: a refused config names its keys, not tensor shapes.
    trained, complete = trained_config(state, run_dir)
    changes = check_resume(
        trained, cfg, frames=counters.frames, checkpoint=loaded["path"], complete=complete
    )
    if loaded["replay_dir"] is not None:
        # First, so that a damaged replay snapshot leaves the rest untouched (fallback).
        # Chunks come from this run's own store only (a copied run dir is self-contained).
        load_replay(comps.replay, loaded["replay_dir"], chunk_store=chunk_store)
        # The envs restart with fresh episodes: don't splice them onto the ones the buffer saw.
        comps.replay.close_open_episodes()
    elif counters.env_steps:
        logger.warning(
            "checkpoint %s holds no replay buffer (checkpoint.save_replay=false): the buffer "
            "refills from scratch",
            loaded["path"],
        )
    comps.actor.load_state_dict(state["actor"])
    comps.loss.load_state_dict(state["loss"])
    comps.optimizer.load_state_dict(state["optimizer"])
    if hasattr(comps.target_updater, "counter"):
        comps.target_updater.counter = int(state["target_updater_counter"])
    set_rng_state(state["rng"])
    logger.info(
        "resumed from %s at %d frames, %d updates",
        loaded["path"],
        counters.frames,
        counters.updates,
    )
    return RunProgress(
        path=ckpt,
        counters=counters,
        schedule=schedule,
        evaluations={"evaluations": state["evaluations"], "final_eval": state["final_eval"]},
        recent=state["recent"],
        changes=changes,
    )


def restore_first_good(
    cfg: TrainConfig,
    comps: Components,
    candidates: list[Path],
    *,
    run_dir: Path,
    chunk_store: Path,
) -> RunProgress:
    """Restore the first good checkpoint of ``candidates``; warn about each damaged one.

    Only ``resume=true`` falls back; an explicit resume path that is damaged is an error.

    Returns:
        what was restored; a new run's (``path=None``) if there is no candidate.

    Raises:
        CheckpointCorruptError: the explicit checkpoint, or every candidate, is damaged.
    """
    damaged = []
    for ckpt in candidates:
        try:
            progress = restore_checkpoint(
                cfg, comps, ckpt, run_dir=run_dir, chunk_store=chunk_store
            )
        except CheckpointCorruptError as err:
            if cfg.resume is not True:
                raise
            logger.warning(
                "CHECKPOINT DAMAGED: %s cannot be resumed from (%s); falling back to the "
                "previous checkpoint",
                ckpt,
                err,
            )
            damaged.append(f"{ckpt.name}: {err}")
            continue
        if damaged:
            logger.warning(
                "resumed from %s, an older checkpoint than the latest (damaged: %s)",
                ckpt,
                "; ".join(damaged),
            )
        return progress
    if damaged:
        raise CheckpointCorruptError(
            f"every checkpoint of {run_dir} is damaged, nothing to resume from: "
            f"{'; '.join(damaged)}. Resume from a crash checkpoint by its path "
            "(resume=<run>/checkpoints/crash_frames_N), or start a new run in another "
            "logging.run_dir."
        )
    return RunProgress()
