"""A pixel memory diagnostic: the rewarded action depends on a cue shown ``L`` steps earlier.

Each episode of :class:`CueMemoryEnv` lasts ``L + 1`` agent steps:

- step ``0`` shows the **cue**: one of ``num_cues`` patterns (cue ``i`` lights the ``i``-th of
  ``num_cues`` vertical stripes of the image);
- steps ``1 .. L-1`` show **distractors** (blank, or random noise) and every action does nothing
  (reward 0);
- step ``L`` shows the **query** (a checkerboard): the action equal to the cue index earns ``+1``
  (any other earns ``wrong_reward``, 0 by default) and the episode terminates. ``"success"`` is True
  at that step when the action was right.

An agent that sees the last ``K >= L + 1`` frames of the episode (RISE's context window) can solve
it; one that sees only a stack of ``S <= L`` frames cannot see the cue at the query and scores chance
(``1 / num_cues``). It is natively batched and vectorised in torch (thousands of steps per second on
one core), so it trains in minutes on a CPU.
"""

from __future__ import annotations

import re

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from torchrl_rise import keys
from torchrl_rise.envs.common import SUCCESS, check_positive, frame_size_tuple

__all__ = ["CueMemoryEnv", "parse_memory_id"]

_ID_RE = re.compile(r"^cue-L(?P<length>\d+)(?:-N(?P<num_cues>\d+))?$")
DISTRACTORS = ("blank", "noise")


def parse_memory_id(env_id: str) -> dict[str, int]:
    """Parse a memory env id ``"cue-L<length>"`` or ``"cue-L<length>-N<num_cues>"``.

    Example:
        >>> parse_memory_id("cue-L20-N4")
        {'length': 20, 'num_cues': 4}
    """
    match = _ID_RE.match(env_id)
    if match is None:
        raise ValueError(
            f"Unknown memory env id {env_id!r}: expected 'cue-L<length>' or "
            "'cue-L<length>-N<num_cues>', e.g. 'cue-L20' (cue 20 steps before the query, 2 cues) "
            "or 'cue-L40-N4'."
        )
    out = {"length": int(match["length"])}
    if match["num_cues"] is not None:
        out["num_cues"] = int(match["num_cues"])
    return out


