"""What a run has done and when the next things are due: :class:`Counters` and :class:`Schedule`.

Both are saved in every checkpoint (``counters`` and ``schedule``) and read back, of any state
format so far, by :func:`state_counters`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchrl_rise.training.config import ConfigError

__all__ = ["STATE_FORMAT", "Counters", "Schedule", "next_multiple", "state_counters"]

# 1: counters and schedule state in one dict; 2: ``counters`` and ``schedule`` apart.
STATE_FORMAT = 2


@dataclass
class Counters:
    """What a run has done so far (saved in every checkpoint, reported in ``summary.json``).

    ``frames`` counts simulator frames (agent steps x the env's frame skip), ``env_steps`` the
    transitions stored, ``updates`` the gradient steps, ``iterations`` the collector batches
    (all four only of batches stored in the replay). ``worker_restarts`` counts the collector
    rebuilds after a lost worker, ``lost_batches`` the batches in flight they dropped (never in
    the other counters; :mod:`~torchrl_rise.training.supervision`).

    Example:
        >>> c = Counters()
        >>> c.count_batch(steps=8, frame_skip=4)
        >>> c.frames, c.env_steps, c.iterations
        (32, 8, 1)
    """

    frames: int = 0
    env_steps: int = 0
    updates: int = 0
    episodes: int = 0
    iterations: int = 0
    walltime_s: float = 0.0
    worker_restarts: int = 0
    lost_batches: int = 0

    def count_batch(self, *, steps: int, frame_skip: int) -> None:
        """A collector batch of ``steps`` transitions was stored."""
        self.env_steps += steps
        self.frames += steps * frame_skip
        self.iterations += 1

    def count_restart(self, *, lost_batch: bool) -> None:
        """The collector was rebuilt after a lost worker (``lost_batch``: a batch was dropped)."""
        self.worker_restarts += 1
        self.lost_batches += int(lost_batch)


@dataclass
class Schedule:
    """When the next things are due: fractional update credit and the next eval/save/log frames.

    Example:
        >>> s = Schedule()
        >>> s.start(eval_every=100, checkpoint_every=200, log_every=50)
        >>> s.updates_due(steps=8, num_envs=4, updates_per_vector_step=0.75), s.update_credit
        (1, 0.5)
    """

    update_credit: float = 0.0
    next_eval: int = 0
    next_checkpoint: int = 0
    next_log: int = 0

    def start(self, *, eval_every: int, checkpoint_every: int, log_every: int) -> None:
        """A new run (nothing scheduled yet): the first evaluation, checkpoint and log row."""
        if self.next_eval == 0:
            self.next_eval = eval_every
            self.next_checkpoint = checkpoint_every
            self.next_log = log_every

    def updates_due(self, *, steps: int, num_envs: int, updates_per_vector_step: float) -> int:
        """The whole updates ``steps`` more transitions earn; the fraction is kept as credit."""
        self.update_credit += steps / num_envs * updates_per_vector_step
        n_updates = int(self.update_credit)
        self.update_credit -= n_updates
        return n_updates


def next_multiple(frames: int, interval: int) -> int:
    """The first multiple of ``interval`` strictly after ``frames``.

    Example:
        >>> next_multiple(200, 100), next_multiple(199, 100)
        (300, 200)
    """
    return (frames // interval + 1) * interval


def state_counters(state: dict[str, Any], *, path: Any = None) -> tuple[Counters, Schedule]:
    """The :class:`Counters` and :class:`Schedule` of a checkpoint's state, of any format so far.

    Format 1 checkpoints kept both in one ``counters`` dict; they load unchanged. A checkpoint
    written by a newer torchrl_rise (a higher ``format``) is refused.

    Example:
        >>> c, s = state_counters({"format": 1, "counters": {"frames": 8, "next_eval": 16}})
        >>> c.frames, s.next_eval
        (8, 16)
    """
    fmt = int(state.get("format", 1))
    where = f" {path}" if path is not None else ""
    if fmt > STATE_FORMAT:
        raise ConfigError(
            f"checkpoint{where} has state format {fmt}, newer than this torchrl_rise reads "
            f"({STATE_FORMAT}): upgrade torchrl_rise to resume it, or start a new run."
        )
    raw = dict(state.get("counters", {}))
    if fmt == 1:
        sched = {k: raw.pop(k) for k in list(raw) if k in Schedule.__dataclass_fields__}
    else:
        sched = dict(state.get("schedule", {}))
    unknown = sorted(set(raw) - set(Counters.__dataclass_fields__)) + sorted(
        set(sched) - set(Schedule.__dataclass_fields__)
    )
    if unknown:
        raise ConfigError(
            f"checkpoint{where} (format {fmt}) holds counters this torchrl_rise does not know: "
            f"{unknown}. It was written by another version; resume it with that version."
        )
    return Counters(**raw), Schedule(**sched)
