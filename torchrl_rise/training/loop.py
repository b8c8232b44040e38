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

The parts (docs/training.md, "The trainer's parts"): :class:`~.rundir.RunDirectory` (directory,
lock, ``train.log``), :func:`~.run_state.restore_first_good` (resume),
:class:`~.checkpoint_policy.CheckpointPolicy` (checkpoints, chunk store, disk),
:class:`~.stopping.StopControl` (stop requests, signals), :class:`~.eval_schedule.EvalSchedule`
and :class:`~.eval_schedule.Evaluator` (evaluations), :mod:`~.metrics` (episodes, rows, speed)
and :mod:`~.counters`; the loop itself is :meth:`Trainer._steps`.

Frame counters follow the Atari convention: ``frames`` = agent steps x the env's frame skip (4 for
Atari), so ``total_frames``, the eval/checkpoint/log intervals and the eps schedule are in simulator
frames, while replay sizes (``capacity``, ``learning_starts``, ``batch_size``) count transitions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_rise.modules import resample_noise
from torchrl_rise.training.builders import Assembly, Components, build_assembly
from torchrl_rise.training.checkpoint_policy import (
    CheckpointPolicy,
    DiskFullError,
)
from torchrl_rise.training.config import ConfigError, TrainConfig, config_to_dict, load_config
from torchrl_rise.training.counters import (
    STATE_FORMAT,
    Counters,
    Schedule,
    next_multiple,
    state_counters,
)
from torchrl_rise.training.eval_schedule import EvalSchedule, Evaluator
from torchrl_rise.training.evaluation import EvalResult, evaluate
from torchrl_rise.training.learner import Learner
from torchrl_rise.training.loggers import RunLogger
from torchrl_rise.training.metrics import (
    ProgressBar,
    RecentEpisodes,
    Throughput,
    WallClock,
    train_row,
)
from torchrl_rise.training.overlap import OverlappedCollector
from torchrl_rise.training.resume import record_config
from torchrl_rise.training.run_state import checkpoint_state, restore_first_good
from torchrl_rise.training.rundir import RUN_MARKERS, RunDirectory
from torchrl_rise.training.stopping import (
    StopControl,
    StoppableBatches,
    ignore_sigint,
    run_outcome,
)
from torchrl_rise.training.summary import make_summary, write_summary
from torchrl_rise.training.supervision import keep_signal_handlers, supervise

__all__ = [
    "STATE_FORMAT",
    "CollectorExhaustedError",
    "Counters",
    "DiskFullError",
    "Schedule",
    "Trainer",
    "state_counters",
    "train",
]

logger = logging.getLogger(__name__)

# recipes/benchmark.py reads the run markers from here
_RUN_MARKERS = RUN_MARKERS