class CueMemoryEnv(EnvBase):
    """Batched pixel env whose rewarded action depends on a cue seen ``length`` steps earlier.

    Emits one frame per step under ``"pixels"`` (uint8 ``[C, H, W]``); stack frames with
    :class:`~torchrl.envs.CatFrames` (``make_env("memory", ...)`` does). Partial resets through
    ``"_reset"`` restart only the selected episodes.

    Args:
        num_envs: batch size.

    Keyword Args:
        length: ``L``, steps from the cue to the query (``>= 1``); episodes last ``L + 1`` steps.
        num_cues: number of cues and of actions (``>= 2``); chance success is ``1 / num_cues``.
        frame_size: ``(H, W)`` or an int; the width must fit ``num_cues`` stripes.
        channels: 1 (grayscale) or 3 (the same image in every channel).
        distractor: ``"blank"`` (zeros) or ``"noise"`` (uniform 0..127 pixels, fresh every step).
        wrong_reward: reward of a wrong answer at the query (0 by default; -1 also works).
        seed: seed of the env's own generator (cues and noise).
        device: device of the env's tensors.

    Example:
        >>> import torch
        >>> env = CueMemoryEnv(3, length=4, frame_size=16)
        >>> td = env.reset()
        >>> td["pixels"].shape, env.action_spec.n
        (torch.Size([3, 1, 16, 16]), 2)
        >>> rollout = env.rollout(10, break_when_any_done=False)
        >>> bool(rollout["next", "terminated"][:, 4].all())  # the query is step L = 4
        True
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        length: int = 20,
        num_cues: int = 2,
        frame_size: int | tuple[int, int] = 32,
        channels: int = 1,
        distractor: str = "blank",
        wrong_reward: float = 0.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        check_positive("num_envs", num_envs)
        check_positive("length", length)
        if not isinstance(num_cues, int) or num_cues < 2:
            raise ValueError(f"num_cues must be an integer >= 2, got {num_cues!r}")
        height, width = frame_size_tuple(frame_size)
        if width < num_cues or height < 2:
            raise ValueError(
                f"frame_size {height}x{width} cannot show {num_cues} cue stripes: use a width of "
                f"at least num_cues ({num_cues}) and a height of at least 2"
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if distractor not in DISTRACTORS:
            raise ValueError(f"distractor must be one of {DISTRACTORS}, got {distractor!r}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.length = length
        self.num_cues = num_cues
        self.frame_size = (height, width)
        self.channels = channels
        self.distractor = distractor
        self.wrong_reward = float(wrong_reward)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(int(seed))
        self._build_templates()
        self._make_specs()
        self._cue = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._t = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ setup
    def _build_templates(self) -> None:
        h, w = self.frame_size
        bounds = torch.linspace(0, w, self.num_cues + 1).round().long().tolist()
        cues = torch.zeros(self.num_cues, self.channels, h, w, dtype=torch.uint8)
        for i in range(self.num_cues):
            cues[i, :, :, bounds[i] : bounds[i + 1]] = 255
        cell = max(1, min(h, w) // 8)
        rows = torch.arange(h).view(h, 1) // cell
        cols = torch.arange(w).view(1, w) // cell
        query = (((rows + cols) % 2) * 255).to(torch.uint8).expand(self.channels, h, w)
        self._cue_frames = cues.to(self.device)
        self._query_frame = query.contiguous().to(self.device)

    def _make_specs(self) -> None:
        b = self.batch_size
        self.observation_spec = Composite(
            {
                keys.PIXELS: Bounded(
                    low=0,
                    high=255,
                    shape=(*b, self.channels, *self.frame_size),
                    dtype=torch.uint8,
                    device=self.device,
                ),
                SUCCESS: Categorical(2, shape=(*b, 1), dtype=torch.bool, device=self.device),
            },
            shape=b,
        )
        self.action_spec = Categorical(
            self.num_cues, shape=b, dtype=torch.int64, device=self.device
        )
        self.reward_spec = Unbounded(shape=(*b, 1), dtype=torch.float32, device=self.device)
        # The default done spec (done, terminated; truncated added by TorchRL) is [*b, 1] bool.
        self.done_spec = Composite(
            {
                k: Categorical(2, shape=(*b, 1), dtype=torch.bool, device=self.device)
                for k in (keys.DONE, keys.TERMINATED, keys.TRUNCATED)
            },
            shape=b,
        )

    # --------------------------------------------------------------- dynamics
    def _render(self) -> torch.Tensor:
        """Frames for the current step counter ``t`` of every env."""
        t = self._t.view(-1, 1, 1, 1)
        if self.distractor == "noise":
            shape = (self.batch_size[0], self.channels, *self.frame_size)
            filler = torch.randint(
                0, 128, shape, generator=self._generator, device=self.device, dtype=torch.uint8
            )
            # No noise after the query: the post-terminal frame is blank.
            filler = filler * (t < self.length)
        else:
            filler = torch.zeros(
                (self.batch_size[0], self.channels, *self.frame_size),
                dtype=torch.uint8,
                device=self.device,
            )
        frames = torch.where(t == self.length, self._query_frame, filler)
        return torch.where(t == 0, self._cue_frames[self._cue], frames)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        else:
            mask = reset.reshape(self.batch_size).to(self.device)
        new_cue = torch.randint(
            0, self.num_cues, self.batch_size, generator=self._generator, device=self.device
        )
        self._cue = torch.where(mask, new_cue, self._cue)
        self._t = torch.where(mask, torch.zeros_like(self._t), self._t)
        false = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                keys.PIXELS: self._render(),
                SUCCESS: false.clone(),
                keys.DONE: false.clone(),
                keys.TERMINATED: false.clone(),
                keys.TRUNCATED: false.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(keys.ACTION).reshape(self.batch_size).to(self.device)
        at_query = self._t == self.length
        correct = action == self._cue
        reward = torch.where(
            at_query,
            torch.where(correct, 1.0, self.wrong_reward),
            0.0,
        ).to(torch.float32)
        self._t = self._t + 1
        terminated = at_query.unsqueeze(-1)
        return TensorDict(
            {
                keys.PIXELS: self._render(),
                SUCCESS: (at_query & correct).unsqueeze(-1),
                keys.REWARD: reward.unsqueeze(-1),
                keys.DONE: terminated.clone(),
                keys.TERMINATED: terminated,
                keys.TRUNCATED: torch.zeros_like(terminated),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._generator.manual_seed(int(seed))

    # -------------------------------------------------------------- inspection
    @property
    def cue(self) -> torch.Tensor:
        """The current episodes' cues ``[num_envs]`` (for tests and oracles; not an observation)."""
        return self._cue.clone()

    def decode_cue(self, frame: torch.Tensor) -> torch.Tensor:
        """Read the cue index off cue frames ``[..., C, H, W]`` (for oracles and tests).

        Returns the index of the brightest stripe; meaningful only on a cue frame.
        """
        w = self.frame_size[1]
        bounds = torch.linspace(0, w, self.num_cues + 1).round().long().tolist()
        column_mean = frame.float().mean(dim=(-3, -2))
        stripes = torch.stack(
            [column_mean[..., bounds[i] : bounds[i + 1]].mean(-1) for i in range(self.num_cues)],
            dim=-1,
        )
        return stripes.argmax(-1)


