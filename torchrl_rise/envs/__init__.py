"""Env factories for every suite RISE is evaluated on, plus a pixel memory diagnostic.

:func:`make_env` builds a TorchRL env with batch size ``[num_envs]`` whose observation ``"pixels"``
is uint8 ``[S * C, H, W]`` (``S`` stacked frames, oldest first, padded with the first frame of the
episode), whose ``"action"`` is an int64 index (:class:`~torchrl.data.Categorical` spec), and which
tracks the raw episode score (``"episode_score"``) and length (``"episode_length"``) while
``"reward"`` may be clipped for learning. :func:`describe_env` says what the trainer needs to know
(actions, channels, stack, frame size, suite). Suite defaults and their reasons are in docs/envs.md.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch
from torchrl.envs import EnvBase, RewardScaling

from torchrl_rise import keys
from torchrl_rise.envs.common import (
    EPISODE_LENGTH,
    EPISODE_SCORE,
    SUCCESS,
    EnvInfo,
    PixelPreprocess,
    describe_env,
    standard_transforms,
)

__all__ = [
    "EPISODE_LENGTH",
    "EPISODE_SCORE",
    "SUCCESS",
    "SUITES",
    "EnvInfo",
    "PixelPreprocess",
    "describe_env",
    "list_env_ids",
    "make_env",
    "standard_transforms",
]

SUITES: dict[str, str] = {
    "atari": "torchrl_rise.envs.atari",
    "vizdoom": "torchrl_rise.envs.vizdoom",
    "procgen": "torchrl_rise.envs.procgen",
    "miniworld": "torchrl_rise.envs.miniworld",
    "memorygym": "torchrl_rise.envs.memorygym",
    "memory": "torchrl_rise.envs.memory",
}
"""Suite name -> module with ``build(env_id, **options)`` and ``list_env_ids()``."""


def _suite_module(suite: str):
    if not isinstance(suite, str) or suite.lower() not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}: choose one of {sorted(SUITES)}.")
    return importlib.import_module(SUITES[suite.lower()])


def list_env_ids(suite: str) -> list[str]:
    """The env ids ``make_env(suite, env_id)`` accepts (for ``memory``: example ids of a pattern).

    Raises:
        MissingDependencyError: the suite's optional dependency is not installed (names the extra).

    Example:
        >>> "pong" in list_env_ids("atari")
        True
    """
    return _suite_module(suite).list_env_ids()


def make_env(
    suite: str,
    env_id: str,
    *,
    num_envs: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    frame_stack: int | None = None,
    frame_size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
    clip_rewards: bool = True,
    reward_scale: float = 1.0,
    eval_mode: bool = False,
    max_episode_frames: int | None = None,
    backend: str | None = None,
    **suite_kwargs: Any,
) -> EnvBase:
    """Build a batched TorchRL env for ``suite``/``env_id`` with the suite's defaults.

    Args:
        suite: ``"atari"``, ``"vizdoom"``, ``"procgen"``, ``"miniworld"``, ``"memorygym"``
            or ``"memory"``.
        env_id: the game/scenario/level id in that suite: Atari ``"pong"``/``"Pong"``/
            ``"ALE/Pong-v5"``; ViZDoom ``"VizdoomBasic-v1"``; Procgen ``"coinrun"``; MiniWorld
            ``"MiniWorld-Hallway-v0"``; memory ``"cue-L20"`` or ``"cue-L20-N4"``.

    Keyword Args:
        num_envs: batch size; the env's ``batch_size`` is always ``[num_envs]``.
        seed: base seed (env ``i`` is seeded from ``seed + i`` where the simulator allows it).
        device: device of the output tensors.
        frame_stack: frames ``S`` in ``"pixels"`` (``None``: suite default, 4 everywhere).
        frame_size: ``(H, W)`` or an int (``None``: suite default).
        grayscale: 1-channel frames (``None``: suite default; True only for Atari and memory).
        clip_rewards: clip ``"reward"`` to ``[-1, 1]``; ``"episode_score"`` stays raw.
        reward_scale: multiply ``"reward"`` by this (``"episode_score"`` stays raw); the
            alternative to clipping where reward sizes matter (ViZDoom Basic: a kill is worth
            25 steps of its living penalty, clipping makes them equal). Needs
            ``clip_rewards=False``.
        eval_mode: build for evaluation (Procgen: levels disjoint from the training levels).
        max_episode_frames: episode cap in simulator frames (``None``: suite default; Atari
            108,000 as BTR).
        backend: ``"vector"`` (the simulator's own vectorisation: Atari, Procgen, memory),
            ``"serial"`` (TorchRL ``SerialEnv``) or ``"parallel"`` (TorchRL ``ParallelEnv``,
            spawned workers); ``None``: the suite's fastest (docs/envs.md).
        **suite_kwargs: suite options (e.g. Atari ``repeat_action_probability``, Procgen
            ``num_levels``, memory ``distractor``); unknown ones raise ``TypeError``.

    Returns:
        a :class:`~torchrl.envs.TransformedEnv`; :func:`describe_env` returns its :class:`EnvInfo`.

    Raises:
        ValueError: unknown suite, env id or backend, or invalid option values.
        MissingDependencyError: the suite's optional dependency is missing (names the pip extra).

    Example:
        >>> from torchrl.envs.utils import check_env_specs
        >>> env = make_env("memory", "cue-L10", num_envs=4, seed=1)
        >>> check_env_specs(env)
        >>> td = env.rollout(11, break_when_any_done=False)
        >>> td["next", "pixels"].shape, td["next", "episode_score"].shape
        (torch.Size([4, 11, 4, 32, 32]), torch.Size([4, 11, 1]))
    """
    module = _suite_module(suite)
    _check_id_and_seed(env_id, seed)
    check_reward_scale(reward_scale, clip_rewards=clip_rewards)
    env = module.build(
        env_id,
        num_envs=num_envs,
        seed=seed,
        device=torch.device(device),
        frame_stack=frame_stack,
        frame_size=frame_size,
        grayscale=grayscale,
        clip_rewards=clip_rewards,
        eval_mode=eval_mode,
        max_episode_frames=max_episode_frames,
        backend=backend,
        **suite_kwargs,
    )
    return _scale_rewards(env, reward_scale)


def _check_id_and_seed(env_id: str, seed: int) -> None:
    """Raise ``ValueError`` unless ``env_id`` is a non-empty string and ``seed`` an int."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")


def _scale_rewards(env: EnvBase, reward_scale: float) -> EnvBase:
    """Append a scaling of ``"reward"`` by ``reward_scale`` to ``env`` unless it is 1."""
    if reward_scale != 1.0:
        env.append_transform(
            RewardScaling(loc=0.0, scale=float(reward_scale), in_keys=[keys.REWARD])
        )
    return env


def check_reward_scale(reward_scale: float, *, clip_rewards: bool) -> None:
    """Raise ``ValueError`` unless ``reward_scale`` is a positive finite number usable here."""
    if (
        isinstance(reward_scale, bool)
        or not isinstance(reward_scale, (int, float))
        or not math.isfinite(reward_scale)
        or reward_scale <= 0
    ):
        raise ValueError(f"reward_scale must be a positive number, got {reward_scale!r}.")
    if clip_rewards and reward_scale != 1.0:
        raise ValueError(
            f"reward_scale={reward_scale} with clip_rewards=True: scale or clip the rewards, not "
            "both (set clip_rewards=False to scale them)."
        )
