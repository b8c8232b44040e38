"""Evaluation episodes on separate envs: noise off, eps-greedy on the mean-over-taus Q (BTR).

BTR evaluates with noisy layers in their mean (no noise) and eps = 0.01 (so a deterministic policy
cannot loop forever). The envs are the run's own evaluation envs (``eval_mode=True``), so training
episodes in flight are not disturbed. Scores are the raw (unclipped) episode scores.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from torchrl_rise import keys

__all__ = ["EvalResult", "evaluate"]

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Scores of one evaluation.

    Attributes:
        scores: raw score of each finished episode.
        lengths: agent steps of each finished episode.
        successes: per-episode success flags, if the env reports ``success``.
        frames: video frames ``[T, H, W, C]`` uint8 of the first episode of env 0, if recorded.
        interrupted: ``should_stop`` ended the evaluation early; the scores are partial and
            should not be reported.
    """

    scores: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[float] | None = None
    frames: np.ndarray | None = None
    interrupted: bool = False

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.scores)) if self.scores else math.nan

    @property
    def success_rate(self) -> float | None:
        return float(np.mean(self.successes)) if self.successes else None

    def row(self) -> dict[str, Any]:
        """Statistics for ``eval.csv``."""
        scores = np.asarray(self.scores, dtype=np.float64)
        return {
            "mean": self.mean,
            "std": self.std,
            "median": float(np.median(scores)) if scores.size else math.nan,
            "min": float(scores.min()) if scores.size else math.nan,
            "max": float(scores.max()) if scores.size else math.nan,
            "n": self.n,
            "success_rate": self.success_rate,
        }


