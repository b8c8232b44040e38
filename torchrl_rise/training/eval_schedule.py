"""When a run evaluates, and what it keeps of each evaluation.

:class:`EvalSchedule` decides whether an evaluation is due (every ``eval.interval_frames``, at
the start of a resumed run whose last evaluation a stop abandoned, and a final one at
``total_frames``) and records each finished one: the ``eval.csv`` row, the entry of
``summary.json``'s ``evaluations`` and the final evaluation's episodes. :class:`Evaluator` plays
the episodes on the run's eval envs and logs the result (row, video).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from torchrl_rise.training.builders import Components, evaluation_policy
from torchrl_rise.training.config import TrainConfig
from torchrl_rise.training.counters import Counters, Schedule, next_multiple
from torchrl_rise.training.evaluation import EvalResult
from torchrl_rise.training.loggers import RunLogger

__all__ = ["EvalSchedule", "Evaluator"]

logger = logging.getLogger(__name__)


class EvalSchedule:
    """The evaluations of a run so far and when the next is due.

    Keyword Args:
        interval_frames: evaluate every this many frames.
        final: evaluate once more at ``total_frames`` (unless that frame was just evaluated).

    Example:
        >>> from torchrl_rise.training.evaluation import EvalResult
        >>> evals = EvalSchedule(interval_frames=100, final=True)
        >>> counters, schedule = Counters(frames=100), Schedule(next_eval=100)
        >>> evals.due(counters, schedule)
        True
        >>> row = evals.record(EvalResult(scores=[1.0, 3.0]), counters, schedule, walltime_s=2.0)
        >>> row["mean"], schedule.next_eval, evals.history, evals.final_due(counters)
        (2.0, 200, [{'frames': 100, 'mean': 2.0, 'std': 1.0, 'n': 2}], False)
    """

    def __init__(self, *, interval_frames: int, final: bool) -> None:
        self.interval_frames = interval_frames
        self.final = final
        self.history: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None  # the latest evaluation, with its episodes

    @staticmethod
    def due(counters: Counters, schedule: Schedule) -> bool:
        """Whether the frames reached the next evaluation."""
        return counters.frames >= schedule.next_eval

    def final_due(self, counters: Counters) -> bool:
        """Whether the run's end needs a final evaluation (none yet at these frames)."""
        return self.final and (not self.history or self.history[-1]["frames"] != counters.frames)

    def record(
        self, result: EvalResult, counters: Counters, schedule: Schedule, *, walltime_s: float
    ) -> dict[str, Any]:
        """Keep a finished evaluation, schedule the next; return its ``eval.csv`` row."""
        schedule.next_eval = next_multiple(counters.frames, self.interval_frames)
        row = {
            "frames": counters.frames,
            "updates": counters.updates,
            "walltime_s": walltime_s,
            **result.row(),
        }
        entry = {k: row[k] for k in ("frames", "mean", "std", "n")}
        if result.success_rate is not None:
            entry["success_rate"] = result.success_rate
        self.history.append(entry)
        self.last = {**entry, "episodes": list(result.scores)}
        return row

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (``evaluations`` and ``final_eval``)."""
        return {"evaluations": list(self.history), "final_eval": dict(self.last or {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's ``evaluations`` and ``final_eval``."""
        self.history[:] = [dict(e) for e in state["evaluations"]]  # in place: shared
        self.last = dict(state["final_eval"]) or None


class Evaluator:
    """Runs a run's evaluations on its own eval envs (made at the first one) and logs them.

    Args:
        cfg: the run's configuration (``eval.*``, ``device``).
        comps: the run's components (the network and the eval env factory).
        logs: the run's :class:`~torchrl_rise.training.loggers.RunLogger`.

    Keyword Args:
        schedule: the run's :class:`EvalSchedule` (what each evaluation is recorded in).
        run_episodes: the function playing the episodes,
            :func:`~torchrl_rise.training.evaluation.evaluate` or a stand-in.
        num_threads: torch's thread count to restore once the eval envs are made.
        should_stop: polled between episodes; ``True`` abandons the evaluation.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        comps: Components,
        logs: RunLogger,
        *,
        schedule: EvalSchedule,
        run_episodes: Callable[..., EvalResult],
        num_threads: int,
        should_stop: Callable[[], bool],
    ) -> None:
        self.cfg = cfg
        self.comps = comps
        self.logs = logs
        self.schedule = schedule
        self.run_episodes = run_episodes
        self.num_threads = num_threads
        self.should_stop = should_stop
        self._env: Any = None

    def evaluate(
        self,
        counters: Counters,
        schedule: Schedule,
        *,
        walltime: Callable[[], float],
        final: bool = False,
    ) -> EvalResult | None:
        """One evaluation, logged; ``None`` if a stop request abandoned it (nothing logged)."""
        cfg, comps = self.cfg, self.comps
        if self._env is None:
            self._env = comps.eval_env_factory()
            torch.set_num_threads(self.num_threads)
        result = self.run_episodes(
            evaluation_policy(cfg, comps.net),  # the net, or one LSTM step of it (recurrent)
            self._env,
            episodes=cfg.eval.episodes,
            eps=cfg.eval.eps,
            max_steps=cfg.eval.max_steps,
            score_key=comps.env_info.score_key,
            success_key=comps.env_info.success_key or "success",
            record_video=cfg.eval.video,
            frame_channels=comps.env_info.frame_channels,
            device=None if cfg.device == "cpu" else cfg.device,
            should_stop=self.should_stop,
        )
        if result.interrupted:
            return None  # next_eval stays: a resumed run evaluates these frames again
        self.logs.log_eval(self.schedule.record(result, counters, schedule, walltime_s=walltime()))
        if result.frames is not None:
            path = self.logs.log_video(result.frames, step=counters.frames, fps=cfg.eval.video_fps)
            logger.info("evaluation video: %s", path)
        logger.info(
            "evaluation at %d frames: mean %.3f +- %.3f over %d episodes%s",
            counters.frames,
            result.mean,
            result.std,
            result.n,
            " (final)" if final else "",
        )
        return result

    def close(self) -> None:
        """Close the eval envs (if any were made)."""
        if self._env is not None:
            env, self._env = self._env, None
            try:
                env.close()
            except Exception as err:
                logger.warning("closing the evaluation envs failed: %s", err)
