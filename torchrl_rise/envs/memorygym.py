"""Memory Gym's grid tasks (``memory_gym`` ids, e.g. ``"MortarMayhem-Grid-v0"``) as batched envs.

`Memory Gym <https://github.com/MarcoMeter/drl-memory-gym>`_ (Pleines et al., ICLR 2023) is a
third-party benchmark of 2D pixel tasks built to need memory. Its grid variants have discrete actions
(0 no-op, 1 turn left, 2 turn right, 3 forward) and render RGB 84x84. In Mortar Mayhem Grid the agent
is shown a sequence of commands ("move to the tile to the right", ...) while it cannot move, then has
to execute them from memory: at each check it must stand on the commanded tile, otherwise the episode
ends.

Defaults (docs/envs.md): the native 84x84 RGB frame (``frame_size`` resizes by area), stack 4, one
simulator step per action, Memory Gym's own episode end. ``reset_params`` (a dict, Memory Gym's
"reset parameters", e.g. ``{"command_count": [1], "command_show_delay": [6]}``) is passed to every
reset; unset parameters keep Memory Gym's defaults (10 commands for Mortar Mayhem).
``crop_to_arena=True`` keeps only the arena's square of the frame (everything else is black): a
3x3 Mortar Mayhem arena is the central 42x42 pixels of 84x84, so ``frame_size=42`` with the crop
keeps the native pixels (the agent's heading stays visible) where resizing the whole frame to 42
would halve them.

Memory Gym draws each frame on pygame's one display surface per process and calls ``pygame.quit()``
when any env closes, which breaks every other env of the process ("display Surface quit"; e.g. the
trainer's evaluation envs when a probe env closes). :class:`MemoryGymScreen` gives each env its own
off-screen surface and leaves pygame running on close, so several envs can live in one process (the
``"serial"`` backend, the default: no worker processes); the test suite checks that envs stepped in
turn in one process, one of them closed midway, see what each alone would.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import gymnasium
import numpy as np
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

__all__ = ["MemoryGymScreen", "build", "list_env_ids"]

_OPTIONS = ("reset_params", "crop_to_arena", "expose_cue")
CUE_KEY = "cue"


def _memory_gym():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # no ALSA errors at pygame.init()
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import_optional("pygame", extra="memorygym", purpose="The Memory Gym suite")
    return import_optional("memory_gym", extra="memorygym", purpose="The Memory Gym suite")


def list_env_ids() -> list[str]:
    """Registered Memory Gym ids with discrete actions (the grid variants)."""
    _memory_gym()
    return sorted(
        k
        for k, spec in gymnasium.registry.items()
        if str(spec.entry_point).startswith("memory_gym.") and "Grid" in k
    )


class MemoryGymScreen(gymnasium.Wrapper):
    """One Memory Gym env with its own off-screen surface; ``reset_params`` on every reset.

    Observations are ``[H, W, 3]`` uint8 in the usual row-major layout (Memory Gym returns pygame's
    ``[W, H, 3]``). With ``crop_to_arena=True`` they are the arena's square only; the arena is
    placed by the reset parameters, so a reset that would move it raises ``ValueError``.

    With ``expose_cue=True`` (Mortar Mayhem only) every ``info`` carries ``"cue"``: the index of
    the episode's first command in Memory Gym's command list (right, down, left, up, stay, ...),
    what an agent must remember. It is for diagnostics (a linear probe of what a memory carries,
    ``scripts/probe_context.py``); no agent reads it.

    Example:
        >>> import gymnasium, memory_gym  # doctest: +SKIP
        >>> env = MemoryGymScreen(gymnasium.make("MortarMayhem-Grid-v0"), {"command_count": [1]})
        >>> env.reset(seed=0)[0].shape  # doctest: +SKIP
        (84, 84, 3)
        >>> params = {"command_count": [1], "arena_size": 3}
        >>> env = MemoryGymScreen(gymnasium.make("MortarMayhem-Grid-v0"), params, crop_to_arena=True)
        >>> env.reset(seed=0)[0].shape  # doctest: +SKIP
        (42, 42, 3)
    """

    def __init__(
        self,
        env: gymnasium.Env,
        reset_params: dict[str, Any] | None = None,
        *,
        crop_to_arena: bool = False,
        expose_cue: bool = False,
    ) -> None:
        super().__init__(env)
        import pygame

        self._pygame = pygame
        game = env.unwrapped
        if not hasattr(game, "_draw_surfaces") or not hasattr(game, "screen_dim"):
            raise TypeError(
                f"{type(game).__name__} does not draw through `_draw_surfaces` onto a "
                "`screen_dim` square: this wrapper supports memory-gym 1.0 (the `memorygym` extra "
                "pins it)."
            )
        side = int(game.screen_dim)
        self._screen = pygame.Surface((side, side))
        game.screen = self._screen
        game._draw_surfaces = self._draw
        self.reset_params = dict(reset_params or {})
        self._command_names: list[str] | None = None
        if expose_cue:
            commands = getattr(type(game), "_generate_commands", None)
            command_type = getattr(sys.modules[type(game).__module__], "Command", None)
            if commands is None or command_type is None:
                raise TypeError(
                    f"expose_cue: {type(game).__name__} shows no commands to remember; only the "
                    "Mortar Mayhem tasks do. Leave expose_cue unset for this task."
                )
            self._command_names = list(command_type.COMMANDS)
        self._crop: tuple[int, int, int, int] | None = None  # x, y, width, height
        if crop_to_arena:
            self.env.reset(options=self.reset_params or None)  # the arena is placed at reset
            if not hasattr(game, "arena"):
                raise TypeError(
                    f"crop_to_arena: {type(game).__name__} has no arena to crop to; only the "
                    "Mortar Mayhem tasks draw one. Leave crop_to_arena unset for this task."
                )
            self._crop = self._arena_rect()
        height, width = (self._crop[3], self._crop[2]) if self._crop else (side, side)
        self.observation_space = gymnasium.spaces.Box(0, 255, (height, width, 3), np.uint8)

    def _arena_rect(self) -> tuple[int, int, int, int]:
        rect = self.env.unwrapped.arena.rect
        return int(rect.x), int(rect.y), int(rect.width), int(rect.height)

    def _draw(self, surfaces) -> None:
        for surface, where in surfaces:
            if surface is not None:
                self._screen.blit(surface, where)

    def _frame(self) -> np.ndarray:
        frame = self._pygame.surfarray.array3d(self._screen).transpose(1, 0, 2)
        if self._crop is not None:
            x, y, width, height = self._crop
            frame = frame[y : y + height, x : x + width]
        return np.ascontiguousarray(frame)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        params = {**self.reset_params, **(options or {})}
        _, info = self.env.reset(seed=seed, options=params or None)
        if self._crop is not None and self._arena_rect() != self._crop:
            raise ValueError(
                f"crop_to_arena: this reset moved the arena from {self._crop} to "
                f"{self._arena_rect()} (x, y, width, height); the observation shape is fixed, so "
                "keep arena_size the same for every reset of a cropped env."
            )
        return self._frame(), self._with_cue(info)

    def step(self, action):
        _, reward, terminated, truncated, info = self.env.step(int(action))
        info = self._with_cue(info)
        return self._frame(), float(reward), bool(terminated), bool(truncated), info

    def _with_cue(self, info: dict) -> dict:
        if self._command_names is None:
            return info
        first = self.env.unwrapped._commands[0]
        return {**info, CUE_KEY: np.int64(self._command_names.index(first))}

    def close(self) -> None:
        """Drops the env; pygame stays initialised for the other envs of this process."""


def _single_env(
    env_id: str,
    *,
    reset_params: dict[str, Any],
    crop_to_arena: bool,
    expose_cue: bool = False,
    frame_size: tuple[int, int],
    grayscale: bool,
):
    """One Memory Gym env as a TorchRL env emitting ``"pixels"`` (module level: picklable)."""
    from torchrl.data import Unbounded
    from torchrl.envs import GymWrapper, TransformedEnv
    from torchrl.envs.gym_like import default_info_dict_reader

    _memory_gym()
    env = MemoryGymScreen(
        gymnasium.make(env_id), reset_params, crop_to_arena=crop_to_arena, expose_cue=expose_cue
    )
    torch_env = GymWrapper(env, categorical_action_encoding=True)
    if expose_cue:
        spec = {CUE_KEY: Unbounded(shape=(), dtype=torch.int64)}
        torch_env.set_info_dict_reader(default_info_dict_reader([CUE_KEY], spec=spec))
    return TransformedEnv(
        torch_env,
        PixelPreprocess(
            in_key=keys.PIXELS, channels_last=True, grayscale=grayscale, size=frame_size
        ),
    )


def _mortar_mayhem_flag(kwargs: dict[str, Any], name: str, env_id: str, lacks: str) -> bool:
    """A true/false suite option that only the Mortar Mayhem tasks support."""
    value = kwargs.get(name, False)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}.")
    if value and not env_id.startswith("MortarMayhem"):
        raise ValueError(
            f"{name}: {env_id!r} {lacks} (only the MortarMayhem tasks do); leave {name} unset "
            "for it."
        )
    return value


def _reset_params(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``reset_params`` suite option, checked to be a dict (a copy; ``{}`` when unset)."""
    reset_params = kwargs.get("reset_params") or {}
    if not isinstance(reset_params, dict):
        raise TypeError(
            f"reset_params must be a dict of Memory Gym reset parameters, got {reset_params!r}; "
            "e.g. {'command_count': [1]}."
        )
    return dict(reset_params)