def _last_frame(pixels: torch.Tensor, channels: int) -> np.ndarray:
    frame = pixels[-channels:]  # newest frame of the stack, [C, H, W]
    return frame.permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def evaluate(
    policy: TensorDictModuleBase | Callable[[TensorDictBase], TensorDictBase],
    env: EnvBase,
    *,
    episodes: int,
    eps: float = 0.01,
    max_steps: int = 27_000,
    score_key: str | None = "episode_score",
    success_key: str = "success",
    action_value_key: str = keys.ACTION_VALUE,
    action_key: str = keys.ACTION,
    record_video: bool = False,
    frame_channels: int = 1,
    pixels_key: str = keys.PIXELS,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Play ``episodes`` episodes greedily (eps-greedy) with noise off and return their raw scores.

    Each of the env's ``N`` batched envs contributes its first ``ceil(episodes / N)`` episodes
    (so short episodes are not over-represented); the rest are discarded.

    Args:
        policy: a module writing ``action_value`` ``[N, A]`` from the env's observation.
        env: a batched TorchRL env (batch ``[N]``).
        episodes: how many episodes to score.
        eps: probability of a uniformly random action (BTR: 0.01).
        max_steps: per-episode step limit of this evaluation; episodes still running after
            ``ceil(episodes / N) * max_steps`` vector steps are dropped (with a warning).
        score_key: key under ``"next"`` holding the env's raw episode score (written when an episode
            ends); if absent, rewards are summed here (then they must not be clipped).
        success_key: key under ``"next"`` with a per-episode success flag, if the env has one.
        action_value_key: the policy's Q-value output.
        action_key: the env's action key.
        record_video: keep the frames of env 0's first episode.
        frame_channels: channels per frame (to cut the newest frame out of the stack for video).
        pixels_key: the observation key used for video frames.
        generator: RNG for the eps-greedy draws.
        device: run the policy there (the env's data is moved to it and the actions back).
        should_stop: checked before every vector step; when it returns true the evaluation is
            abandoned and the result has ``interrupted=True`` (a stop request must not wait for
            a long evaluation).

    Example:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.envs import GymEnv
        >>> env = GymEnv("CartPole-v1")
        >>> net = TensorDictModule(torch.nn.Linear(4, 2), ["observation"], ["action_value"])
        >>> res = evaluate(net, env, episodes=2, score_key=None)
        >>> res.n
        2
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    batch = env.batch_size.numel() if len(env.batch_size) else 1
    tally = _Tally(batch, math.ceil(episodes / batch), score_key=score_key, success_key=success_key)
    video = _Video(pixels_key, frame_channels) if record_video else None
    act = functools.partial(
        _act, policy, eps=eps, generator=generator, device=device, q_key=action_value_key
    )
    with _eval_mode(policy):
        td = env.reset()
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            interrupted = _play(
                env,
                td,
                act,
                tally,
                video,
                max_steps=max_steps,
                episodes=episodes,
                action_key=action_key,
                should_stop=should_stop,
            )
    return tally.result(episodes, interrupted=interrupted, video=video)


@contextlib.contextmanager
def _eval_mode(policy: Any) -> Iterator[None]:
    """``policy.eval()`` while this lasts (back to ``train()`` if it was training)."""
    was_training = getattr(policy, "training", False)
    if hasattr(policy, "eval"):
        policy.eval()
    try:
        yield
    finally:
        if was_training and hasattr(policy, "train"):
            policy.train()


class _Video:
    """The newest frame of env 0 at each step, cut out of its frame stack."""

    def __init__(self, pixels_key: str, frame_channels: int) -> None:
        self.pixels_key = pixels_key
        self.frame_channels = frame_channels
        self.frames: list[np.ndarray] = []

    def add(self, td: TensorDictBase) -> None:
        pixels = td.get(self.pixels_key)
        self.frames.append(
            _last_frame(pixels.reshape(-1, *pixels.shape[-3:])[0], self.frame_channels)
        )


def _act(
    policy: Callable[[TensorDictBase], TensorDictBase],
    td: TensorDictBase,
    *,
    eps: float,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    q_key: str,
) -> tuple[TensorDictBase, torch.Tensor]:
    """The eps-greedy actions on the policy's Q-values (and ``td``, with the policy's outputs)."""
    if device is None:
        td = policy(td)
        q = td.get(q_key)
    else:
        q = policy(td.to(device)).get(q_key).cpu()
    greedy = q.argmax(-1)
    if eps > 0:
        explore = torch.rand(greedy.shape, generator=generator) < eps
        rand = torch.randint(q.shape[-1], greedy.shape, generator=generator)
        greedy = torch.where(explore, rand, greedy)
    return td, greedy


def _play(
    env: EnvBase,
    td: TensorDictBase,
    act: Callable[[TensorDictBase], tuple[TensorDictBase, torch.Tensor]],
    tally: _Tally,
    video: _Video | None,
    *,
    max_steps: int,
    episodes: int,
    action_key: str,
    should_stop: Callable[[], bool] | None,
) -> bool:
    """Step ``env`` from ``td`` until ``tally`` has its episodes; return whether it was abandoned.

    ``video`` (if given) gets the newest frame of env 0 at every step of its first episode.
    """
    recording = video is not None
    for _ in range(tally.per_env * max_steps):
        if should_stop is not None and should_stop():
            logger.info(
                "evaluation abandoned after %d of %d episodes: stop requested",
                len(tally.scores),
                episodes,
            )
            return True
        td, actions = act(td)
        td.set(action_key, actions)
        if recording:
            video.add(td)
        td, td_next = env.step_and_maybe_reset(td)
        if tally.add(td.get("next")):
            recording = False  # env 0's first episode ended
        if tally.complete:
            return False
        td = td_next
    logger.warning(
        "evaluation stopped after %d vector steps with %d of %d episodes finished; "
        "raise eval.max_steps if episodes are longer",
        tally.per_env * max_steps,
        len(tally.scores),
        tally.per_env * tally.batch,
    )
    return False


class _Tally:
    """The running scores, lengths and episode quotas of one evaluation's ``batch`` envs.

    Each env contributes its first ``per_env`` episodes.
    """

    def __init__(self, batch: int, per_env: int, *, score_key: str | None, success_key: str):
        self.batch = batch
        self.per_env = per_env
        self.score_key = score_key
        self.success_key = success_key
        self.quota = torch.full((batch,), per_env, dtype=torch.long)
        self.running = torch.zeros(batch, dtype=torch.float64)
        self.steps = torch.zeros(batch, dtype=torch.long)
        self.scores: list[float] = []
        self.lengths: list[int] = []
        self.successes: list[float] = []

    @property
    def complete(self) -> bool:
        """Every env finished its episodes."""
        return bool((self.quota <= 0).all())

    def add(self, nxt: TensorDictBase) -> bool:
        """Count one vector step's ``next``; return whether env 0 ended an episode."""
        batch = self.batch
        self.running += nxt.get(keys.REWARD).reshape(batch).double()
        self.steps += 1
        done = nxt.get(keys.DONE).reshape(batch)
        if not done.any():
            return False
        score_key, success_key = self.score_key, self.success_key
        raw = (
            nxt.get(score_key).reshape(batch).double()
            if score_key is not None and score_key in nxt
            else self.running
        )
        success = nxt.get(success_key).reshape(batch).float() if success_key in nxt else None
        for i in done.nonzero().flatten().tolist():
            if self.quota[i] > 0:
                self.scores.append(float(raw[i]))
                self.lengths.append(int(self.steps[i]))
                if success is not None:
                    self.successes.append(float(success[i]))
                self.quota[i] -= 1
        self.running[done] = 0
        self.steps[done] = 0
        return bool(done[0])

    def result(self, episodes: int, *, interrupted: bool, video: _Video | None) -> EvalResult:
        """The first ``episodes`` episodes as an :class:`EvalResult`."""
        result = EvalResult(
            scores=self.scores[:episodes],
            lengths=self.lengths[:episodes],
            interrupted=interrupted,
        )
        if self.successes:
            result.successes = self.successes[:episodes]
        if video is not None and video.frames:
            result.frames = np.stack(video.frames)
        return result
