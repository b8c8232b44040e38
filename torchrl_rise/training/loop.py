"""The training loop shared by every recipe.

collector -> replay -> learner -> target update -> evaluation -> logging -> checkpoint::

    for batch in collector:                      # [num_envs, steps_per_batch], acting policy
        replay.extend(batch)                     # frames once, embeddings once, per env lane
        for _ in range(updates_due):             # BTR: one update per vector step
            sample -> IQNLoss -> Adam (grad clip) -> priorities -> HardUpdate -> resample_noise
        actor.step(frames); collector.update_policy_weights_()
        every logging.interval_frames: train.csv row (+ gate diagnostics)
        every eval.interval_frames:    eval episodes on the eval envs -> eval.csv (+ video)
        every checkpoint.interval_frames, and on SIGINT/SIGTERM: checkpoint
    summary.json

With ``collector.overlap=true`` the collector runs in a thread one batch ahead
(:mod:`torchrl_rise.training.overlap`); this loop still does everything else, on the same batches
in the same order, publishes the weights after every batch and pauses the thread around
evaluations and checkpoints.

What survives what (docs/training.md has the table): a signal only sets a flag, so a stop always
lands on a step boundary and is checkpointed; an exception writes at most a separate crash
checkpoint (never ``latest``); a hard kill leaves the previous checkpoint, and the next start
(under the run lock ``<run>/.lock``) reclaims what the dead process left.

Frame counters follow the Atari convention: ``frames`` = agent steps x the env's frame skip (4 for
Atari), so ``total_frames``, the eval/checkpoint/log intervals and the eps schedule are in simulator
frames, while replay sizes (``capacity``, ``learning_starts``, ``batch_size``) count transitions.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import functools
import inspect
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_rise._fileio import CheckpointCorruptError, is_disk_full
from torchrl_rise.training.builders import Assembly, Components, build_assembly, evaluation_policy
from torchrl_rise.training.builders import _safe_name as _safe
from torchrl_rise.training.checkpoint import (
    RunLock,
    find_latest_checkpoint,
    get_rng_state,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temp,
    save_checkpoint,
    set_rng_state,
)
from torchrl_rise.training.config import (
    ConfigError,
    TrainConfig,
    check_disk_space,
    config_to_dict,
    load_config,
)
from torchrl_rise.training.evaluation import EvalResult, evaluate
from torchrl_rise.training.learner import Learner
from torchrl_rise.training.loggers import RunLogger
from torchrl_rise.training.overlap import OverlappedCollector
from torchrl_rise.training.replay_snapshots import dump_replay, load_replay
from torchrl_rise.training.resume import check_resume, plain_config, record_config, trained_config
from torchrl_rise.training.rundir import RUN_MARKERS, no_checkpoint_message, prepare_run_dir
from torchrl_rise.training.summary import make_summary, write_summary
from torchrl_rise.training.supervision import keep_signal_handlers, kill_all_workers, supervise

__all__ = [
    "STATE_FORMAT",
    "CollectorExhaustedError",
    "Counters",
    "DiskFullError",
    "Schedule",
    "Trainer",
    "train",
]

logger = logging.getLogger(__name__)

RECENT_EPISODES = 100
CHUNK_STORE = "replay_chunks"
# What marks a run directory as holding a run (training/rundir.py decides what a start does).
_RUN_MARKERS = RUN_MARKERS


class CollectorExhaustedError(RuntimeError):
    """The collector stopped yielding batches before the run collected ``total_frames``."""


class DiskFullError(RuntimeError):
    """The disk filled up during a checkpoint write (the previous checkpoint is intact)."""


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
    """

    frames: int = 0
    env_steps: int = 0
    updates: int = 0
    episodes: int = 0
    iterations: int = 0
    walltime_s: float = 0.0
    worker_restarts: int = 0
    lost_batches: int = 0


@dataclass
class Schedule:
    """When the next things are due: fractional update credit and the next eval/save/log frames."""

    update_credit: float = 0.0
    next_eval: int = 0
    next_checkpoint: int = 0
    next_log: int = 0


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


def _run_parent(cfg: TrainConfig) -> Path:
    return (
        Path(cfg.logging.root)
        / cfg.env.suite
        / _safe(cfg.env.env_id)
        / cfg.method
        / f"seed{cfg.seed}"
    )


