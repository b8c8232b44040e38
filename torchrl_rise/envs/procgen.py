"""Procgen (easy mode) through gym3's natively vectorised ``ProcgenGym3Env``, as a TorchRL env.

Defaults (docs/envs.md): easy distribution, training on levels ``[0, 200)``; evaluation
(``eval_mode=True``) on levels ``[200, 200 + 2**30)``, disjoint from training; RGB 64x64 (native),
stack 4; the action set of all 16 games (15 actions).

gym3 auto-resets: after the last step of an episode it reports ``first=True`` together with the
first observation of the next episode, and never shows the episode's final frame. So, at a done
step, ``("next", "pixels")`` repeats the last frame the agent saw (the state it acted from), and the
next episode's first frame is handed out by the ``"_reset"`` that TorchRL sends next. Every episode
end is ``terminated`` (Procgen signals level completion, death and its own time-out alike, and the
Procgen baselines treat them all as terminal), so that repeated frame is never bootstrapped from.
gym3 cannot restart a single running episode: a partial reset of an env that is mid-episode raises,
and ``max_episode_frames`` is not supported (Procgen's own time-out applies).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from torchrl_rise import keys
from torchrl_rise._optional import import_optional
from torchrl_rise.envs.common import (
    SUCCESS,
    check_env_id,
    check_positive,
    finish_suite_env,
    reject_unknown,
    resolve_options,
)

__all__ = ["ProcgenVectorEnv", "build", "list_env_ids"]

TRAIN_LEVELS = 200
EVAL_NUM_LEVELS = 2**30
_OPTIONS = ("distribution_mode", "num_levels", "start_level", "eval_start_level", "eval_num_levels")


def _procgen():
    return import_optional("procgen", extra="procgen", purpose="The Procgen suite")


def list_env_ids() -> list[str]:
    """The 16 Procgen games (``"coinrun"``, ``"starpilot"``, ...)."""
    _procgen()
    from procgen.env import ENV_NAMES

    return sorted(ENV_NAMES)


class ProcgenVectorEnv(EnvBase):
    """``procgen.ProcgenGym3Env`` (C++, vectorised) as a TorchRL env of batch ``[num_envs]``.

    Emits single frames ``"pixels"`` uint8 ``[3, 64, 64]`` and ``"success"`` (True at the last
    step of an episode whose level was completed). See the module docstring for how episode ends
    are handled.

    Args:
        env_name: a Procgen game, e.g. ``"coinrun"``.
        num_envs: number of parallel games.

    Keyword Args:
        seed: gym3 ``rand_seed`` (level sampling and game randomness).
        distribution_mode: ``"easy"`` (default), ``"hard"``, ...
        num_levels: number of distinct levels (0: unlimited).
        start_level: first level seed.
        device: device of the output tensors.

    Example:
        >>> env = ProcgenVectorEnv("coinrun", 2)  # doctest: +SKIP
        >>> env.rand_step(env.reset())["next", "pixels"].shape  # doctest: +SKIP
        torch.Size([2, 3, 64, 64])
    """

    def __init__(
        self,
        env_name: str,
        num_envs: int = 1,
        *,
        seed: int = 0,
        distribution_mode: str = "easy",
        num_levels: int = TRAIN_LEVELS,
        start_level: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        _procgen()
        check_positive("num_envs", num_envs)
        if not isinstance(num_levels, int) or num_levels < 0:
            raise ValueError(f"num_levels must be a non-negative integer, got {num_levels!r}")
        if not isinstance(start_level, int) or start_level < 0:
            raise ValueError(f"start_level must be a non-negative integer, got {start_level!r}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.env_name = env_name
        self.distribution_mode = distribution_mode
        self.num_levels = num_levels
        self.start_level = start_level
        self._seed = int(seed)
        self._gym3 = self._make_gym3()
        b = self.batch_size
        self.observation_spec = Composite(
            {
                keys.PIXELS: Bounded(
                    low=0, high=255, shape=(*b, 3, 64, 64), dtype=torch.uint8, device=self.device
                ),
                SUCCESS: Categorical(2, shape=(*b, 1), dtype=torch.bool, device=self.device),
            },
            shape=b,
        )
        n = int(self._gym3.ac_space.eltype.n)
        self.action_spec = Categorical(n, shape=b, dtype=torch.int64, device=self.device)
        self.reward_spec = Unbounded(shape=(*b, 1), dtype=torch.float32, device=self.device)
        self.done_spec = Composite(
            {
                k: Categorical(2, shape=(*b, 1), dtype=torch.bool, device=self.device)
                for k in (keys.DONE, keys.TERMINATED, keys.TRUNCATED)
            },
            shape=b,
        )
        self._obs: torch.Tensor | None = None
        self._pending = np.zeros(num_envs, dtype=bool)
        self._pending_obs: torch.Tensor | None = None

    def _make_gym3(self):
        from procgen import ProcgenGym3Env

        try:
            return ProcgenGym3Env(
                num=self.batch_size[0],
                env_name=self.env_name,
                distribution_mode=self.distribution_mode,
                num_levels=self.num_levels,
                start_level=self.start_level,
                rand_seed=self._seed,
            )
        except Exception as err:  # procgen raises AssertionError/ValueError on bad options
            raise ValueError(
                f"Procgen rejected env_name={self.env_name!r}, distribution_mode="
                f"{self.distribution_mode!r}, num_levels={self.num_levels}, start_level="
                f"{self.start_level}: {err}"
            ) from err

    @staticmethod
    def _frames(ob: dict) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(ob["rgb"])).permute(0, 3, 1, 2).contiguous()

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        mask = (
            np.ones(self.batch_size[0], dtype=bool)
            if reset is None
            else reset.reshape(-1).cpu().numpy().astype(bool)
        )
        running = mask & ~self._pending
        if self._obs is not None and running.any():
            if not mask.all():
                raise RuntimeError(
                    "Procgen (gym3) cannot restart the running episode of a single env: a partial "
                    f"reset was requested for envs {np.flatnonzero(running).tolist()}, which are "
                    "not done. Reset all envs at once, or only envs whose episode just ended."
                )
            # A full reset of running episodes: gym3 cannot restart them, so start a new batch of
            # games, with the next seed so that the new episodes differ from the last ones.
            self._close_gym3()
            self._seed += 1
            self._gym3 = self._make_gym3()
            self._obs = None
        if self._obs is None:
            _, ob, _ = self._gym3.observe()
            self._obs = self._frames(ob)
            self._pending[:] = False
        else:
            idx = torch.from_numpy(np.flatnonzero(mask))
            self._obs[idx] = self._pending_obs[idx]
            self._pending[mask] = False
        false = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                keys.PIXELS: self._obs.to(self.device, copy=True),
                SUCCESS: false,
                keys.DONE: false.clone(),
                keys.TERMINATED: false.clone(),
                keys.TRUNCATED: false.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(keys.ACTION).reshape(-1).cpu().numpy().astype(np.int32)
        self._gym3.act(action)
        reward, ob, first = self._gym3.observe()
        frames = self._frames(ob)
        done = np.asarray(first, dtype=bool)
        success = np.zeros_like(done)
        if done.any():
            info = self._gym3.get_info()
            success = np.array(
                [bool(d and i.get("prev_level_complete", 0)) for d, i in zip(done, info)]
            )
            idx = torch.from_numpy(np.flatnonzero(done))
            if self._pending_obs is None:
                self._pending_obs = torch.zeros_like(frames)
            self._pending_obs[idx] = frames[idx]
            self._pending |= done
            frames[idx] = self._obs[idx]  # no final frame from gym3: repeat the last one
        self._obs = frames
        term = torch.from_numpy(done).view(-1, 1)
        return TensorDict(
            {
                keys.PIXELS: frames.clone(),
                SUCCESS: torch.from_numpy(success).view(-1, 1),
                keys.REWARD: torch.from_numpy(np.asarray(reward, dtype=np.float32)).view(-1, 1),
                keys.DONE: term,
                keys.TERMINATED: term.clone(),
                keys.TRUNCATED: torch.zeros_like(term),
            },
            batch_size=self.batch_size,
        ).to(self.device)

    def _set_seed(self, seed: int | None) -> None:
        # gym3 seeds games at construction: rebuild them with this seed.
        if seed is not None:
            self._close_gym3()
            self._seed = int(seed)
            self._gym3 = self._make_gym3()
            self._obs = None
            self._pending[:] = False

    def _close_gym3(self) -> None:
        close = getattr(self.__dict__.get("_gym3"), "close", None)
        if close is not None:
            close()

    def close(self, *, raise_if_closed: bool = True) -> None:
        self._close_gym3()
        super().close(raise_if_closed=raise_if_closed)


def _level_range(kwargs: dict[str, Any], *, eval_mode: bool) -> tuple[int, int]:
    """``(start_level, num_levels)`` of the training levels, or with ``eval_mode`` the eval levels.

    By default the evaluation levels start after the training levels.
    """
    num_levels = kwargs.get("num_levels", TRAIN_LEVELS)
    start_level = kwargs.get("start_level", 0)
    if eval_mode:
        start_level, num_levels = (
            kwargs.get("eval_start_level", start_level + num_levels),
            kwargs.get("eval_num_levels", EVAL_NUM_LEVELS),
        )
    return start_level, num_levels


def build(
    env_id: str,
    *,
    num_envs: int,
    seed: int,
    device: torch.device,
    frame_stack: int | None,
    frame_size,
    grayscale: bool | None,
    clip_rewards: bool,
    eval_mode: bool,
    max_episode_frames: int | None,
    backend: str | None,
    **kwargs,
):
    """``make_env("procgen", env_id, ...)``; see the module docstring for the defaults.

    Suite options: ``distribution_mode`` (``"easy"``), ``num_levels`` (200) and ``start_level``
    (0) for training; ``eval_start_level`` (``start_level + num_levels``) and ``eval_num_levels``
    (``2**30``) for ``eval_mode=True``. Only the ``"vector"`` backend exists (gym3 is already
    vectorised in C++). Frames are 64x64 RGB only (Procgen renders nothing else).
    """
    reject_unknown("procgen", kwargs, _OPTIONS)
    check_env_id(env_id, list_env_ids(), suite_name="Procgen")
    if max_episode_frames is not None:
        raise ValueError(
            "max_episode_frames is not supported for Procgen: gym3 cannot end a single running "
            "episode, and each game has its own time-out. Leave it as None."
        )
    opts = resolve_options(
        "procgen",
        num_envs=num_envs,
        frame_stack=frame_stack,
        frame_size=frame_size,
        grayscale=grayscale,
        backend=backend,
        default_frame_stack=4,
        default_frame_size=(64, 64),
        default_grayscale=False,
        backends=("vector",),
    )
    if opts.frame_size != (64, 64) or opts.grayscale:
        raise ValueError(
            f"Procgen renders RGB 64x64 frames only; got frame_size={opts.frame_size}, "
            f"grayscale={opts.grayscale}. Leave both as None."
        )
    start_level, num_levels = _level_range(kwargs, eval_mode=eval_mode)
    base = ProcgenVectorEnv(
        env_id,
        opts.num_envs,
        seed=seed,
        distribution_mode=kwargs.get("distribution_mode", "easy"),
        num_levels=num_levels,
        start_level=start_level,
        device=device,
    )
    return finish_suite_env(
        base,
        suite="procgen",
        env_id=env_id,
        opts=opts,
        num_actions=int(base.action_spec.space.n),
        clip_rewards=clip_rewards,
        eval_mode=eval_mode,
        time_limit=None,
        max_episode_steps=None,
        success_key=SUCCESS,
    )
