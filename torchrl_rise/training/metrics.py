"""What a run reports while it trains: recent episodes, ``train.csv`` rows, speed, progress bar.

:class:`RecentEpisodes` keeps the scores, lengths and successes of the last
``RECENT_EPISODES`` episodes the collector finished (saved in every checkpoint under
``recent``); :func:`train_row` is one ``train.csv`` row; :class:`Throughput` the training
frames per second since the last row; :class:`ProgressBar` the console bar.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from torchrl_rise.training.config import TrainConfig
from torchrl_rise.training.counters import Counters

__all__ = [
    "RECENT_EPISODES",
    "ProgressBar",
    "RecentEpisodes",
    "Throughput",
    "WallClock",
    "train_row",
]

RECENT_EPISODES = 100


def _mean(values: collections.deque[float]) -> float:
    return float(np.mean(values)) if values else math.nan


class RecentEpisodes:
    """Scores, lengths and successes of the last ``maxlen`` episodes the collector finished.

    Keyword Args:
        maxlen: how many episodes to keep.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from tensordict import TensorDict
        >>> nxt = TensorDict({"done": torch.tensor([[True], [False]]),
        ...                   "score": torch.tensor([[2.0], [5.0]])}, [2, 1])
        >>> info = SimpleNamespace(score_key="score", length_key="length", success_key=None)
        >>> recent = RecentEpisodes()
        >>> recent.track(TensorDict({"next": nxt}, [2, 1]), info), recent.mean_score()
        (1, 2.0)
    """

    def __init__(self, *, maxlen: int = RECENT_EPISODES) -> None:
        self.scores: collections.deque[float] = collections.deque(maxlen=maxlen)
        self.lengths: collections.deque[float] = collections.deque(maxlen=maxlen)
        self.success: collections.deque[float] = collections.deque(maxlen=maxlen)

    def track(self, batch: Any, env_info: Any) -> int:
        """Record the episodes that end in ``batch``; return how many ended."""
        nxt = batch.get("next")
        done = nxt.get("done").reshape(-1)
        if not done.any():
            return 0
        score = nxt.get(env_info.score_key).reshape(-1)[done]
        length = nxt.get(env_info.length_key, None)
        self.scores.extend(score.double().tolist())
        if length is not None:
            self.lengths.extend(length.reshape(-1)[done].double().tolist())
        if env_info.success_key is not None and env_info.success_key in nxt.keys(True):
            success = nxt.get(env_info.success_key).reshape(-1)[done]
            self.success.extend(success.double().tolist())
        return int(done.sum())

    def mean_score(self) -> float:
        """The mean score of the recent episodes (``nan``: none yet)."""
        return _mean(self.scores)

    def state_dict(self) -> dict[str, list[float]]:
        """What a checkpoint keeps (``recent``)."""
        return {
            "scores": list(self.scores),
            "lengths": list(self.lengths),
            "success": list(self.success),
        }

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        """Append a checkpoint's ``recent`` episodes."""
        self.scores.extend(state["scores"])
        self.lengths.extend(state["lengths"])
        self.success.extend(state["success"])


def train_row(
    counters: Counters,
    recent: RecentEpisodes,
    stats: dict[str, float],
    *,
    walltime_s: float,
    fps: float,
    eps: float,
    replay_size: int,
) -> dict[str, Any]:
    """A ``train.csv`` row; ``stats`` are the learner's means since the last row.

    Example:
        >>> row = train_row(Counters(frames=8), RecentEpisodes(), {"loss": 0.5, "gate_mean": 1.0},
        ...                 walltime_s=1.0, fps=8.0, eps=0.1, replay_size=2)
        >>> row["frames"], row["loss"], row["gate_mean"], row["success_recent"]
        (8, 0.5, 1.0, None)
    """
    row = {
        "frames": counters.frames,
        "updates": counters.updates,
        "episodes": counters.episodes,
        "walltime_s": walltime_s,
        "fps": fps,
        "return_recent": _mean(recent.scores),
        "episode_length_recent": _mean(recent.lengths),
        "success_recent": _mean(recent.success) if recent.success else None,
        "loss": stats.get("loss", math.nan),
        "td_error": stats.get("td_error", math.nan),
        "q_mean": stats.get("q_mean", math.nan),
        "grad_norm": stats.get("grad_norm", math.nan),
        "eps": eps,
        "replay_size": replay_size,
    }
    row.update({k: v for k, v in stats.items() if k.startswith("gate_")})
    return row


class Throughput:
    """Frames per second of training since the last ``train.csv`` row (pauses excluded).

    Keyword Args:
        frames: the run's frames now.

    Example:
        >>> meter = Throughput(frames=0)
        >>> meter.restart(frames=0, now=10.0)
        >>> meter.fps(frames=400, now=12.0)
        200.0
    """

    def __init__(self, *, frames: int) -> None:
        self.since = time.perf_counter()
        self.frames = frames

    def fps(self, *, frames: int, now: float) -> float:
        """Frames per second from the last restart to ``now`` (at ``frames``)."""
        return (frames - self.frames) / max(now - self.since, 1e-9)

    def restart(self, *, frames: int, now: float) -> None:
        """Count from ``now`` at ``frames`` on (a row was logged)."""
        self.since, self.frames = now, frames

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in here (an evaluation, a checkpoint) is not training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.since += time.perf_counter() - start


class ProgressBar:
    """The console progress bar of a run (tqdm; its postfix refreshed at most once a second).

    Keyword Args:
        total: the run's ``total_frames``.
        initial: the frames already done (a resumed run).
        desc: what the bar says before it.
        enabled: ``False``: show nothing (``logging.progress=false``).

    Example:
        >>> with ProgressBar(total=64, initial=0, desc="btr", enabled=False) as bar:
        ...     bar.advance(32, now=2.0, fps=16.0, ret=0.5, updates=4)
    """

    def __init__(self, *, total: int, initial: int, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="frame",
            unit_scale=True,
            dynamic_ncols=True,
            disable=not enabled,
            desc=desc,
            smoothing=0.05,
        )
        self._last_postfix = time.perf_counter()

    @classmethod
    def of_run(cls, cfg: TrainConfig, *, initial: int) -> ProgressBar:
        """The bar of a run of ``cfg`` that has done ``initial`` frames."""
        return cls(
            total=cfg.total_frames,
            initial=initial,
            desc=f"{cfg.method} {cfg.env.env_id}",
            enabled=cfg.logging.progress,
        )

    def advance(self, frames: int, *, now: float, fps: float, ret: float, updates: int) -> None:
        """``frames`` more done; show the speed, recent return and updates (once a second)."""
        self.bar.update(frames)
        if now - self._last_postfix > 1.0:
            self.bar.set_postfix(fps=f"{fps:.0f}", ret=f"{ret:.2f}", upd=updates, refresh=False)
            self._last_postfix = now

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


class WallClock:
    """A run's wall time: what earlier sessions of it took plus this session's time so far.

    Example:
        >>> clock = WallClock()
        >>> clock.started
        False
        >>> clock.start(base_s=10.0); clock.started, clock.walltime() >= 10.0
        (True, True)
    """

    def __init__(self) -> None:
        self._base_s = 0.0
        self._t0: float | None = None

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called (the loop's clock runs)."""
        return self._t0 is not None

    def start(self, *, base_s: float) -> None:
        """Start this session's clock; the run had taken ``base_s`` seconds before it."""
        self._base_s = base_s
        self._t0 = time.perf_counter()

    def walltime(self) -> float:
        """Seconds the run has taken, all its sessions together."""
        return self._base_s + (time.perf_counter() - self._t0)
