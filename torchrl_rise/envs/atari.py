"""Atari (ALE v5) with BTR's preprocessing, vectorised by ale-py's C++ ``AtariVectorEnv``.

Defaults follow Beyond The Rainbow (see docs/envs.md): sticky actions 0.25, up to 30 no-op starts,
frameskip 4 with a max-pool over the last two frames, grayscale 84x84 (area resize), stack 4, no
life-loss terminal, no FIRE on reset, a 108,000-frame episode cap, the minimal action set, rewards
clipped to ``[-1, 1]`` for learning only.

:class:`AtariVectorEnvWrapper` exposes ``ale_py.vector_env.AtariVectorEnv`` as a TorchRL
:class:`~torchrl.envs.EnvBase`. ALE runs with ``autoreset_mode="SameStep"``: at a done step it
returns the final observation of the episode in ``info["final_obs"]`` and has already started the
next episode, whose first observation it returns in place of the final one. The wrapper puts the
final observation in ``("next", "pixels")`` of the done step and keeps the new episode's first
observation for the ``"_reset"`` TorchRL sends next, so TorchRL's partial-reset semantics hold exactly
(no step is lost, no action is ignored, which gymnasium's next-step autoreset would do).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from torchrl_rise import keys
from torchrl_rise.envs.common import (
    batch_envs,
    check_positive,
    finish_suite_env,
    reject_unknown,
    resolve_options,
)

__all__ = ["AtariVectorEnvWrapper", "build", "list_env_ids", "rom_name"]

FRAME_SKIP = 4
MAX_EPISODE_FRAMES = 108_000
_OPTIONS = (
    "repeat_action_probability",
    "noop_max",
    "frame_skip",
    "full_action_space",
    "use_fire_reset",
    "episodic_life",
    "num_threads",
)


def list_env_ids() -> list[str]:
    """ALE ROM names (snake_case), e.g. ``"pong"``, ``"ms_pacman"``."""
    from ale_py import roms

    return sorted(roms.get_all_rom_ids())


def rom_name(env_id: str) -> str:
    """Map ``"pong"``, ``"Pong"``, ``"MsPacman"``, ``"ALE/MsPacman-v5"`` or
    ``"MsPacmanNoFrameskip-v4"`` to the ALE ROM name (``"ms_pacman"``).

    Raises:
        ValueError: no such ROM (the message lists the valid names).

    Example:
        >>> rom_name("ALE/MsPacman-v5")
        'ms_pacman'
    """
    name = env_id.strip()
    name = re.sub(r"^ALE/", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)?-v\d+$", "", name)
    if any(c.isupper() for c in name):
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    valid = list_env_ids()
    if name not in valid:
        raise ValueError(
            f"Unknown Atari env id {env_id!r} (read as ROM {name!r}). Valid ROM names: "
            f"{', '.join(valid)}."
        )
    return name


def _ale_seed(seed: int) -> int:
    """ALE takes 32-bit seeds; TorchRL's seed chains (``SerialEnv.set_seed``) can be larger."""
    return int(seed) % (2**31 - 2**16)  # leaves room for ALE's ``seed + i`` per emulator


def _check_options(
    *,
    num_envs: int,
    frame_skip: int,
    max_episode_frames: int | None,
    repeat_action_probability: float,
    noop_max: int,
) -> None:
    """Raise ``ValueError`` for :class:`AtariVectorEnvWrapper` options out of range."""
    check_positive("num_envs", num_envs)
    check_positive("frame_skip", frame_skip)
    check_positive("max_episode_frames", max_episode_frames, allow_none=True)
    if not 0.0 <= repeat_action_probability <= 1.0:
        raise ValueError(
            f"repeat_action_probability must be in [0, 1], got {repeat_action_probability!r}"
        )
    if not isinstance(noop_max, int) or noop_max < 0:
        raise ValueError(f"noop_max must be a non-negative integer, got {noop_max!r}")