# ----------------------------------------------------------------------------- make_env("memory")
_OPTIONS = ("length", "num_cues", "distractor", "wrong_reward")


def list_env_ids() -> list[str]:
    """Example ids (any ``cue-L<length>[-N<num_cues>]`` works)."""
    return ["cue-L10", "cue-L20", "cue-L40", "cue-L20-N4"]


def build(
    env_id: str,
    *,
    num_envs: int,
    seed: int,
    device: torch.device,
    frame_stack: int | None,
    frame_size: int | tuple[int, int] | None,
    grayscale: bool | None,
    clip_rewards: bool,
    eval_mode: bool,
    max_episode_frames: int | None,
    backend: str | None,
    **kwargs,
):
    """``make_env("memory", env_id, ...)``: a :class:`CueMemoryEnv` with the standard transforms.

    Defaults: 1x32x32 frames, stack 4, blank distractors, 2 cues. ``length``/``num_cues`` come from
    the id and may be overridden by keyword. ``eval_mode`` changes nothing (the task has no
    train/test split; evaluate with another seed).
    """
    from torchrl_rise.envs.common import finish_suite_env, reject_unknown, resolve_options

    reject_unknown("memory", kwargs, _OPTIONS)
    opts = resolve_options(
        "memory",
        num_envs=num_envs,
        frame_stack=frame_stack,
        frame_size=frame_size,
        grayscale=grayscale,
        backend=backend,
        default_frame_stack=4,
        default_frame_size=(32, 32),
        default_grayscale=True,
        backends=("vector",),
    )
    params = {**parse_memory_id(env_id), **kwargs}
    check_positive("max_episode_frames", max_episode_frames, allow_none=True)
    base = CueMemoryEnv(
        opts.num_envs,
        frame_size=opts.frame_size,
        channels=1 if opts.grayscale else 3,
        seed=seed,
        device=device,
        **params,
    )
    return finish_suite_env(
        base,
        suite="memory",
        env_id=env_id,
        opts=opts,
        num_actions=base.num_cues,
        clip_rewards=clip_rewards,
        eval_mode=eval_mode,
        time_limit=max_episode_frames,
        max_episode_steps=base.length + 1
        if max_episode_frames is None
        else min(base.length + 1, max_episode_frames),
        success_key=SUCCESS,
    )
