"""MiniWorld 3D navigation tasks (``miniworld`` gymnasium ids), headless, as batched TorchRL envs.

Defaults (docs/envs.md): the native 60x80 RGB observation (no resize: it is already small, and the
IMPALA CNN pools adaptively), stack 4, one simulator step per action (MiniWorld actions are already
coarse: turn 15 degrees, move 0.15 m), the task's own step limit (``truncated``).

MiniWorld renders with OpenGL through pyglet: ``PYGLET_HEADLESS=true`` (EGL) is set before it is
imported unless the caller set it, and ``"parallel"`` workers are spawned, never forked (a forked
OpenGL context hangs).
"""

from __future__ import annotations

import functools
import os

import torch

from torchrl_rise import keys
from torchrl_rise._optional import import_optional
from torchrl_rise.envs.common import (
    PixelPreprocess,
    batch_suite_env,
    check_env_id,
    check_positive,
    probe_num_actions,
    reject_unknown,
    resolve_options,
)

__all__ = ["build", "list_env_ids"]

_OPTIONS = ("env_kwargs",)


def _miniworld():
    os.environ.setdefault("PYGLET_HEADLESS", "true")
    return import_optional("miniworld", extra="miniworld", purpose="The MiniWorld suite")


def list_env_ids() -> list[str]:
    """Registered MiniWorld ids (``"MiniWorld-Hallway-v0"``, ``"MiniWorld-TMaze-v0"``, ...)."""
    import gymnasium

    _miniworld()
    return sorted(k for k in gymnasium.registry if k.startswith("MiniWorld-"))


def _single_env(
    env_id: str, *, frame_size: tuple[int, int] | None, grayscale: bool, env_kwargs: dict
):
    """One MiniWorld env as a TorchRL env emitting ``"pixels"`` (module level: picklable)."""
    import gymnasium
    from torchrl.envs import GymWrapper, TransformedEnv

    _miniworld()
    env = gymnasium.make(env_id, **env_kwargs)
    if not isinstance(env.action_space, gymnasium.spaces.Discrete):
        space = env.action_space
        env.close()
        raise ValueError(f"MiniWorld env {env_id!r} has a non-discrete action space {space}.")
    return TransformedEnv(
        GymWrapper(env, categorical_action_encoding=True),
        PixelPreprocess(
            in_key=keys.PIXELS, channels_last=True, grayscale=grayscale, size=frame_size
        ),
    )


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
    """``make_env("miniworld", env_id, ...)``; see the module docstring for the defaults.

    Suite option: ``env_kwargs`` (passed to ``gymnasium.make``, e.g. ``{"obs_width": 64}``).
    ``eval_mode`` changes nothing (MiniWorld samples a new layout every episode). Backends:
    ``"serial"`` (default) or ``"parallel"`` (spawned workers).
    """
    reject_unknown("miniworld", kwargs, _OPTIONS)
    _miniworld()
    check_env_id(env_id, list_env_ids(), suite_name="MiniWorld")
    opts = resolve_options(
        "miniworld",
        num_envs=num_envs,
        frame_stack=frame_stack,
        frame_size=frame_size,
        grayscale=grayscale,
        backend=backend,
        default_frame_stack=4,
        default_frame_size=(60, 80),
        default_grayscale=False,
        backends=("serial", "parallel"),
    )
    check_positive("max_episode_frames", max_episode_frames, allow_none=True)
    make_one = functools.partial(
        _single_env,
        env_id,
        frame_size=opts.frame_size,
        grayscale=opts.grayscale,
        env_kwargs=dict(kwargs.get("env_kwargs") or {}),
    )
    return batch_suite_env(
        make_one,
        suite="miniworld",
        env_id=env_id,
        opts=opts,
        num_actions=probe_num_actions(make_one),
        seed=seed,
        device=device,
        clip_rewards=clip_rewards,
        eval_mode=eval_mode,
        max_episode_steps=max_episode_frames,
    )
