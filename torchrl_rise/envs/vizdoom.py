"""ViZDoom scenarios (``vizdoom.gymnasium_wrapper`` ids, headless) as batched TorchRL envs.

Defaults (docs/envs.md): the game renders at 160x120 (the cheapest resolution that keeps the
scenarios legible) and frames are area-resized to RGB 84x84, stacked 4; ViZDoom skips 4 tics per
action natively (one render per agent step); the scenario's own timeout ends episodes, reported as
``truncated`` only.

Two fixes over ``vizdoom.gymnasium_wrapper`` 1.3 (:class:`VizdoomObservation`): its timeout step
sets both ``terminated`` and ``truncated`` (that would stop bootstrapping at a time limit), so a
timeout here is ``truncated`` only; and it returns a black frame at the last step (the game has no
state after an episode ends), so the final observation here repeats the last rendered frame.
"""

from __future__ import annotations

import functools

import gymnasium
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

__all__ = ["VizdoomObservation", "build", "list_env_ids"]

FRAME_SKIP = 4
RESOLUTION = "RES_160X120"
_OPTIONS = ("frame_skip", "screen_resolution", "scenario_kwargs")


def _vizdoom():
    vzd = import_optional("vizdoom", extra="vizdoom", purpose="The ViZDoom suite")
    import_optional("vizdoom.gymnasium_wrapper", extra="vizdoom", purpose="The ViZDoom suite")
    return vzd


def list_env_ids() -> list[str]:
    """Registered ViZDoom ids with a discrete action space (``"VizdoomBasic-v1"``, ...)."""
    _vizdoom()
    return sorted(
        k
        for k in gymnasium.registry
        if k.startswith("Vizdoom") and "MultiBinary" not in k and "Audio" not in k
    )


class VizdoomObservation(gymnasium.Wrapper):
    """Keep ViZDoom's ``"screen"`` only; timeouts are truncations; no black final frame.

    Example:
        >>> import gymnasium, vizdoom.gymnasium_wrapper  # doctest: +SKIP
        >>> env = VizdoomObservation(gymnasium.make("VizdoomBasic-v1"))  # doctest: +SKIP
        >>> env.reset(seed=0)[0].shape  # doctest: +SKIP
        (240, 320, 3)
    """

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.observation_space = env.observation_space["screen"]
        self._last = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._last = obs["screen"]
        return self._last, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            screen = self._last  # the game renders nothing once the episode is over
        else:
            screen = self._last = obs["screen"]
        return screen, reward, bool(terminated and not truncated), bool(truncated), info


def _single_env(
    env_id: str,
    *,
    frame_skip: int,
    screen_resolution: str,
    frame_size: tuple[int, int],
    grayscale: bool,
    scenario_kwargs: dict,
):
    """One ViZDoom game as a TorchRL env emitting ``"pixels"`` (module level: picklable)."""
    from torchrl.envs import GymWrapper, TransformedEnv

    _vizdoom()
    env = gymnasium.make(
        env_id, frame_skip=frame_skip, screen_resolution=screen_resolution, **scenario_kwargs
    )
    if not isinstance(env.action_space, gymnasium.spaces.Discrete):
        space = env.action_space
        env.close()
        raise ValueError(
            f"ViZDoom env {env_id!r} has action space {space}, not a discrete one; RISE/BTR need "
            f"discrete actions: use one of {list_env_ids()}."
        )
    env = VizdoomObservation(env)
    torch_env = GymWrapper(env, categorical_action_encoding=True)
    return TransformedEnv(
        torch_env,
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
    """``make_env("vizdoom", env_id, ...)``; see the module docstring for the defaults.

    Suite options: ``frame_skip`` (4), ``screen_resolution`` (``"RES_160X120"``), and
    ``scenario_kwargs`` (extra DoomGame config, e.g. ``{"doom_skill": 3}``). ``eval_mode`` changes
    nothing (ViZDoom scenarios have no train/test split). Backends: ``"serial"`` (default) or
    ``"parallel"``.
    """
    reject_unknown("vizdoom", kwargs, _OPTIONS)
    _vizdoom()
    opts = resolve_options(
        "vizdoom",
        num_envs=num_envs,
        frame_stack=frame_stack,
        frame_size=frame_size,
        grayscale=grayscale,
        backend=backend,
        default_frame_stack=4,
        default_frame_size=(84, 84),
        default_grayscale=False,
        backends=("serial", "parallel"),
    )
    check_env_id(env_id, list_env_ids(), suite_name="ViZDoom")
    frame_skip = kwargs.get("frame_skip", FRAME_SKIP)
    check_positive("frame_skip", frame_skip)
    check_positive("max_episode_frames", max_episode_frames, allow_none=True)
    make_one = functools.partial(
        _single_env,
        env_id,
        frame_skip=frame_skip,
        screen_resolution=kwargs.get("screen_resolution", RESOLUTION),
        frame_size=opts.frame_size,
        grayscale=opts.grayscale,
        scenario_kwargs=dict(kwargs.get("scenario_kwargs") or {}),
    )
    max_steps = None if max_episode_frames is None else max(1, max_episode_frames // frame_skip)
    return batch_suite_env(
        make_one,
        suite="vizdoom",
        env_id=env_id,
        opts=opts,
        num_actions=probe_num_actions(make_one),
        seed=seed,
        device=device,
        clip_rewards=clip_rewards,
        eval_mode=eval_mode,
        max_episode_steps=max_steps,
        frame_skip=frame_skip,
    )