class CollectorExhaustedError(RuntimeError):
    """The collector stopped yielding batches before the run collected ``total_frames``."""


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
        counters: a :class:`Counters` (frames, env_steps, updates, episodes, iterations...).
        schedule: a :class:`Schedule` (update credit and the next eval/checkpoint/log frames).

    Call :meth:`request_stop` (or send SIGINT/SIGTERM) to stop after the current step: the run
    abandons a running evaluation, checkpoints, flushes its logs and writes ``summary.json`` with
    ``status: interrupted`` (a second signal also skips the final evaluation, a third exits at
    once without saving: :mod:`~torchrl_rise.training.stopping`). An exception fails the run
    (``status: failed``) and writes at most a crash checkpoint ``checkpoints/crash_frames_<N>/``
    (if the state is consistent), which ``resume=true`` never picks.

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
        self.components: Components | None = None
        self.counters = Counters()
        self.schedule = Schedule()
        self.recent = RecentEpisodes()
        self.logs: RunLogger | None = None
        self.resumed_from: Path | None = None
        self.status: str | None = None
        self.reason: str | None = None
        self.summary: dict[str, Any] | None = None
        self._evals = EvalSchedule(
            interval_frames=self.cfg.eval.interval_frames, final=self.cfg.eval.final
        )
        self.evaluations = self._evals.history  # the evaluations so far (summary.json's)
        self._stop = StopControl()
        self._run = RunDirectory(self.cfg)
        self._checkpoints: CheckpointPolicy | None = None  # once the run directory is known
        # False while a step (extend + updates) is half done: no checkpoint of such a state.
        self._consistent = True
        self._evaluator: Evaluator | None = None  # its eval envs are made at the first one
        self._num_threads = default_num_threads(self.cfg)
        self._clock = WallClock()  # started once the pieces are built, restored and logged
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

    @property
    def run_dir(self) -> Path | None:
        """The run directory (``None`` before :meth:`run` resolved it)."""
        return self._run.path

    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current step (checkpoint, flush logs, write the summary)."""
        self._stop.request(reason)

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (by :meth:`request_stop` or a signal)."""
        return self._stop.requested

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Train until ``total_frames`` (or a stop request); return the summary dict.

        What the run opens is closed in reverse order: the collector (before the final
        evaluation and checkpoint), the loggers, the replay (its scratch memmaps too once a
        checkpoint holds them), the eval envs, ``train.log`` and last the run lock (and the run
        directory if nothing was written to it).

        Raises:
            ConfigError: a bad configuration or a refused resume (nothing trained).
            RunInUseError: another live process holds the run directory's lock.
            CheckpointCorruptError: the checkpoint to resume from is damaged (an explicit path,
                or every checkpoint of the run for ``resume=true``).
            CollectorExhaustedError, DiskFullError, NonFiniteStateError, ...: any error of the
                run itself, re-raised after ``summary.json`` says ``failed``.
        """
        _seed_everything(self.cfg.seed, num_threads=self._num_threads)
        resolved = config_to_dict(self.cfg)
        error: BaseException | None = None
        with contextlib.ExitStack() as resources:
            candidates, note = self._run.open()  # the run lock is held from here on
            resources.callback(self._release_run_dir)
            resources.enter_context(self._run.file_log())
            resources.callback(self._log_outcome)
            logger.info("run directory: %s", self.run_dir.resolve())
            if note:
                logger.warning(note)
            self._run.reclaim(own_scratch=not self.cfg.replay.scratch_dir)
            self._checkpoints = CheckpointPolicy(self.cfg, self.run_dir)
            resources.enter_context(self._stop.handle_signals())
            try:
                with contextlib.ExitStack() as collecting:
                    assembly = self._start(candidates, resolved, resources)
                    collector = _supervised_collector(
                        self.cfg,
                        assembly,
                        counters=lambda: self.counters,
                        should_stop=lambda: self.stopping,
                        on_restart=self._worker_restarted,
                        num_threads=self._num_threads,
                    )
                    collecting.callback(_quietly, collector.shutdown)
                    self._loop(self.components, collector, int(self.components.env_info.frame_skip))
            except BaseException as err:
                error = err
            error = self._finish(error, resolved)
        if error is not None:
            raise error
        return self.summary

    def _start(
        self, candidates: list[Path], resolved: dict[str, Any], resources: contextlib.ExitStack
    ) -> Assembly:
        """Build, check the disk, restore, open the logs (closed with ``resources``)."""
        cfg = self.cfg
        assembly = self.assembly if self.assembly is not None else build_assembly(cfg)
        resources.callback(self._close_evaluator)
        comps = assembly.components(scratch_dir=self.run_dir / "replay_scratch")
        self.components = comps
        own_scratch = not cfg.replay.scratch_dir and cfg.checkpoint.save_replay
        scratch = self.run_dir / "replay_scratch" if own_scratch else None
        resources.callback(lambda: _close_replay(comps.replay, scratch if self._saved else None))
        self._checkpoints.check_disk(comps, frame_skip=int(comps.env_info.frame_skip))
        self._checkpoints.prune_unreferenced_chunks()
        progress = restore_first_good(
            cfg, comps, candidates, run_dir=self.run_dir, chunk_store=self._checkpoints.chunk_store
        )
        self.counters, self.schedule = progress.counters, progress.schedule
        self._evals.load_state_dict(progress.evaluations)
        self.recent.load_state_dict(progress.recent)
        ckpt = self.resumed_from = progress.path  # None: a new run
        # Only now is the resume accepted: config.json (a new run) or config_history.jsonl
        c = self.counters
        record_config(self.run_dir, resolved, progress.changes, frames=c.frames, checkpoint=ckpt)
        self.logs = assembly.make_logger(
            run_dir=self.run_dir,
            config=resolved,
            drop_after_frames=int(c.frames) if ckpt is not None else None,
        )
        resources.callback(self.logs.close)
        self._evaluator = Evaluator(
            cfg,
            comps,
            self.logs,
            schedule=self._evals,
            run_episodes=evaluate,  # looked up now: tests stand in for loop.evaluate
            num_threads=self._num_threads,
            should_stop=lambda: self.stopping,
        )
        self._clock.start(base_s=float(self.counters.walltime_s))
        self.schedule.start(
            eval_every=cfg.eval.interval_frames,
            checkpoint_every=cfg.checkpoint.interval_frames,
            log_every=cfg.logging.interval_frames,
        )
        self._iterations_at_start = int(self.counters.iterations)
        return assembly

    def _worker_restarted(self, lost_batch: bool) -> None:
        """The collector was rebuilt: count it; its envs start fresh episodes in every lane."""
        self.counters.count_restart(lost_batch=lost_batch)
        self.components.replay.close_open_episodes()

    def _finish(self, error: BaseException | None, resolved: dict[str, Any]):
        """Final evaluation, checkpoint and summary (the collector is shut down already).

        Returns the error to raise (``None``: the run finished or was stopped).
        """
        c = self.counters
        if self._clock.started and error is None:
            try:
                self._final_evaluation_and_checkpoint()
            except BaseException as err:
                error = err
        complete = c.frames >= self.cfg.total_frames
        self.status, self.reason = run_outcome(error, complete=complete, stop=self._stop)
        if error is not None:
            logger.error(
                "run failed at %d frames, %d updates: %s", c.frames, c.updates, self.reason
            )
            if self._clock.started and self._collected_anything():
                self._checkpoints.crash_checkpoint(
                    error,
                    consistent=self._consistent,
                    save=lambda: self._save(self.components, crash=True),
                )
        if self._clock.started:
            c.walltime_s = self._clock.walltime()
            self.summary = _write_summary(
                resolved,
                self.run_dir,
                self.components,
                c,
                self._evals,
                status=self.status,
                reason=self.reason,
            )
        return error

    def _final_evaluation_and_checkpoint(self) -> None:
        c = self.counters
        if c.frames >= self.cfg.total_frames and not self.stopping and self._evals.final_due(c):
            self._evaluate(self.components, final=True)
        c.walltime_s = self._clock.walltime()
        self._save(self.components)
        self._saved = True

    # ------------------------------------------------------------------ resources
    def _log_outcome(self) -> None:
        logger.info("run %s (%s): %s", self.status, self.reason or "done", self.run_dir)

    def _release_run_dir(self) -> None:
        """Release the run lock; a start that wrote nothing leaves no run directory behind."""
        self._run.release(wrote=self.summary is not None or self._collected_anything())

    def _close_evaluator(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()

    # ------------------------------------------------------------------ checkpoints
    def _save(self, comps: Components, *, crash: bool = False) -> Path:
        """A regular checkpoint (``latest``, pruning) or, with ``crash``, a crash checkpoint."""
        c = self.counters
        if not crash:
            interval = self.cfg.checkpoint.interval_frames
            self.schedule.next_checkpoint = next_multiple(c.frames, interval)
        state = checkpoint_state(
            self.cfg,
            comps,
            counters=c,
            schedule=self.schedule,
            evaluations=self._evals.state_dict(),
            recent=self.recent.state_dict(),
        )
        return self._checkpoints.save(
            state,
            replay=comps.replay,
            frames=int(c.frames),
            env_steps=c.env_steps,
            crash=crash,
        )

    def _collected_anything(self) -> bool:
        """Whether the loop collected anything (worth a checkpoint after a crash)."""
        return self.counters.env_steps > 0 and self._clock.started

    # ------------------------------------------------------------------ pieces of a step
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

    def _track_episodes(self, batch: Any, env_info: Any) -> None:
        self.counters.episodes += self.recent.track(batch, env_info)

    def _evaluate(self, comps: Components, *, final: bool = False) -> EvalResult | None:
        """One evaluation, logged; ``None`` if a stop request abandoned it (nothing logged)."""
        return self._evaluator.evaluate(
            self.counters, self.schedule, walltime=self._clock.walltime, final=final
        )

    def _store(self, comps: Components, batch: Any, frame_skip: int) -> int:
        """Extend the replay with ``batch``, count it, advance eps; return its transitions."""
        if batch.ndim == 3:  # Ray: [workers, envs per worker, T]
            batch = batch.reshape(-1, batch.shape[-1])
        steps = batch.numel()
        self._consistent = False  # until the step's updates are done
        comps.replay.extend(batch)
        self._track_episodes(batch, comps.env_info)
        self.counters.count_batch(steps=steps, frame_skip=frame_skip)
        comps.actor.step(steps * frame_skip)
        return steps

    def _learn(self, comps: Components, learner: Learner, steps: int) -> int:
        """The updates ``steps`` transitions earn once the replay is warm; return how many."""
        cfg, c = self.cfg, self.counters
        n_updates = 0
        if c.env_steps >= cfg.replay.learning_starts:
            n_updates = self.schedule.updates_due(
                steps=steps,
                num_envs=cfg.env.num_envs,
                updates_per_vector_step=cfg.optim.updates_per_vector_step,
            )
            if n_updates:
                learner.update(n_updates)  # resamples the noise, too
                c.updates += n_updates
        else:
            resample_noise(comps.net)  # fresh acting noise while the buffer fills
        # Replay, weights and counters agree from here on: a failed weight push still gets a
        # crash checkpoint.
        self._consistent = True
        return n_updates

    def _log_train_row(self, learner: Learner, throughput: Throughput, *, now: float) -> None:
        c = self.counters
        fps = throughput.fps(frames=c.frames, now=now)
        self.logs.log_train(
            train_row(
                c,
                self.recent,
                learner.stats(),
                walltime_s=self._clock.walltime(),
                fps=fps,
                eps=self.components.actor.exploration_eps,
                replay_size=len(self.components.replay),
            )
        )
        throughput.restart(frames=c.frames, now=now)
        self.schedule.next_log = next_multiple(c.frames, self.cfg.logging.interval_frames)

    def _loop(self, comps: Components, collector: Any, frame_skip: int) -> None:
        learner = self._learner(comps)
        try:
            self._steps(comps, collector, frame_skip, learner)
        finally:
            learner.close()  # replay.prefetch: the batch in flight is dropped

    def _steps(self, comps: Components, collector: Any, frame_skip: int, learner: Learner) -> None:
        """The loop: collect, extend, learn, publish weights, log, evaluate, checkpoint."""
        cfg, c, sch = self.cfg, self.counters, self.schedule
        # collector.overlap: the collector runs in a thread one batch ahead (training/overlap.py)
        overlapped = collector if isinstance(collector, OverlappedCollector) else None
        throughput = Throughput(frames=c.frames)
        with ProgressBar.of_run(cfg, initial=c.frames) as bar:
            if c.frames >= cfg.total_frames:
                return
            if self._evals.due(c, sch) and c.frames and not self.stopping:
                self._evaluate(comps)  # abandoned by the stop request that saved this checkpoint
            batches = StoppableBatches(collector, self._stop)
            for batch in batches:
                steps = self._store(comps, batch, frame_skip)
                n_updates = self._learn(comps, learner, steps)
                _publish_weights(collector, overlapped, n_updates)

                now = time.perf_counter()
                fps = throughput.fps(frames=c.frames, now=now)
                bar.advance(
                    steps * frame_skip,
                    now=now,
                    fps=fps,
                    ret=self.recent.mean_score(),
                    updates=c.updates,
                )
                done = c.frames >= cfg.total_frames
                if c.frames >= sch.next_log or done or self.stopping:
                    self._log_train_row(learner, throughput, now=now)
                if self._evals.due(c, sch) and not done and not self.stopping:
                    with throughput.paused(), _paused(overlapped):  # the thread waits, uncounted
                        self._evaluate(comps)
                if c.frames >= sch.next_checkpoint and not done and not self.stopping:
                    c.walltime_s = self._clock.walltime()
                    with throughput.paused(), _paused(overlapped):
                        self._save(comps)
                if done or self.stopping:
                    return
            if not batches.failed_after_stop:
                raise _exhausted(cfg, c, got=c.iterations - self._iterations_at_start)


def _supervised_collector(
    cfg: TrainConfig,
    assembly: Assembly,
    *,
    counters: Callable[[], Counters],
    should_stop: Callable[[], bool],
    on_restart: Callable[[bool], None],
    num_threads: int,
) -> Any:
    """The assembly's collector, supervised (multi_sync / ray: lost workers replaced).

    Each build is seeded from the run's ``counters()`` at that moment (a resumed or rebuilt
    collector does not replay the episodes the run already saw).
    """

    def make_collector():
        # Workers inherit an ignored SIGINT, so Ctrl-C reaches only this process, which
        # stops cleanly and then shuts the workers down; ray.init's handlers are undone.
        with keep_signal_handlers(), ignore_sigint():
            c = counters()
            return assembly.make_collector(
                seed=cfg.seed + 7919 * c.iterations + 7907 * c.worker_restarts
            )

    # bounded waits, lost workers replaced (training/supervision.py)
    collector = supervise(
        cfg.collector, make_collector, should_stop=should_stop, on_restart=on_restart
    )
    if cfg.collector.overlap and not isinstance(collector, OverlappedCollector):
        _quietly(collector.shutdown)
        raise ConfigError(
            f"collector.overlap=true, but the assembly's make_collector returned a "
            f"{type(collector).__name__}, not an OverlappedCollector: collection and learning "
            "would still alternate. Build it with builders.build_collector (it wraps the "
            "collector when collector.overlap is set), or set collector.overlap=false."
        )
    # TorchRL's batched envs and collectors set the thread count of this process
    # themselves; the learner's share is ours to choose.
    torch.set_num_threads(num_threads)
    return collector


def _write_summary(
    resolved: dict[str, Any],
    run_dir: Path,
    comps: Components,
    c: Counters,
    evals: EvalSchedule,
    *,
    status: str,
    reason: str | None,
) -> dict[str, Any]:
    """Write ``<run_dir>/summary.json`` (an unwritable one is logged); return the summary."""
    summary = make_summary(
        config=resolved,
        run_dir=run_dir,
        encoder=comps.encoder_info,
        frames=c.frames,
        updates=c.updates,
        episodes=c.episodes,
        walltime_s=c.walltime_s,
        evaluations=evals.history,
        final=evals.last,
        status=status,
        reason=reason,
    )
    try:
        write_summary(run_dir / "summary.json", summary)
    except OSError as err:
        logger.error("could not write summary.json: %s", err)
    return summary


def _close_replay(replay: Any, scratch: Path | None) -> None:
    """Close the replay; delete its ``scratch`` memmaps (a checkpoint holds the buffer)."""
    close = getattr(replay, "close", None)
    if callable(close):
        _quietly(close)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def _exhausted(cfg: TrainConfig, c: Counters, *, got: int) -> CollectorExhaustedError:
    """The collector ended after ``got`` batches, before ``total_frames``."""
    return CollectorExhaustedError(
        f"the collector stopped after {got} batches, at {c.frames} of "
        f"total_frames={cfg.total_frames} frames ({c.updates} updates)"
        + (": it yielded nothing" if got == 0 else "")
        + ". A run only finishes once it collected total_frames; check the "
        "collector's total_frames and the env workers' logs."
    )


def _seed_everything(seed: int, *, num_threads: int) -> None:
    torch.set_num_threads(num_threads)
    # Gradients decaying through long LSTM windows reach denormal floats, which the CPU
    # handles ~100x slower: K=160 cost 5.3 s per LSTM backward instead of 0.9 s (batch 256).
    # Flushing them to zero changes nothing above 1e-38.
    torch.set_flush_denormal(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _publish_weights(
    collector: Any, overlapped: OverlappedCollector | None, n_updates: int
) -> None:
    """Let the collector act with the new weights (an overlapped one: weights, noise and eps)."""
    if overlapped is not None:
        overlapped.update_policy_weights_()  # the thread's next batch acts with them
    elif n_updates:
        collector.update_policy_weights_()


def _paused(overlapped: OverlappedCollector | None):
    """Hold an overlapped collector's thread at a batch boundary (nothing for a sync one)."""
    return contextlib.nullcontext() if overlapped is None else overlapped.paused()


def default_num_threads(cfg: TrainConfig) -> int:
    """``cfg.num_threads``, else half the cores (at least 1).

    The other half is left to the simulators (ALE's vector env runs C++ threads; worker processes
    of multi-process collectors run their own envs). On a busy 2-core machine, 2 torch threads
    contending with env threads made small convolutions up to 100x slower than 1 thread.
    """
    if cfg.num_threads is not None:
        return cfg.num_threads
    return max(1, (os.cpu_count() or 2) // 2)


def _quietly(close: Any) -> None:
    """Call ``close()``; a resource that fails to close must not hide the run's own outcome."""
    try:
        close()
    except Exception as err:
        logger.warning("closing %s failed: %s", getattr(close, "__qualname__", close), err)


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