class Trainer:
    """Runs one training run described by a :class:`TrainConfig`, on the pieces a recipe built.

    Args:
        cfg: the configuration (a :class:`TrainConfig`, a dict or a hydra ``DictConfig``).

    Keyword Args:
        components: the :class:`~torchrl_rise.training.builders.Assembly` a recipe built (env
            factories, encoder, network, actor, loss, target updater, optimizer and the replay,
            collector and logger factories); ``None`` builds it with
            :func:`~torchrl_rise.training.builders.build_assembly` when the run starts.

    Attributes:
        run_dir: where logs, checkpoints and ``summary.json`` go (set by :meth:`run`).
        components: the built network, loss, optimizer, replay... (set by :meth:`run`).
        counters: a :class:`Counters` (frames, env_steps, updates, episodes, iterations,
            walltime_s).
        schedule: a :class:`Schedule` (update credit and the next eval/checkpoint/log frames).

    Call :meth:`request_stop` (or send SIGINT/SIGTERM) to stop after the current step; the run then
    abandons a running evaluation, saves a checkpoint, flushes its logs and writes
    ``summary.json`` with ``status: interrupted``. Signals never interrupt a step: a second one
    also skips what is left (the final evaluation) but still waits for the step boundary; a third
    exits at once without saving. An exception fails the run (``status: failed``, ``reason``)
    and writes at most a crash checkpoint ``checkpoints/crash_frames_<N>/`` (only if the state is
    consistent), which ``resume=true`` never picks.

    Example:
        >>> cfg = {"method": "btr", "env": {"suite": "memory", "env_id": "cue-L4",
        ...        "num_envs": 4, "frame_size": 16}, "total_frames": 64,
        ...        "network": {"kwargs": {"width_scale": 0.25, "mlp_hidden": 16,
        ...                               "spectral_norm": False}},
        ...        "replay": {"capacity": 256, "batch_size": 8, "learning_starts": 32},
        ...        "eval": {"episodes": 2, "num_envs": 2}, "logging": {"progress": False}}
        >>> import tempfile
        >>> cfg["logging"]["root"] = tempfile.mkdtemp()
        >>> trainer = Trainer.from_components(load_config(cfg))
        >>> summary = trainer.run()
        >>> summary["frames"], summary["status"], trainer.counters.frames
        (64, 'finished', 64)
    """

    def __init__(self, cfg: Any, *, components: Assembly | None = None) -> None:
        self.cfg = load_config(cfg)
        self.assembly = components
        self.run_dir: Path | None = None
        self.components: Components | None = None
        self.counters = Counters()
        self.schedule = Schedule()
        self.evaluations: list[dict[str, Any]] = []
        self.final_eval: dict[str, Any] | None = None
        self.recent_scores: collections.deque[float] = collections.deque(maxlen=RECENT_EPISODES)
        self.recent_lengths: collections.deque[float] = collections.deque(maxlen=RECENT_EPISODES)
        self.recent_success: collections.deque[float] = collections.deque(maxlen=RECENT_EPISODES)
        self.logs: RunLogger | None = None
        self.resumed_from: Path | None = None
        self.status: str | None = None
        self.reason: str | None = None
        self.summary: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._signal_count = 0
        # False while a step (extend + updates) is half done: no checkpoint of such a state.
        self._consistent = True
        self._collector_failed = False  # the collector failed after a stop request
        self._eval_env = None
        self._lock: RunLock | None = None
        self._created: Path | None = None
        self._num_threads = default_num_threads(self.cfg)
        self._t0: float | None = None  # perf_counter when the loop's clock started
        self._walltime_base = 0.0
        self._iterations_at_start = 0
        self._saved = False  # a checkpoint was written at the end

    @classmethod
    def from_components(cls, cfg: Any, components: Assembly | None = None) -> Trainer:
        """The trainer of ``cfg`` on ``components`` (``None``: built from ``cfg`` at the start).

        Example:
            >>> from torchrl_rise.training import load_config
            >>> Trainer.from_components(load_config({"method": "btr"})).counters.frames
            0
        """
        return cls(cfg, components=components)

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current step (checkpoint, flush logs, write the summary)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, _frame):
            # Only flags: raising here would break a step (extend, optimizer.step) in the middle.
            name = signal.Signals(signum).name
            self._signal_count += 1
            if self._signal_count == 1:
                logger.warning(
                    "%s received: finishing the current step, then checkpointing (send it again "
                    "to skip what is left, e.g. the final evaluation; a third time exits at once "
                    "without saving)",
                    name,
                )
                self.request_stop(name)
            elif self._signal_count == 2:
                logger.warning(
                    "second signal (%s): stopping at the next step boundary, skipping the rest",
                    name,
                )
                self.request_stop(name)
            else:
                os.write(2, f"third signal ({name}): exiting now, without saving\n".encode())
                kill_all_workers()  # no orphaned collector workers
                os._exit(128 + signum)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ setup
    def _resolve_run_dir(self) -> tuple[Path, Path | None]:
        """The run directory and, for an explicit resume path, its checkpoint (unverified)."""
        cfg = self.cfg
        resume = cfg.resume
        if resume is False:
            if cfg.logging.run_dir:
                return Path(cfg.logging.run_dir), None
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            return _run_parent(cfg) / stamp, None
        if resume is True:
            parent = Path(cfg.logging.run_dir) if cfg.logging.run_dir else _run_parent(cfg)
            candidates = (
                [parent]
                if cfg.logging.run_dir
                else sorted((p for p in parent.glob("*") if p.is_dir()), reverse=True)
            )
            for run in candidates:
                if list_checkpoints(run):
                    return run, None
            if cfg.logging.run_dir:  # nothing to resume: a new run (training/rundir.py)
                return parent, None
            return parent / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f"), None
        ckpt = find_latest_checkpoint(resume)
        if ckpt is None:
            raise ConfigError(no_checkpoint_message(resume))
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run, ckpt

    def _open_run_dir(self) -> tuple[list[Path], str | None]:
        """Resolve, create and lock the run directory; the checkpoints to try and a note to log.

        ``resume=true`` tries the regular checkpoints newest first (falling back from damaged
        ones); an explicit resume path is the only candidate; none: a new run from frame 0 (a
        run that stopped before its first checkpoint is moved to ``partial-<n>/`` first). A
        directory holding checkpoints is refused to a new run (``training/rundir.py``).
        """
        cfg = self.cfg
        run, explicit = self._resolve_run_dir()
        self._created = _make_dirs(run)
        self.run_dir = run
        try:
            self._lock = RunLock(run).acquire()  # first: a live run's directory is never touched
            searched = None if cfg.logging.run_dir else _run_parent(cfg)
            return prepare_run_dir(run, resume=cfg.resume, explicit=explicit, searched=searched)
        except BaseException:
            self._close_run_dir(remove=True)
            raise

    def _close_run_dir(self, *, remove: bool) -> None:
        """Release the run lock; with ``remove``, delete the run directory if this run made it."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if remove and self._created is not None:
            # The run dir goes; of the parents this run made, only the empty ones (another run
            # may have started under them meanwhile).
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if self._created != self.run_dir and self._created in self.run_dir.parents:
                for parent in self.run_dir.parents:
                    with contextlib.suppress(OSError):
                        parent.rmdir()
                    if parent == self._created:
                        break
            self._created = None

    def _reclaim(self) -> None:
        """Delete what a dead run left behind (called under the run lock: nobody else is here)."""
        run = self.run_dir
        removed = [p.name for p in remove_stale_temp(run / "checkpoints")]
        scratch = run / "replay_scratch"
        if not self.cfg.replay.scratch_dir and scratch.exists():
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

    def _state(self, comps: Components) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "method": self.cfg.method,
            "suite": self.cfg.env.suite,
            "env_id": self.cfg.env.env_id,
            "config": plain_config(self.cfg),  # what a resume compares (training/resume.py)
            "actor": comps.actor.state_dict(),
            "loss": comps.loss.state_dict(),
            "optimizer": comps.optimizer.state_dict(),
            "target_updater_counter": int(getattr(comps.target_updater, "counter", 0)),
            "counters": dataclasses.asdict(self.counters),
            "schedule": dataclasses.asdict(self.schedule),
            "evaluations": list(self.evaluations),
            "final_eval": dict(self.final_eval) if self.final_eval else {},
            "recent": {
                "scores": list(self.recent_scores),
                "lengths": list(self.recent_lengths),
                "success": list(self.recent_success),
            },
            "rng": get_rng_state(),
        }

    def _restore(self, comps: Components, ckpt: Path) -> list:
        """Restore ``ckpt``; return the accepted config changes (``training/resume.py``)."""
        loaded = load_checkpoint(ckpt)  # verifies every file against the manifest
        state = loaded["state"]
        counters, schedule = state_counters(state, path=loaded["path"])
        # Before any state is loaded: a refused config names its keys, not tensor shapes.
        trained, complete = trained_config(state, self.run_dir)
        changes = check_resume(
            trained, self.cfg, frames=counters.frames, checkpoint=loaded["path"], complete=complete
        )
        if loaded["replay_dir"] is not None:
            # First, so that a damaged replay snapshot leaves the rest untouched (fallback).
            # Chunks come from this run's own store only (a copied run dir is self-contained).
            load_replay(
                comps.replay, loaded["replay_dir"], chunk_store=self._chunk_store(comps.replay)
            )
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
        self.counters, self.schedule = counters, schedule
        self.evaluations = [dict(e) for e in state["evaluations"]]
        self.final_eval = dict(state["final_eval"]) or None
        self.recent_scores.extend(state["recent"]["scores"])
        self.recent_lengths.extend(state["recent"]["lengths"])
        self.recent_success.extend(state["recent"]["success"])
        set_rng_state(state["rng"])
        logger.info(
            "resumed from %s at %d frames, %d updates",
            loaded["path"],
            self.counters.frames,
            self.counters.updates,
        )
        return changes

    def _restore_any(self, comps: Components, candidates: list[Path]) -> tuple[Path | None, list]:
        """Restore the first good checkpoint of ``candidates``; warn about each damaged one.

        Only ``resume=true`` falls back; an explicit resume path that is damaged is an error.
        Returns the checkpoint (``None``: none, a new run) and the accepted config changes.
        """
        damaged = []
        for ckpt in candidates:
            try:
                changes = self._restore(comps, ckpt)
            except CheckpointCorruptError as err:
                if self.cfg.resume is not True:
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
            self.resumed_from = ckpt
            return ckpt, changes
        if damaged:
            raise CheckpointCorruptError(
                f"every checkpoint of {self.run_dir} is damaged, nothing to resume from: "
                f"{'; '.join(damaged)}. Resume from a crash checkpoint by its path "
                "(resume=<run>/checkpoints/crash_frames_N), or start a new run in another "
                "logging.run_dir."
            )
        return None, []

    def _chunk_store(self, replay: Any) -> Path | None:
        """``checkpoints/replay_chunks`` if the replay writes incremental snapshots, else None."""
        dumps = getattr(replay, "dumps", None)
        try:
            params = inspect.signature(dumps).parameters
        except (TypeError, ValueError):
            return None
        return self.run_dir / "checkpoints" / CHUNK_STORE if "chunk_store" in params else None

    def _prune_chunks(self, replay: Any, kept: list[Path]) -> None:
        store = self._chunk_store(replay)
        if store is None or not store.exists():
            return
        try:
            from torchrl_rise.replay import prune_chunk_store
        except ImportError:
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

    def _check_disk_budget(self, comps: Components, frame_skip: int) -> dict[str, int]:
        """Check that the disk holds the scratch memmaps plus the checkpoints kept at once."""
        budget = disk_budget(
            self.cfg,
            comps,
            frame_skip=frame_skip,
            incremental=self._chunk_store(comps.replay) is not None,
        )
        ckpt_dir = self.run_dir / "checkpoints"
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
                f"{self._increment_note(budget['incremental'])}"
                f" and model/optimizer {budget['state'] / 2**30:.3f} GiB each; "
                f"{existing / 2**30:.2f} GiB of checkpoints already there)"
            ),
            hint=(
                "Lower replay.capacity or checkpoint.keep, set checkpoint.save_replay=false, or "
                "put logging.run_dir / replay.scratch_dir on a larger disk."
            ),
        )
        return budget

    def _increment_note(self, incremental: bool) -> str:
        if not incremental:
            return ""
        if self.cfg.checkpoint.keep > 1:
            return " per increment after two full snapshots (consecutive ones share no chunk)"
        return " per increment after a first full snapshot"

    def _save(self, comps: Components, *, crash: bool = False) -> Path:
        """A regular checkpoint (``latest``, pruning) or, with ``crash``, a crash checkpoint."""
        cfg = self.cfg
        if not crash:
            self.schedule.next_checkpoint = _next_multiple(
                self.counters.frames, cfg.checkpoint.interval_frames
            )
        save_replay = None
        if cfg.checkpoint.save_replay and self.counters.env_steps:
            store = self._chunk_store(comps.replay)
            # keep >= 2: consecutive checkpoints share no chunk file (one bad chunk costs one)
            save_replay = functools.partial(
                dump_replay, comps.replay, chunk_store=store, redundant=cfg.checkpoint.keep > 1
            )
        try:
            return save_checkpoint(
                self.run_dir / "checkpoints",
                self._state(comps),
                step=int(self.counters.frames),
                save_replay=save_replay,
                keep=cfg.checkpoint.keep,
                crash=crash,
                on_pruned=lambda kept: self._prune_chunks(comps.replay, kept),
            )
        except Exception as err:
            if not is_disk_full(err):
                raise
            previous = find_latest_checkpoint(self.run_dir / "checkpoints")
            command = f"logging.run_dir={self.run_dir} resume=true"
            then = (
                f"{previous} is intact. Free some space, then resume from it: {command}"
                if previous is not None
                else "there is no earlier checkpoint, so nothing to resume from. Free some "
                "space, then start the run again from frame 0 (its logs are kept in "
                f"partial-<n>/): {command}"
            )
            raise DiskFullError(
                f"the disk of {self.run_dir} is full: the checkpoint at "
                f"{self.counters.frames} frames could not be written ({err}). Its partial "
                f"folder was removed; {then}."
            ) from err

    # ------------------------------------------------------------------ pieces of an iteration
    def _track_episodes(self, batch, env_info) -> None:
        nxt = batch.get("next")
        done = nxt.get("done").reshape(-1)
        if not done.any():
            return
        score = nxt.get(env_info.score_key).reshape(-1)[done]
        length = nxt.get(env_info.length_key, None)
        self.recent_scores.extend(score.double().tolist())
        if length is not None:
            self.recent_lengths.extend(length.reshape(-1)[done].double().tolist())
        if env_info.success_key is not None and env_info.success_key in nxt.keys(True):
            success = nxt.get(env_info.success_key).reshape(-1)[done]
            self.recent_success.extend(success.double().tolist())
        self.counters.episodes += int(done.sum())

    def _learner(self, comps: Components) -> Learner:
        """The update step (sample -> loss -> Adam -> priorities -> target update), host-sync free."""
        cfg = self.cfg
        return Learner(
            comps.loss,
            comps.optimizer,
            comps.replay,
            comps.target_updater,
            device=cfg.device,
            grad_clip=cfg.optim.grad_clip,
            bf16=cfg.optim.bf16,
            prefetch=cfg.replay.prefetch,
        )

    def _evaluate(self, comps: Components, *, final: bool = False) -> EvalResult | None:
        """One evaluation, logged; ``None`` if a stop request abandoned it (nothing logged)."""
        cfg = self.cfg
        if self._eval_env is None:
            self._eval_env = comps.eval_env_factory()
            torch.set_num_threads(self._num_threads)
        result = evaluate(
            evaluation_policy(cfg, comps.net),  # the net, or one LSTM step of it (recurrent)
            self._eval_env,
            episodes=cfg.eval.episodes,
            eps=cfg.eval.eps,
            max_steps=cfg.eval.max_steps,
            score_key=comps.env_info.score_key,
            success_key=comps.env_info.success_key or "success",
            record_video=cfg.eval.video,
            frame_channels=comps.env_info.frame_channels,
            device=None if cfg.device == "cpu" else cfg.device,
            should_stop=lambda: self.stopping,
        )
        if result.interrupted:
            return None  # next_eval stays: a resumed run evaluates these frames again
        self.schedule.next_eval = _next_multiple(self.counters.frames, cfg.eval.interval_frames)
        row = {
            "frames": self.counters.frames,
            "updates": self.counters.updates,
            "walltime_s": self._walltime(),
            **result.row(),
        }
        self.logs.log_eval(row)
        entry = {k: row[k] for k in ("frames", "mean", "std", "n")}
        if result.success_rate is not None:
            entry["success_rate"] = result.success_rate
        self.evaluations.append(entry)
        self.final_eval = {**entry, "episodes": list(result.scores)}
        if result.frames is not None:
            path = self.logs.log_video(
                result.frames, step=self.counters.frames, fps=cfg.eval.video_fps
            )
            logger.info("evaluation video: %s", path)
        logger.info(
            "evaluation at %d frames: mean %.3f +- %.3f over %d episodes%s",
            self.counters.frames,
            result.mean,
            result.std,
            result.n,
            " (final)" if final else "",
        )
        return result

    def _walltime(self) -> float:
        return self._walltime_base + (time.perf_counter() - self._t0)

    def _train_row(self, stats: dict[str, float], fps: float, eps: float, replay_len: int):
        """A train.csv row; ``stats`` are the learner's means since the last row."""
        mean = lambda xs: float(np.mean(xs)) if xs else math.nan  # noqa: E731
        row = {
            "frames": self.counters.frames,
            "updates": self.counters.updates,
            "episodes": self.counters.episodes,
            "walltime_s": self._walltime(),
            "fps": fps,
            "return_recent": mean(self.recent_scores),
            "episode_length_recent": mean(self.recent_lengths),
            "success_recent": mean(self.recent_success) if self.recent_success else None,
            "loss": stats.get("loss", math.nan),
            "td_error": stats.get("td_error", math.nan),
            "q_mean": stats.get("q_mean", math.nan),
            "grad_norm": stats.get("grad_norm", math.nan),
            "eps": eps,
            "replay_size": replay_len,
        }
        row.update({k: v for k, v in stats.items() if k.startswith("gate_")})
        return row

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        """Train until ``total_frames`` (or a stop request); return the summary dict.

        Everything the run opens is closed by one :class:`contextlib.ExitStack`, in reverse
        order: the collector (before the final evaluation and checkpoint), then the loggers, the
        replay (and its scratch memmaps once a checkpoint holds them), the evaluation env, the
        ``train.log`` handler and last the run lock (with the run directory if nothing was
        written to it).

        Raises:
            ConfigError: a bad configuration or a refused resume (nothing trained).
            RunInUseError: another live process holds the run directory's lock.
            CheckpointCorruptError: the checkpoint to resume from is damaged (an explicit path,
                or every checkpoint of the run for ``resume=true``).
            CollectorExhaustedError, DiskFullError, NonFiniteStateError, ...: any error of the
                run itself, re-raised after ``summary.json`` says ``failed``.
        """
        cfg = self.cfg
        torch.set_num_threads(self._num_threads)
        # Gradients decaying through long LSTM windows reach denormal floats, which the CPU
        # handles ~100x slower: K=160 cost 5.3 s per LSTM backward instead of 0.9 s (batch 256).
        # Flushing them to zero changes nothing above 1e-38.
        torch.set_flush_denormal(True)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        resolved = config_to_dict(cfg)

        error: BaseException | None = None
        with contextlib.ExitStack() as resources:
            candidates, note = self._open_run_dir()  # the run lock is held from here on
            resources.callback(self._release_run_dir)
            resources.enter_context(self._file_log())
            logger.info("run directory: %s", self.run_dir.resolve())
            if note:
                logger.warning(note)
            self._reclaim()
            resources.enter_context(self._signals())
            try:
                with contextlib.ExitStack() as collecting:
                    collector = self._start(candidates, resolved, resources, collecting)
                    self._loop(self.components, collector, int(self.components.env_info.frame_skip))
            except BaseException as err:
                error = err
            error = self._finish(error, resolved)
        if error is not None:
            raise error
        return self.summary

    def _start(
        self,
        candidates: list[Path],
        resolved: dict[str, Any],
        resources: contextlib.ExitStack,
        collecting: contextlib.ExitStack,
    ):
        """Build, check the disk, restore, open the logs, build the collector.

        What it opens goes on ``resources`` (closed when the run ends) or, for the collector, on
        ``collecting`` (shut down before the final evaluation and checkpoint).
        """
        cfg = self.cfg
        assembly = self.assembly if self.assembly is not None else build_assembly(cfg)
        resources.callback(self._close_eval_env)
        comps = assembly.components(scratch_dir=self.run_dir / "replay_scratch")
        self.components = comps
        resources.callback(self._close_replay, comps.replay)
        frame_skip = int(comps.env_info.frame_skip)
        self._check_disk_budget(comps, frame_skip)
        # a crash mid-save may have left chunks no checkpoint references
        self._prune_chunks(
            comps.replay,
            [p for p in (self.run_dir / "checkpoints").glob("*frames_*") if p.is_dir()],
        )
        ckpt, changes = self._restore_any(comps, candidates)
        # Only now is the resume accepted: config.json (a new run) or config_history.jsonl
        record_config(self.run_dir, resolved, changes, frames=self.counters.frames, checkpoint=ckpt)
        self.logs = assembly.make_logger(
            run_dir=self.run_dir,
            config=resolved,
            drop_after_frames=int(self.counters.frames) if ckpt is not None else None,
        )
        resources.callback(self.logs.close)
        self._walltime_base = float(self.counters.walltime_s)
        self._t0 = time.perf_counter()
        if self.schedule.next_eval == 0:
            self.schedule.next_eval = cfg.eval.interval_frames
            self.schedule.next_checkpoint = cfg.checkpoint.interval_frames
            self.schedule.next_log = cfg.logging.interval_frames
        self._iterations_at_start = int(self.counters.iterations)

        def make_collector():
            # Workers inherit an ignored SIGINT, so Ctrl-C reaches only this process, which
            # stops cleanly and then shuts the workers down; ray.init's handlers are undone.
            with keep_signal_handlers(), _ignore_sigint():
                c = self.counters  # resumed or rebuilt: not the episodes it already saw
                return assembly.make_collector(
                    seed=cfg.seed + 7919 * c.iterations + 7907 * c.worker_restarts
                )

        # multi_sync / ray: bounded waits, lost workers replaced (training/supervision.py)
        collector = supervise(
            cfg.collector,
            make_collector,
            should_stop=lambda: self.stopping,
            on_restart=self._worker_restarted,
        )
        collecting.callback(_quietly, collector.shutdown)
        if cfg.collector.overlap and not isinstance(collector, OverlappedCollector):
            raise ConfigError(
                f"collector.overlap=true, but the assembly's make_collector returned a "
                f"{type(collector).__name__}, not an OverlappedCollector: collection and learning "
                "would still alternate. Build it with builders.build_collector (it wraps the "
                "collector when collector.overlap is set), or set collector.overlap=false."
            )
        # TorchRL's batched envs and collectors set the thread count of this process
        # themselves; the learner's share is ours to choose.
        torch.set_num_threads(self._num_threads)
        return collector

    def _worker_restarted(self, lost_batch: bool) -> None:
        """The collector was rebuilt: count it; its envs start fresh episodes in every lane."""
        self.counters.worker_restarts += 1
        self.counters.lost_batches += int(lost_batch)
        self.components.replay.close_open_episodes()

    @property
    def _started(self) -> bool:
        """Whether the loop's clock runs: the pieces are built, restored and logged."""
        return self.components is not None and self.logs is not None and self._t0 is not None

    def _finish(self, error: BaseException | None, resolved: dict[str, Any]):
        """Final evaluation, checkpoint and summary (the collector is shut down already).

        Returns the error to raise (``None``: the run finished or was stopped).
        """
        cfg = self.cfg
        c = self.counters
        comps = self.components
        if self._started and error is None:
            try:
                complete = c.frames >= cfg.total_frames
                if (
                    complete
                    and not self.stopping
                    and cfg.eval.final
                    and (not self.evaluations or self.evaluations[-1]["frames"] != c.frames)
                ):
                    self._evaluate(comps, final=True)
                c.walltime_s = self._walltime()
                self._save(comps)
                self._saved = True
            except BaseException as err:
                error = err
        if error is None:
            finished = c.frames >= cfg.total_frames and not self.stopping
            self.status = "finished" if finished else "interrupted"
            self.reason = None if finished else f"stop requested ({self._stop_reason})"
        else:
            self.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            self.reason = f"{type(error).__name__}: {error}"
            logger.error(
                "run failed at %d frames, %d updates: %s", c.frames, c.updates, self.reason
            )
            if self._started:
                self._crash_checkpoint(comps, error)
        if self._started:
            c.walltime_s = self._walltime()
            self.summary = make_summary(
                config=resolved,
                run_dir=self.run_dir,
                encoder=comps.encoder_info,
                frames=c.frames,
                updates=c.updates,
                episodes=c.episodes,
                walltime_s=c.walltime_s,
                evaluations=self.evaluations,
                final=self.final_eval,
                status=self.status,
                reason=self.reason,
            )
            try:
                write_summary(self.run_dir / "summary.json", self.summary)
            except OSError as err:
                logger.error("could not write summary.json: %s", err)
        return error

    # ------------------------------------------------------------------ resources
    @contextlib.contextmanager
    def _file_log(self) -> Iterator[None]:
        """``<run>/train.log`` gets the package's log records while the run lasts."""
        handler = logging.FileHandler(self.run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package = logging.getLogger("torchrl_rise")
        package.addHandler(handler)
        if package.getEffectiveLevel() > logging.INFO:
            package.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.info("run %s (%s): %s", self.status, self.reason or "done", self.run_dir)
            package.removeHandler(handler)
            handler.close()

    def _release_run_dir(self) -> None:
        """Release the run lock; a start that wrote nothing leaves no run directory behind."""
        keep = (
            self.summary is not None
            or _collected_anything(self)
            or bool(list_checkpoints(self.run_dir))
        )
        self._close_run_dir(remove=not keep)

    def _close_replay(self, replay: Any) -> None:
        close = getattr(replay, "close", None)
        if callable(close):
            _quietly(close)
        # The checkpoint holds the buffer; the working memmaps are not needed anymore.
        if self._saved and not self.cfg.replay.scratch_dir and self.cfg.checkpoint.save_replay:
            shutil.rmtree(self.run_dir / "replay_scratch", ignore_errors=True)

    def _close_eval_env(self) -> None:
        if self._eval_env is not None:
            _quietly(self._eval_env.close)
            self._eval_env = None

    def _crash_checkpoint(self, comps: Components, error: BaseException) -> None:
        """After an error: a crash checkpoint if the state is consistent, else none (and why)."""
        if not _collected_anything(self):
            return
        if isinstance(error, DiskFullError) or is_disk_full(error):
            logger.error("disk full: no crash checkpoint; the last regular one is intact")
            return
        if not self._consistent:
            logger.error(
                "the error interrupted a step (the replay or the weights are half updated): no "
                "crash checkpoint; resume from the last regular one"
            )
            return
        try:
            path = self._save(comps, crash=True)
        except Exception as err:
            logger.error("could not write a crash checkpoint: %s", err)
            return
        logger.error(
            "crash checkpoint %s written; resume=true ignores it, resume=%s uses it", path, path
        )

    def _batches(self, collector) -> Iterator[Any]:
        """The collector's batches; an error after a stop request ends them instead of the run.

        A scheduler's SIGTERM often reaches the collector's worker processes too, which then die
        while this process is still finishing its step: the collector fails at the next batch,
        at a step boundary, and the stop goes on as requested (checkpoint, ``interrupted``).
        """
        batches = iter(collector)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as err:
                if not self.stopping:
                    raise
                logger.warning(
                    "the collector failed after the stop request (%s: %s), e.g. its workers got "
                    "the signal too; stopping here",
                    type(err).__name__,
                    err,
                )
                self._collector_failed = True
                return
            yield batch

    def _loop(self, comps: Components, collector, frame_skip: int) -> None:
        learner = self._learner(comps)
        try:
            self._steps(comps, collector, frame_skip, learner)
        finally:
            learner.close()  # replay.prefetch: the batch in flight is dropped

    def _steps(self, comps: Components, collector, frame_skip: int, learner: Learner) -> None:
        cfg = self.cfg
        c = self.counters
        sch = self.schedule
        num_envs = cfg.env.num_envs
        last_log_t, last_log_frames = time.perf_counter(), c.frames
        from torchrl_rise.modules import resample_noise

        explore = comps.actor.module[-1]
        # collector.overlap: the collector runs in a thread one batch ahead (training/overlap.py)
        overlapped = collector if isinstance(collector, OverlappedCollector) else None
        with _progress(cfg, initial=c.frames) as bar:
            last_bar = time.perf_counter()
            if c.frames >= cfg.total_frames:
                return
            if c.frames >= sch.next_eval and c.frames and not self.stopping:
                self._evaluate(comps)  # abandoned by the stop request that saved this checkpoint
            for batch in self._batches(collector):
                if batch.ndim == 3:  # Ray: [workers, envs per worker, T]
                    batch = batch.reshape(-1, batch.shape[-1])
                steps = batch.numel()
                self._consistent = False  # until the step's updates are done
                comps.replay.extend(batch)
                self._track_episodes(batch, comps.env_info)
                c.env_steps += steps
                c.frames += steps * frame_skip
                c.iterations += 1
                explore.step(steps * frame_skip)

                n_updates = 0
                if c.env_steps >= cfg.replay.learning_starts:
                    sch.update_credit += steps / num_envs * cfg.optim.updates_per_vector_step
                    n_updates = int(sch.update_credit)
                    sch.update_credit -= n_updates
                    if n_updates:
                        learner.update(n_updates)  # resamples the noise, too
                        c.updates += n_updates
                else:
                    resample_noise(comps.net)  # fresh acting noise while the buffer fills
                # Replay, weights and counters agree from here on: a failed weight push below
                # still gets a crash checkpoint.
                self._consistent = True
                if n_updates and overlapped is None:
                    collector.update_policy_weights_()
                if overlapped is not None:
                    # weights, noise and eps all changed: the thread's next batch acts with them
                    overlapped.update_policy_weights_()

                now = time.perf_counter()
                bar.update(steps * frame_skip)
                if now - last_bar > 1.0:
                    recent = np.mean(self.recent_scores) if self.recent_scores else math.nan
                    bar.set_postfix(
                        fps=f"{(c.frames - last_log_frames) / max(now - last_log_t, 1e-9):.0f}",
                        ret=f"{recent:.2f}",
                        upd=c.updates,
                        refresh=False,
                    )
                    last_bar = now
                if c.frames >= sch.next_log or c.frames >= cfg.total_frames or self.stopping:
                    fps = (c.frames - last_log_frames) / max(now - last_log_t, 1e-9)
                    self.logs.log_train(
                        self._train_row(learner.stats(), fps, float(explore.eps), len(comps.replay))
                    )
                    last_log_t, last_log_frames = now, c.frames
                    sch.next_log = _next_multiple(c.frames, cfg.logging.interval_frames)
                done = c.frames >= cfg.total_frames
                if c.frames >= sch.next_eval and not done and not self.stopping:
                    t_eval = time.perf_counter()
                    with _paused(overlapped):  # the thread's next batch waits, uncounted
                        self._evaluate(comps)
                    last_log_t += time.perf_counter() - t_eval  # fps counts training time only
                if c.frames >= sch.next_checkpoint and not done and not self.stopping:
                    c.walltime_s = self._walltime()
                    t_save = time.perf_counter()
                    with _paused(overlapped):
                        self._save(comps)
                    last_log_t += time.perf_counter() - t_save
                if done or self.stopping:
                    break
            else:
                if self._collector_failed:
                    return
                got = c.iterations - self._iterations_at_start
                raise CollectorExhaustedError(
                    f"the collector stopped after {got} batches, at {c.frames} of "
                    f"total_frames={cfg.total_frames} frames ({c.updates} updates)"
                    + (": it yielded nothing" if got == 0 else "")
                    + ". A run only finishes once it collected total_frames; check the "
                    "collector's total_frames and the env workers' logs."
                )


def _paused(overlapped: OverlappedCollector | None):
    """Hold an overlapped collector's thread at a batch boundary (nothing for a sync one)."""
    return contextlib.nullcontext() if overlapped is None else overlapped.paused()


def _next_multiple(frames: int, interval: int) -> int:
    """The first multiple of ``interval`` strictly after ``frames``."""
    return (frames // interval + 1) * interval


def default_num_threads(cfg: TrainConfig) -> int:
    """``cfg.num_threads``, else half the cores (at least 1).

    The other half is left to the simulators (ALE's vector env runs C++ threads; worker processes
    of multi-process collectors run their own envs). On a busy 2-core machine, 2 torch threads
    contending with env threads made small convolutions up to 100x slower than 1 thread.
    """
    if cfg.num_threads is not None:
        return cfg.num_threads
    return max(1, (os.cpu_count() or 2) // 2)


def _collected_anything(trainer: Trainer) -> bool:
    """Whether the loop collected anything (worth a checkpoint after a crash)."""
    return trainer.counters.env_steps > 0 and trainer._t0 is not None


def _quietly(close: Any) -> None:
    """Call ``close()``; a resource that fails to close must not hide the run's own outcome."""
    try:
        close()
    except Exception as err:
        logger.warning("closing %s failed: %s", getattr(close, "__qualname__", close), err)


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


@contextlib.contextmanager
def _ignore_sigint() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _progress(cfg: TrainConfig, *, initial: int):
    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.total_frames,
        initial=initial,
        unit="frame",
        unit_scale=True,
        dynamic_ncols=True,
        disable=not cfg.logging.progress,
        desc=f"{cfg.method} {cfg.env.env_id}",
        smoothing=0.05,
    )
    try:
        yield bar
    finally:
        bar.close()


def train(cfg: Any) -> dict[str, Any]:
    """Train as ``cfg`` says and return the summary (also written to ``<run_dir>/summary.json``).

    Args:
        cfg: a :class:`TrainConfig`, a dict or a hydra ``DictConfig`` (see ``recipes/config/``).

    Example:
        >>> import tempfile
        >>> summary = train({"method": "btr", "total_frames": 32,
        ...     "env": {"suite": "memory", "env_id": "cue-L3", "num_envs": 4, "frame_size": 16},
        ...     "network": {"kwargs": {"width_scale": 0.25, "mlp_hidden": 16}},
        ...     "replay": {"capacity": 128, "batch_size": 4, "learning_starts": 16},
        ...     "eval": {"episodes": 2, "num_envs": 2},
        ...     "logging": {"progress": False, "root": tempfile.mkdtemp()}})
        >>> sorted(summary["scores"])
        ['best', 'evaluations', 'final']
    """
    return Trainer.from_components(cfg).run()
