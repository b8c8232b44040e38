"""The training loop shared by every recipe.

collector -> replay -> learner -> target update -> evaluation -> logging -> checkpoint::

    for batch in collector:                      # [num_envs, steps_per_batch], acting policy
        replay.extend(batch)                     # frames once, embeddings once, per env lane
        for _ in range(updates_due):             # BTR: one update per vector step
            sample -> IQNLoss -> Adam (grad clip) -> priorities -> HardUpdate -> reset_noise
        actor.step(frames); collector.update_policy_weights_()
        every logging.interval_frames: train.csv row (+ gate diagnostics)
        every eval.interval_frames:    eval episodes on the eval envs -> eval.csv (+ video)
        every checkpoint.interval_frames, and on SIGINT/SIGTERM: checkpoint
    summary.json

Frame counters follow the Atari convention: ``frames`` = agent steps x the env's frame skip (4 for
Atari), so ``total_frames``, the eval/checkpoint/log intervals and the eps schedule are in simulator
frames, while replay sizes (``capacity``, ``learning_starts``, ``batch_size``) count transitions.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_rise.training.builders import Components, build_collector, build_components
from torchrl_rise.training.checkpoint import (
    find_latest_checkpoint,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from torchrl_rise.training.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    load_config,
)
from torchrl_rise.training.evaluation import EvalResult, evaluate
from torchrl_rise.training.loggers import RunLogger
from torchrl_rise.training.summary import make_summary, write_summary

__all__ = ["Trainer", "train"]

logger = logging.getLogger(__name__)

RECENT_EPISODES = 100


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "env"


def _run_parent(cfg: TrainConfig) -> Path:
    return (
        Path(cfg.logging.root)
        / cfg.env.suite
        / _safe(cfg.env.env_id)
        / cfg.method
        / f"seed{cfg.seed}"
    )


class Trainer:
    """Runs one training run described by a :class:`TrainConfig`.

    Args:
        cfg: the configuration (a :class:`TrainConfig`, a dict or a hydra ``DictConfig``).

    Attributes:
        run_dir: where logs, checkpoints and ``summary.json`` go (set by :meth:`run`).
        components: the built network, loss, optimizer, replay... (set by :meth:`run`).
        counters: ``frames``, ``env_steps``, ``updates``, ``episodes``, ``walltime_s``...

    Call :meth:`request_stop` (or send SIGINT/SIGTERM) to stop after the current step; the run then
    saves a checkpoint, flushes its logs and writes ``summary.json`` with ``status: interrupted``.

    Example:
        >>> cfg = {"method": "btr", "env": {"suite": "memory", "env_id": "cue-L4",
        ...        "num_envs": 4, "frame_size": 16}, "total_frames": 64,
        ...        "network": {"kwargs": {"width_scale": 0.25, "mlp_hidden": 16,
        ...                               "spectral_norm": False}},
        ...        "replay": {"capacity": 256, "batch_size": 8, "learning_starts": 32},
        ...        "eval": {"episodes": 2, "num_envs": 2}, "logging": {"progress": False}}
        >>> import tempfile
        >>> cfg["logging"]["root"] = tempfile.mkdtemp()
        >>> summary = Trainer(cfg).run()
        >>> summary["frames"], summary["status"]
        (64, 'finished')
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = load_config(cfg)
        self.run_dir: Path | None = None
        self.components: Components | None = None
        self.counters: dict[str, Any] = {
            "env_steps": 0,
            "frames": 0,
            "updates": 0,
            "episodes": 0,
            "iterations": 0,
            "walltime_s": 0.0,
            "update_credit": 0.0,
            "next_eval": 0,
            "next_checkpoint": 0,
            "next_log": 0,
        }
        self.evaluations: list[dict[str, Any]] = []
        self.final_eval: dict[str, Any] | None = None
        self.recent_scores: collections.deque[float] = collections.deque(maxlen=RECENT_EPISODES)
        self.recent_lengths: collections.deque[float] = collections.deque(maxlen=RECENT_EPISODES)
        self.recent_success: collections.deque[float] = collections.deque(maxlen=RECENT_EPISODES)
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._eval_env = None

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
            name = signal.Signals(signum).name
            if self.stopping:  # second signal: give up on a clean stop
                raise KeyboardInterrupt
            logger.warning("%s received: finishing the current step, then checkpointing", name)
            self.request_stop(name)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ setup
    def _resolve_run_dir(self) -> tuple[Path, Path | None]:
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
                ckpt = find_latest_checkpoint(run)
                if ckpt is not None:
                    return run, ckpt
            raise ConfigError(
                f"resume=true but no checkpoint exists under {parent}; start without resume, or "
                "pass resume=<run dir or checkpoint path>."
            )
        ckpt = find_latest_checkpoint(resume)
        if ckpt is None:
            raise ConfigError(
                f"resume={resume!r}: no checkpoint there (expected a run directory "
                "with checkpoints/ or a checkpoint folder holding state.pt)."
            )
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run, ckpt

    def _setup_logging(self) -> logging.Handler:
        handler = logging.FileHandler(self.run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("torchrl_rise").addHandler(handler)
        if logging.getLogger("torchrl_rise").getEffectiveLevel() > logging.INFO:
            logging.getLogger("torchrl_rise").setLevel(logging.INFO)
        return handler

    def _state(self, comps: Components) -> dict[str, Any]:
        return {
            "format": 1,
            "method": self.cfg.method,
            "suite": self.cfg.env.suite,
            "env_id": self.cfg.env.env_id,
            "actor": comps.actor.state_dict(),
            "loss": comps.loss.state_dict(),
            "optimizer": comps.optimizer.state_dict(),
            "target_updater_counter": int(getattr(comps.target_updater, "counter", 0)),
            "counters": dict(self.counters),
            "evaluations": list(self.evaluations),
            "final_eval": dict(self.final_eval) if self.final_eval else {},
            "recent": {
                "scores": list(self.recent_scores),
                "lengths": list(self.recent_lengths),
                "success": list(self.recent_success),
            },
            "rng": get_rng_state(),
        }

    def _restore(self, comps: Components, ckpt: Path) -> None:
        loaded = load_checkpoint(ckpt)
        state = loaded["state"]
        for key in ("method", "suite", "env_id"):
            mine = getattr(self.cfg, key) if key == "method" else getattr(self.cfg.env, key)
            if state.get(key) != mine:
                raise ConfigError(
                    f"cannot resume from {loaded['path']}: it was trained with {key}="
                    f"{state.get(key)!r}, this config has {key}={mine!r}."
                )
        comps.actor.load_state_dict(state["actor"])
        comps.loss.load_state_dict(state["loss"])
        comps.optimizer.load_state_dict(state["optimizer"])
        if hasattr(comps.target_updater, "counter"):
            comps.target_updater.counter = int(state["target_updater_counter"])
        self.counters.update(state["counters"])
        self.evaluations = [dict(e) for e in state["evaluations"]]
        self.final_eval = dict(state["final_eval"]) or None
        self.recent_scores.extend(state["recent"]["scores"])
        self.recent_lengths.extend(state["recent"]["lengths"])
        self.recent_success.extend(state["recent"]["success"])
        if loaded["replay_dir"] is not None:
            comps.replay.loads(loaded["replay_dir"])
            # The envs restart with fresh episodes: don't splice them onto the ones the buffer saw.
            comps.replay.close_open_episodes()
        elif self.counters["env_steps"]:
            logger.warning(
                "checkpoint %s holds no replay buffer (checkpoint.save_replay=false): the buffer "
                "refills from scratch",
                loaded["path"],
            )
        set_rng_state(state["rng"])
        logger.info(
            "resumed from %s at %d frames, %d updates",
            loaded["path"],
            self.counters["frames"],
            self.counters["updates"],
        )

    def _save(self, comps: Components) -> Path:
        cfg = self.cfg
        self.counters["next_checkpoint"] = _next_multiple(
            self.counters["frames"], cfg.checkpoint.interval_frames
        )
        return save_checkpoint(
            self.run_dir / "checkpoints",
            self._state(comps),
            step=int(self.counters["frames"]),
            save_replay=comps.replay.dumps
            if cfg.checkpoint.save_replay and self.counters["env_steps"]
            else None,
            keep=cfg.checkpoint.keep,
        )

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
        self.counters["episodes"] += int(done.sum())

    def _learn(self, comps: Components, n_updates: int, stats: dict[str, Any]) -> None:
        cfg = self.cfg
        params = [p for group in comps.optimizer.param_groups for p in group["params"]]
        for _ in range(n_updates):
            batch = comps.replay.sample().to(cfg.device)
            losses = comps.loss(batch)  # noise resampled, bf16 autocast inside if asked
            total = losses.get("loss")
            comps.optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            comps.optimizer.step()
            comps.replay.update_tensordict_priority(batch)
            comps.target_updater.step()
            self.counters["updates"] += 1
            stats["loss"].append(float(total.detach()))
            stats["grad_norm"].append(float(grad_norm))
            stats["td_error"].append(float(losses.get("td_error_mean")))
            stats["q_mean"].append(float(losses.get("q_value_mean")))
            if self.counters["updates"] % cfg.logging.gate_interval_updates == 0:
                gate = {k: float(v) for k, v in losses.items() if k.startswith("gate_")}
                if gate:
                    stats["gate"] = gate

    def _evaluate(self, comps: Components, *, final: bool = False) -> EvalResult:
        cfg = self.cfg
        self.counters["next_eval"] = _next_multiple(
            self.counters["frames"], cfg.eval.interval_frames
        )
        if self._eval_env is None:
            self._eval_env = comps.eval_env_factory()
            torch.set_num_threads(self._num_threads)
        result = evaluate(
            comps.net,
            self._eval_env,
            episodes=cfg.eval.episodes,
            eps=cfg.eval.eps,
            max_steps=cfg.eval.max_steps,
            score_key=comps.env_info.score_key,
            success_key=comps.env_info.success_key or "success",
            record_video=cfg.eval.video,
            frame_channels=comps.env_info.frame_channels,
            device=None if cfg.device == "cpu" else cfg.device,
        )
        row = {
            "frames": self.counters["frames"],
            "updates": self.counters["updates"],
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
                result.frames, step=self.counters["frames"], fps=cfg.eval.video_fps
            )
            logger.info("evaluation video: %s", path)
        logger.info(
            "evaluation at %d frames: mean %.3f +- %.3f over %d episodes%s",
            self.counters["frames"],
            result.mean,
            result.std,
            result.n,
            " (final)" if final else "",
        )
        return result

    def _walltime(self) -> float:
        return self._walltime_base + (time.perf_counter() - self._t0)

    def _train_row(self, stats: dict[str, Any], fps: float, eps: float, replay_len: int):
        mean = lambda xs: float(np.mean(xs)) if xs else math.nan  # noqa: E731
        row = {
            "frames": self.counters["frames"],
            "updates": self.counters["updates"],
            "episodes": self.counters["episodes"],
            "walltime_s": self._walltime(),
            "fps": fps,
            "return_recent": mean(self.recent_scores),
            "episode_length_recent": mean(self.recent_lengths),
            "success_recent": mean(self.recent_success) if self.recent_success else None,
            "loss": mean(stats["loss"]),
            "td_error": mean(stats["td_error"]),
            "q_mean": mean(stats["q_mean"]),
            "grad_norm": mean(stats["grad_norm"]),
            "eps": eps,
            "replay_size": replay_len,
        }
        row.update(stats.get("gate") or {})
        return row

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        """Train until ``total_frames`` (or a stop request); return the summary dict."""
        cfg = self.cfg
        self._num_threads = num_threads = default_num_threads(cfg)
        torch.set_num_threads(num_threads)
        # Gradients decaying through long LSTM windows reach denormal floats, which the CPU
        # handles ~100x slower: K=160 cost 5.3 s per LSTM backward instead of 0.9 s (batch 256).
        # Flushing them to zero changes nothing above 1e-38.
        torch.set_flush_denormal(True)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.run_dir, ckpt = self._resolve_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = self._setup_logging()
        logger.info("run directory: %s", self.run_dir.resolve())
        resolved = config_to_dict(cfg)
        (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))

        collector = None
        comps = None
        completed = False
        try:
            comps = build_components(cfg, scratch_dir=self.run_dir / "replay_scratch")
            self.components = comps
            self.logs = RunLogger(
                self.run_dir,
                backends=cfg.logging.backends,
                experiment_name=f"{cfg.env.suite}-{_safe(cfg.env.env_id)}-{cfg.method}-s{cfg.seed}",
                wandb_project=cfg.logging.wandb_project,
                config=resolved,
            )
            if ckpt is not None:
                self._restore(comps, ckpt)
            self._walltime_base = float(self.counters["walltime_s"])
            self._t0 = time.perf_counter()
            frame_skip = int(comps.env_info.frame_skip)
            if self.counters["next_eval"] == 0:
                self.counters["next_eval"] = cfg.eval.interval_frames
                self.counters["next_checkpoint"] = cfg.checkpoint.interval_frames
                self.counters["next_log"] = cfg.logging.interval_frames

            # Workers inherit an ignored SIGINT, so Ctrl-C reaches only this process, which stops
            # cleanly and then shuts the workers down.
            with _ignore_sigint():
                collector = build_collector(
                    cfg,
                    # a resumed run must not replay the episodes it already saw
                    seed=cfg.seed + 7919 * self.counters["iterations"],
                    encoder=comps.encoder,
                    policy=comps.actor,
                )
            # TorchRL's batched envs and collectors set the thread count of this process
            # themselves; the learner's share is ours to choose.
            torch.set_num_threads(num_threads)
            with self._signals():
                self._loop(comps, collector, frame_skip)
            completed = True
        finally:
            status = "finished" if completed and not self.stopping else "interrupted"
            summary = None
            saved = False
            if (
                comps is not None
                and hasattr(self, "logs")
                and (completed or _collected_anything(self))
            ):
                try:
                    if collector is not None:
                        with contextlib.suppress(Exception):
                            collector.shutdown()
                        collector = None
                    if (
                        completed
                        and not self.stopping
                        and cfg.eval.final
                        and (
                            not self.evaluations
                            or self.evaluations[-1]["frames"] != self.counters["frames"]
                        )
                    ):
                        self._evaluate(comps, final=True)
                    self.counters["walltime_s"] = self._walltime()
                    self._save(comps)
                    saved = True
                    summary = make_summary(
                        config=resolved,
                        run_dir=self.run_dir,
                        encoder=comps.encoder_info,
                        frames=self.counters["frames"],
                        updates=self.counters["updates"],
                        episodes=self.counters["episodes"],
                        walltime_s=self.counters["walltime_s"],
                        evaluations=self.evaluations,
                        final=self.final_eval,
                        status=status,
                    )
                    write_summary(self.run_dir / "summary.json", summary)
                finally:
                    self.logs.close()
                    # The checkpoint holds the buffer; the working memmaps are not needed anymore.
                    if saved and not cfg.replay.scratch_dir and cfg.checkpoint.save_replay:
                        shutil.rmtree(self.run_dir / "replay_scratch", ignore_errors=True)
                    if self._eval_env is not None:
                        with contextlib.suppress(Exception):
                            self._eval_env.close()
            if collector is not None:
                with contextlib.suppress(Exception):
                    collector.shutdown()
            logger.info("run %s (%s): %s", status, self._stop_reason or "done", self.run_dir)
            logging.getLogger("torchrl_rise").removeHandler(handler)
            handler.close()
        return summary

    def _loop(self, comps: Components, collector, frame_skip: int) -> None:
        cfg = self.cfg
        c = self.counters
        num_envs = cfg.env.num_envs
        stats: dict[str, Any] = collections.defaultdict(list)
        last_log_t, last_log_frames = time.perf_counter(), c["frames"]
        from torchrl_rise.modules import reset_noise

        explore = comps.actor.module[-1]
        with _progress(cfg, initial=c["frames"]) as bar:
            last_bar = time.perf_counter()
            if c["frames"] >= cfg.total_frames:
                return
            for batch in collector:
                if batch.ndim == 3:  # Ray: [workers, envs per worker, T]
                    batch = batch.reshape(-1, batch.shape[-1])
                steps = batch.numel()
                comps.replay.extend(batch)
                self._track_episodes(batch, comps.env_info)
                c["env_steps"] += steps
                c["frames"] += steps * frame_skip
                c["iterations"] += 1
                explore.step(steps * frame_skip)

                if c["env_steps"] >= cfg.replay.learning_starts:
                    c["update_credit"] += steps / num_envs * cfg.optim.updates_per_vector_step
                    n_updates = int(c["update_credit"])
                    c["update_credit"] -= n_updates
                    if n_updates:
                        self._learn(comps, n_updates, stats)  # resamples the noise, too
                        collector.update_policy_weights_()
                else:
                    reset_noise(comps.net)  # fresh acting noise while the buffer fills

                now = time.perf_counter()
                bar.update(steps * frame_skip)
                if now - last_bar > 1.0:
                    recent = np.mean(self.recent_scores) if self.recent_scores else math.nan
                    bar.set_postfix(
                        fps=f"{(c['frames'] - last_log_frames) / max(now - last_log_t, 1e-9):.0f}",
                        ret=f"{recent:.2f}",
                        upd=c["updates"],
                        refresh=False,
                    )
                    last_bar = now
                if c["frames"] >= c["next_log"] or c["frames"] >= cfg.total_frames or self.stopping:
                    fps = (c["frames"] - last_log_frames) / max(now - last_log_t, 1e-9)
                    self.logs.log_train(
                        self._train_row(stats, fps, float(explore.eps), len(comps.replay))
                    )
                    gate = stats.get("gate")
                    stats = collections.defaultdict(list)
                    if gate:
                        stats["gate"] = gate
                    last_log_t, last_log_frames = now, c["frames"]
                    c["next_log"] = _next_multiple(c["frames"], cfg.logging.interval_frames)
                done = c["frames"] >= cfg.total_frames
                if c["frames"] >= c["next_eval"] and not done:
                    t_eval = time.perf_counter()
                    self._evaluate(comps)
                    last_log_t += time.perf_counter() - t_eval  # fps counts training time only
                if c["frames"] >= c["next_checkpoint"] and not done and not self.stopping:
                    c["walltime_s"] = self._walltime()
                    t_save = time.perf_counter()
                    self._save(comps)
                    last_log_t += time.perf_counter() - t_save
                if done or self.stopping:
                    break


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
    return trainer.counters["env_steps"] > 0 and hasattr(trainer, "_t0")


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
    return Trainer(cfg).run()