def _probe_num_actions(make_one, *, env_id: str, reset_params: dict[str, Any]) -> int:
    """Build and reset one env here first: bad reset parameters fail with Memory Gym's error here."""

    def build_and_reset():
        try:
            probe = make_one()
            probe.reset()
        except (KeyError, ValueError, AssertionError, TypeError) as err:
            raise ValueError(
                f"Memory Gym rejected reset_params={reset_params!r} for {env_id!r}: {err}"
            ) from err
        return probe

    return probe_num_actions(build_and_reset)


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
    """``make_env("memorygym", env_id, ...)``; see the module docstring for the defaults.

    Suite options: ``reset_params`` (Memory Gym's reset parameters, applied at every reset),
    ``crop_to_arena`` (keep only the arena's square of each frame, before ``frame_size``) and
    ``expose_cue`` (Mortar Mayhem: the first command's index under ``"cue"``, for diagnostics).
    ``eval_mode`` changes nothing (the tasks are procedurally generated per episode). Backends:
    ``"serial"`` (default) or ``"parallel"``.
    """
    reject_unknown("memorygym", kwargs, _OPTIONS)
    _memory_gym()
    opts = resolve_options(
        "memorygym",
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
    check_env_id(env_id, list_env_ids(), suite_name="Memory Gym")
    reset_params = _reset_params(kwargs)
    crop_to_arena = _mortar_mayhem_flag(
        kwargs, "crop_to_arena", env_id, "draws no arena to crop to"
    )
    expose_cue = _mortar_mayhem_flag(kwargs, "expose_cue", env_id, "shows no command to remember")
    check_positive("max_episode_frames", max_episode_frames, allow_none=True)
    make_one = functools.partial(
        _single_env,
        env_id,
        reset_params=reset_params,
        crop_to_arena=crop_to_arena,
        expose_cue=expose_cue,
        frame_size=opts.frame_size,
        grayscale=opts.grayscale,
    )
    return batch_suite_env(
        make_one,
        suite="memorygym",
        env_id=env_id,
        opts=opts,
        num_actions=_probe_num_actions(make_one, env_id=env_id, reset_params=reset_params),
        seed=seed,
        device=device,
        clip_rewards=clip_rewards,
        eval_mode=eval_mode,
        max_episode_steps=max_episode_frames,
    )