class AtariVectorEnvWrapper(EnvBase):
    """ale-py's C++ vector env (preprocessing in C++ threads) as a TorchRL env of batch ``[num_envs]``.

    Emits single frames ``"pixels"`` uint8 ``[C, H, W]`` (``C`` 1 or 3); stacking is left to
    :class:`~torchrl.envs.CatFrames` so episodes start padded with their first frame. The episode
    cap counts every emulator frame of the episode, no-op starts included (ALE's
    ``max_num_frames_per_episode``, as in gymnasium's ``ALE/*-v5``); reaching it sets ``truncated``.

    Args:
        game: ALE ROM name (``"pong"``); see :func:`rom_name`.
        num_envs: number of emulators.

    Keyword Args:
        seed: seeds emulator ``i`` with ``seed + i`` at the first reset.
        frame_size: ``(H, W)`` of the frames (area resize in ALE).
        grayscale: 1-channel (True) or RGB frames.
        frame_skip: emulator frames per action (max-pool over the last two).
        repeat_action_probability: sticky-action probability (ALE v5: 0.25).
        noop_max: up to this many no-ops at episode start.
        full_action_space: 18 actions (True) or the game's minimal set (False).
        max_episode_frames: episode cap in frames (``None``: no cap).
        use_fire_reset: press FIRE after reset in games that need it (BTR: no).
        episodic_life: end episodes at life loss (BTR: no).
        num_threads: C++ worker threads (0: ALE picks).
        device: device of the output tensors.

    Example:
        >>> env = AtariVectorEnvWrapper("pong", 2, seed=0)
        >>> td = env.rand_step(env.reset())
        >>> td["next", "pixels"].shape, td["next", "pixels"].dtype
        (torch.Size([2, 1, 84, 84]), torch.uint8)
    """

    # ALE skips frames itself: tell TorchRL not to wrap this env in a FrameSkipTransform (it does
    # that to any env with a ``frame_skip`` attribute > 1 otherwise).
    _has_frame_skip = True

    def __init__(
        self,
        game: str,
        num_envs: int = 1,
        *,
        seed: int = 0,
        frame_size: tuple[int, int] = (84, 84),
        grayscale: bool = True,
        frame_skip: int = FRAME_SKIP,
        repeat_action_probability: float = 0.25,
        noop_max: int = 30,
        full_action_space: bool = False,
        max_episode_frames: int | None = MAX_EPISODE_FRAMES,
        use_fire_reset: bool = False,
        episodic_life: bool = False,
        num_threads: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        from ale_py.vector_env import AtariVectorEnv

        _check_options(
            num_envs=num_envs,
            frame_skip=frame_skip,
            max_episode_frames=max_episode_frames,
            repeat_action_probability=repeat_action_probability,
            noop_max=noop_max,
        )
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.game = rom_name(game)
        self.frame_size = tuple(frame_size)
        self.grayscale = grayscale
        self.frame_skip = frame_skip
        self._vec = AtariVectorEnv(
            self.game,
            num_envs,
            num_threads=num_threads,
            # ALE's cap is in agent frames; 0 would mean "no cap" in ALE but is not accepted here.
            max_num_frames_per_episode=max_episode_frames or 2**31 - 1,
            repeat_action_probability=repeat_action_probability,
            full_action_space=full_action_space,
            autoreset_mode="SameStep",
            img_height=self.frame_size[0],
            img_width=self.frame_size[1],
            grayscale=grayscale,
            stack_num=1,
            frameskip=frame_skip,
            maxpool=True,
            noop_max=noop_max,
            episodic_life=episodic_life,
            reward_clipping=False,
            use_fire_reset=use_fire_reset,
        )
        self.num_actions = int(self._vec.single_action_space.n)
        self._seed: int | None = _ale_seed(seed)
        self._set_specs(channels=1 if grayscale else 3)
        # Last observation of every env, and the first observation of the next episode of envs
        # that ALE auto-reset at their last step (consumed by the next ``_reset``).
        self._obs: torch.Tensor | None = None
        self._pending = np.zeros(num_envs, dtype=bool)
        self._pending_obs: torch.Tensor | None = None

    def _set_specs(self, *, channels: int) -> None:
        """Observation (``channels`` x frame size uint8 pixels), action, reward and done specs."""
        b = self.batch_size
        self.observation_spec = Composite(
            {
                keys.PIXELS: Bounded(
                    low=0,
                    high=255,
                    shape=(*b, channels, *self.frame_size),
                    dtype=torch.uint8,
                    device=self.device,
                )
            },
            shape=b,
        )
        self.action_spec = Categorical(
            self.num_actions, shape=b, dtype=torch.int64, device=self.device
        )
        self.reward_spec = Unbounded(shape=(*b, 1), dtype=torch.float32, device=self.device)
        self.done_spec = Composite(
            {
                k: Categorical(2, shape=(*b, 1), dtype=torch.bool, device=self.device)
                for k in (keys.DONE, keys.TERMINATED, keys.TRUNCATED)
            },
            shape=b,
        )

    def _frames(self, obs: np.ndarray) -> torch.Tensor:
        # ALE: [B, stack=1, H, W] (grayscale) or [B, 1, H, W, 3] (RGB).
        frames = torch.from_numpy(np.ascontiguousarray(obs))
        frames = frames[:, 0].movedim(-1, 1) if not self.grayscale else frames
        return frames.contiguous()

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        full = reset is None or self._obs is None
        if full:
            obs, _ = self._vec.reset(seed=self._seed)
            self._seed = None
            self._obs = self._frames(obs)
            self._pending[:] = False
        else:
            mask = reset.reshape(-1).cpu().numpy().astype(bool)
            from_pending = mask & self._pending
            if from_pending.any():
                idx = torch.from_numpy(np.flatnonzero(from_pending))
                self._obs[idx] = self._pending_obs[idx]
                self._pending[from_pending] = False
            to_reset = mask & ~from_pending
            if to_reset.any():
                obs, _ = self._vec.reset(options={"reset_mask": to_reset})
                idx = torch.from_numpy(np.flatnonzero(to_reset))
                self._obs[idx] = self._frames(obs)[idx]
                self._pending[to_reset] = False
        false = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                keys.PIXELS: self._obs.to(self.device, copy=True),
                keys.DONE: false,
                keys.TERMINATED: false.clone(),
                keys.TRUNCATED: false.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(keys.ACTION).reshape(-1).cpu().numpy().astype(np.int64)
        obs, reward, terminated, truncated, info = self._vec.step(action)
        frames = self._frames(obs)
        done = np.logical_or(terminated, truncated)
        if done.any():
            # SameStep autoreset: ``obs`` holds the new episodes' first frames for done envs.
            final = self._frames(info["final_obs"])
            idx = torch.from_numpy(np.flatnonzero(done))
            if self._pending_obs is None:
                self._pending_obs = torch.zeros_like(frames)
            self._pending_obs[idx] = frames[idx]
            self._pending |= done
            frames[idx] = final[idx]
        self._obs = frames
        term = torch.from_numpy(terminated).view(-1, 1)
        trunc = torch.from_numpy(truncated).view(-1, 1)
        return TensorDict(
            {
                keys.PIXELS: frames.to(self.device, copy=True),
                keys.REWARD: torch.from_numpy(reward.astype(np.float32)).view(-1, 1),
                keys.DONE: term | trunc,
                keys.TERMINATED: term,
                keys.TRUNCATED: trunc,
            },
            batch_size=self.batch_size,
        ).to(self.device)

    def _set_seed(self, seed: int | None) -> None:
        # Applied at the next full reset (ALE seeds emulators when they reset).
        self._seed = None if seed is None else _ale_seed(seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        vec = self.__dict__.get("_vec")
        if vec is not None:
            vec.close()
        super().close(raise_if_closed=raise_if_closed)


def _single_env(game: str, seed: int, **kwargs) -> AtariVectorEnvWrapper:
    """One emulator (module level, so ``ParallelEnv`` can pickle it)."""
    env = AtariVectorEnvWrapper(game, 1, seed=seed, num_threads=1, **kwargs)
    # SerialEnv/ParallelEnv expect unbatched sub-envs: drop the leading [1].
    return _Unbatch(env)


class _Unbatch(EnvBase):
    """Present a batch-``[1]`` env as an unbatched one (for ``SerialEnv``/``ParallelEnv``)."""

    def __init__(self, env: EnvBase) -> None:
        super().__init__(device=env.device, batch_size=torch.Size([]))
        self._inner = env
        self.observation_spec = env.observation_spec[0].clone()
        self.action_spec = env.action_spec[0].clone()
        self.reward_spec = env.reward_spec[0].clone()
        self.done_spec = env.done_spec[0].clone()

    def _reset(self, tensordict=None, **kwargs):
        # After the first reset, ask for a partial reset of the one env: it then starts the
        # episode ALE already auto-started instead of resetting the emulator a second time.
        started = getattr(self._inner, "_obs", None) is not None
        inner = (
            TensorDict({"_reset": torch.ones(1, 1, dtype=torch.bool)}, batch_size=[1])
            if started
            else None
        )
        return self._inner._reset(inner)[0]

    def _step(self, tensordict):
        return self._inner._step(tensordict.unsqueeze(0))[0]

    def _set_seed(self, seed):
        self._inner._set_seed(seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        self._inner.close(raise_if_closed=False)
        super().close(raise_if_closed=raise_if_closed)


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
    """``make_env("atari", env_id, ...)``; see the module docstring for the defaults.

    ``eval_mode`` changes nothing for Atari (BTR evaluates on the same env; the trainer turns noise
    off and sets eps 0.01). Backends: ``"vector"`` (default, fastest, docs/envs.md),
    ``"serial"``/``"parallel"`` (one single-emulator env per TorchRL worker, same preprocessing).
    """
    reject_unknown("atari", kwargs, _OPTIONS)
    opts = resolve_options(
        "atari",
        num_envs=num_envs,
        frame_stack=frame_stack,
        frame_size=frame_size,
        grayscale=grayscale,
        backend=backend,
        default_frame_stack=4,
        default_frame_size=(84, 84),
        default_grayscale=True,
        backends=("vector", "serial", "parallel"),
    )
    game = rom_name(env_id)
    max_frames = MAX_EPISODE_FRAMES if max_episode_frames is None else max_episode_frames
    check_positive("max_episode_frames", max_frames)
    frame_skip = kwargs.pop("frame_skip", FRAME_SKIP)
    num_threads = kwargs.pop("num_threads", 0)
    common = dict(
        frame_size=opts.frame_size,
        grayscale=opts.grayscale,
        frame_skip=frame_skip,
        max_episode_frames=max_frames,
        **kwargs,
    )
    if opts.backend == "vector":
        base = AtariVectorEnvWrapper(
            game, opts.num_envs, seed=seed, device=device, num_threads=num_threads, **common
        )
    else:
        # Validate in this process first (clear errors instead of a worker traceback).
        AtariVectorEnvWrapper(game, 1, **common).close()
        base = batch_envs(
            functools.partial(_single_env, game, seed, **common),
            num_envs=opts.num_envs,
            backend=opts.backend,
            device=device,
            seed=seed,
        )
    return finish_suite_env(
        base,
        suite="atari",
        env_id=env_id,
        opts=opts,
        num_actions=int(base.action_spec.space.n),
        clip_rewards=clip_rewards,
        eval_mode=eval_mode,
        time_limit=None,
        max_episode_steps=max_frames // frame_skip,
        frame_skip=frame_skip,
    )
