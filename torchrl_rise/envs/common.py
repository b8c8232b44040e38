"""Transforms and helpers shared by every suite's env factory.

Every env :func:`~torchrl_rise.envs.make_env` builds ends in the same stack of TorchRL transforms
(:func:`standard_transforms`):

1. :class:`~torchrl.envs.RewardSum` on the *raw* reward -> ``"episode_score"`` (the score the
   trainer reports),
2. :class:`~torchrl.envs.StepCounter` -> ``"episode_length"`` (agent steps; optionally a time limit
   that sets ``truncated``),
3. :class:`~torchrl.envs.ClipTransform` on ``"reward"`` to ``[-1, 1]`` when rewards are clipped for
   learning,
4. :class:`~torchrl.envs.CatFrames` (``padding="same"``) stacking ``S`` frames of ``"pixels"``
   along the channel dim.

Simulators that emit images in another layout go through :class:`PixelPreprocess` first (HWC -> CHW,
optional grayscale, area resize, always uint8).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import Bounded, Composite
from torchrl.envs import (
    CatFrames,
    ClipTransform,
    Compose,
    EnvBase,
    RewardSum,
    StepCounter,
    Transform,
    TransformedEnv,
)

from torchrl_rise import keys

__all__ = [
    "EPISODE_LENGTH",
    "EPISODE_SCORE",
    "SUCCESS",
    "EnvInfo",
    "PixelPreprocess",
    "describe_env",
    "frame_size_tuple",
    "standard_transforms",
]

logger = logging.getLogger(__name__)

EPISODE_SCORE = "episode_score"
"""Running sum of the raw (unclipped) reward of the current episode; final score at a done step."""
EPISODE_LENGTH = "episode_length"
"""Agent steps taken in the current episode (TorchRL ``StepCounter``)."""
SUCCESS = "success"
"""Bool ``[1]``, True at the terminal step of a solved episode (memory diagnostic only)."""

_INFO_ATTR = "_rise_env_info"


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """What the trainer needs to know about an env built by :func:`~torchrl_rise.envs.make_env`.

    Attributes:
        suite: the suite name (``"atari"``, ``"vizdoom"``, ``"procgen"``, ``"miniworld"``,
            ``"memory"``).
        env_id: the env id within the suite, as given to ``make_env``.
        num_envs: the env's batch size (``env.batch_size == (num_envs,)``).
        num_actions: number of discrete actions (``action`` is an int64 index in
            ``[0, num_actions)``).
        frame_channels: channels ``C`` of one frame (1 grayscale, 3 RGB).
        frame_stack: frames ``S`` stacked in ``"pixels"`` (``pixels`` has ``S * C`` channels).
        frame_size: ``(H, W)`` of one frame.
        frame_skip: simulator frames per agent step (the unit of "frames" in frame budgets).
        backend: how the batch is run (``"vector"``, ``"serial"`` or ``"parallel"``).
        eval_mode: whether the env was built for evaluation (e.g. unseen Procgen levels).
        max_episode_steps: agent-step cap of an episode when known (``None``: the simulator's own).
        score_key: key of the raw episode score (``("next", score_key)`` at a done step).
        length_key: key of the episode length in agent steps.
        success_key: key of a per-episode success flag, if the env has one.

    Example:
        >>> from torchrl_rise.envs import make_env, describe_env
        >>> info = describe_env(make_env("memory", "cue-L8", num_envs=2))
        >>> (info.num_actions, info.frame_stack * info.frame_channels, info.frame_size)
        (2, 4, (32, 32))
    """

    suite: str
    env_id: str
    num_envs: int
    num_actions: int
    frame_channels: int
    frame_stack: int
    frame_size: tuple[int, int]
    frame_skip: int
    backend: str
    eval_mode: bool = False
    max_episode_steps: int | None = None
    score_key: NestedKey = EPISODE_SCORE
    length_key: NestedKey = EPISODE_LENGTH
    success_key: NestedKey | None = None

    @property
    def pixels_shape(self) -> tuple[int, int, int]:
        """Shape ``(S * C, H, W)`` of one env's ``"pixels"``."""
        return (self.frame_stack * self.frame_channels, *self.frame_size)


def attach_info(env: EnvBase, info: EnvInfo) -> EnvBase:
    """Attach ``info`` to ``env`` for :func:`describe_env`; returns ``env``."""
    env.__dict__[_INFO_ATTR] = info
    return env


def describe_env(env: EnvBase) -> EnvInfo:
    """Return the :class:`EnvInfo` of an env built by :func:`~torchrl_rise.envs.make_env`.

    Args:
        env: the env.

    Raises:
        TypeError: ``env`` was not built by ``make_env`` (build it with ``make_env``, or construct
            an :class:`EnvInfo` yourself).

    Example:
        >>> from torchrl_rise.envs import make_env, describe_env
        >>> describe_env(make_env("memory", "cue-L5")).suite
        'memory'
    """
    info = env.__dict__.get(_INFO_ATTR)
    if info is None:
        raise TypeError(
            f"{type(env).__name__} carries no EnvInfo: describe_env() only knows envs built by "
            "torchrl_rise.envs.make_env. Build the env with make_env, or construct an EnvInfo "
            "for it yourself."
        )
    return info


def frame_size_tuple(
    frame_size: int | Sequence[int], *, name: str = "frame_size"
) -> tuple[int, int]:
    """Normalise ``frame_size`` (an int for square frames, or ``(H, W)``) and validate it."""
    if isinstance(frame_size, int) and not isinstance(frame_size, bool):
        size = (frame_size, frame_size)
    else:
        try:
            size = tuple(int(s) for s in frame_size)
        except TypeError:
            raise TypeError(
                f"{name} must be an int or a (height, width) pair, got {frame_size!r}"
            ) from None
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"{name} must be a positive int or a (height, width) pair of positive ints, "
            f"got {frame_size!r}"
        )
    return size  # type: ignore[return-value]


def check_positive(name: str, value: int | None, *, allow_none: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a positive int."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class PixelPreprocess(Transform):
    """Turn a simulator image into a uint8 ``[C, H, W]`` frame: layout, grayscale, area resize.

    One transform instead of TorchRL's ``ToTensorImage`` + ``GrayScale`` + ``Resize`` chain, because
    that chain converts to float; replay stores uint8 frames, so this one stays uint8 end to end.
    Resizing uses area interpolation when shrinking (as ``cv2.INTER_AREA``, BTR's choice) and
    bilinear when enlarging. Grayscale uses the ITU-R 601 luma weights (as OpenCV and ALE).

    Args:
        in_key: the simulator's image key (e.g. ``"screen"`` for ViZDoom, ``"observation"``).
        out_key: the frame key written (default ``"pixels"``); ``in_key`` is removed when different.
        channels_last: whether the input is ``[..., H, W, C]`` (gym convention) rather than
            ``[..., C, H, W]``.
        grayscale: convert 3-channel input to 1 channel.
        size: output ``(H, W)``; ``None`` keeps the input size.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> t = PixelPreprocess(in_key="screen", channels_last=True, grayscale=True, size=(84, 84))
        >>> td = TensorDict({"screen": torch.zeros(2, 120, 160, 3, dtype=torch.uint8)}, [2])
        >>> t(td)["pixels"].shape
        torch.Size([2, 1, 84, 84])
    """

    _LUMA = (0.299, 0.587, 0.114)

    def __init__(
        self,
        *,
        in_key: NestedKey,
        out_key: NestedKey = keys.PIXELS,
        channels_last: bool = True,
        grayscale: bool = False,
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(in_keys=[in_key], out_keys=[out_key])
        self.channels_last = channels_last
        self.grayscale = grayscale
        self.size = None if size is None else frame_size_tuple(size, name="size")

    def _apply_transform(self, obs: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            obs = obs.movedim(-1, -3)
        if obs.shape[-3] not in (1, 3):
            raise ValueError(
                f"PixelPreprocess expects 1 or 3 channels, got an image of shape "
                f"{tuple(obs.shape)} (channels_last={self.channels_last}); check channels_last."
            )
        need_gray = self.grayscale and obs.shape[-3] == 3
        need_resize = self.size is not None and tuple(obs.shape[-2:]) != self.size
        if not (need_gray or need_resize):
            return obs.to(torch.uint8).contiguous()
        batch = obs.shape[:-3]
        x = obs.reshape(-1, *obs.shape[-3:]).float()
        if need_gray:
            w = torch.tensor(self._LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        if need_resize:
            shrink = self.size[0] <= x.shape[-2] and self.size[1] <= x.shape[-1]
            if shrink:
                x = F.interpolate(x, size=self.size, mode="area")
            else:
                x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
        return x.reshape(*batch, *x.shape[-3:])

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        in_key, out_key = self.in_keys[0], self.out_keys[0]
        obs = next_tensordict.get(in_key, None)
        if obs is None:
            return next_tensordict
        next_tensordict.set(out_key, self._apply_transform(obs))
        if in_key != out_key:
            next_tensordict.exclude(in_key, inplace=True)
        return next_tensordict

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict)

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        return self._call(tensordict_reset)

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        in_key, out_key = self.in_keys[0], self.out_keys[0]
        spec = observation_spec[in_key]
        shape = list(spec.shape)
        if self.channels_last:
            h, w, c = shape[-3:]
        else:
            c, h, w = shape[-3:]
        if self.grayscale:
            c = 1
        if self.size is not None:
            h, w = self.size
        new = Bounded(
            low=0,
            high=255,
            shape=(*shape[:-3], c, h, w),
            dtype=torch.uint8,
            device=spec.device,
        )
        if in_key != out_key:
            del observation_spec[in_key]
        observation_spec[out_key] = new
        return observation_spec


def standard_transforms(
    *,
    frame_stack: int,
    clip_rewards: bool,
    max_episode_steps: int | None = None,
    pixels_key: NestedKey = keys.PIXELS,
) -> Compose:
    """The transforms every env ends with (see the module docstring for the order and why).

    Args:
        frame_stack: frames ``S`` to stack along the channel dim (``1``: no stacking).
        clip_rewards: clip ``"reward"`` to ``[-1, 1]`` (after the raw score is summed).
        max_episode_steps: agent-step time limit that sets ``truncated``; ``None``: no limit here.
        pixels_key: the frame key to stack.

    Example:
        >>> t = standard_transforms(frame_stack=4, clip_rewards=True)
        >>> [type(x).__name__ for x in t]
        ['RewardSum', 'StepCounter', 'ClipTransform', 'CatFrames']
    """
    check_positive("frame_stack", frame_stack)
    check_positive("max_episode_steps", max_episode_steps, allow_none=True)
    transforms: list[Transform] = [
        RewardSum(in_keys=[keys.REWARD], out_keys=[EPISODE_SCORE]),
        StepCounter(max_steps=max_episode_steps, step_count_key=EPISODE_LENGTH),
    ]
    if clip_rewards:
        transforms.append(ClipTransform(in_keys=[keys.REWARD], low=-1.0, high=1.0))
    if frame_stack > 1:
        transforms.append(CatFrames(N=frame_stack, dim=-3, in_keys=[pixels_key], padding="same"))
    return Compose(*transforms)


def finish_env(
    base: EnvBase, *, frame_stack: int, clip_rewards: bool, max_episode_steps: int | None
) -> TransformedEnv:
    """Wrap ``base`` (which emits single uint8 frames under ``"pixels"``) in the standard stack."""
    return TransformedEnv(
        base,
        standard_transforms(
            frame_stack=frame_stack, clip_rewards=clip_rewards, max_episode_steps=max_episode_steps
        ),
    )


BACKENDS = ("vector", "serial", "parallel")


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Validated generic options of ``make_env`` with suite defaults filled in."""

    num_envs: int
    frame_stack: int
    frame_size: tuple[int, int]
    grayscale: bool
    backend: str


def resolve_options(
    suite: str,
    *,
    num_envs: int,
    frame_stack: int | None,
    frame_size: int | Sequence[int] | None,
    grayscale: bool | None,
    backend: str | None,
    default_frame_stack: int,
    default_frame_size: tuple[int, int],
    default_grayscale: bool,
    backends: Sequence[str],
) -> Resolved:
    """Fill suite defaults into ``make_env``'s generic options and validate them.

    ``backends`` lists the suite's backends, fastest first (its default).
    """
    check_positive("num_envs", num_envs)
    frame_stack = default_frame_stack if frame_stack is None else frame_stack
    check_positive("frame_stack", frame_stack)
    size = default_frame_size if frame_size is None else frame_size_tuple(frame_size)
    gray = default_grayscale if grayscale is None else grayscale
    if not isinstance(gray, bool):
        raise ValueError(f"grayscale must be True, False or None, got {grayscale!r}")
    backend = backends[0] if backend is None else backend
    if backend not in backends:
        raise ValueError(
            f"backend {backend!r} is not available for suite {suite!r}: choose one of "
            f"{list(backends)} (all backends: {list(BACKENDS)})."
        )
    return Resolved(num_envs, frame_stack, size, gray, backend)


def reject_unknown(suite: str, kwargs: dict, allowed: Sequence[str]) -> None:
    """Raise TypeError for suite kwargs ``make_env`` does not know, listing the known ones."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"make_env({suite!r}, ...) got unknown option(s) {unknown}; the {suite} suite accepts "
            f"{sorted(allowed)} besides make_env's generic options."
        )


def batch_envs(
    create_env_fn: Callable[[], EnvBase],
    *,
    num_envs: int,
    backend: str,
    device: torch.device,
    seed: int,
    mp_start_method: str = "spawn",
) -> EnvBase:
    """Run ``num_envs`` copies of ``create_env_fn`` in a TorchRL ``SerialEnv`` or ``ParallelEnv``.

    ``create_env_fn`` must be picklable (a module-level function or a ``functools.partial`` of
    one) for ``"parallel"``, whose workers are started with ``mp_start_method`` (``"spawn"``: fork
    hangs MiniWorld's OpenGL context and is unsafe with threads in general).
    """
    from torchrl.envs import ParallelEnv, SerialEnv

    if backend == "serial":
        env = SerialEnv(num_envs, create_env_fn, device=device)
    elif backend == "parallel":
        env = ParallelEnv(num_envs, create_env_fn, device=device, mp_start_method=mp_start_method)
    else:  # pragma: no cover - callers validate
        raise ValueError(f"batch_envs handles 'serial' and 'parallel', not {backend!r}")
    env.set_seed(seed)
    return env


def probe_num_actions(create_env_fn: Callable[[], EnvBase]) -> int:
    """Build one env in this process and return its number of discrete actions.

    Building one here first makes bad suite options fail with a clear error in the caller's
    process rather than in a batch worker.
    """
    probe = create_env_fn()
    num_actions = int(probe.action_spec.space.n)
    probe.close()
    return num_actions


def finish_suite_env(
    base: EnvBase,
    *,
    suite: str,
    env_id: str,
    opts: Resolved,
    num_actions: int,
    clip_rewards: bool,
    eval_mode: bool,
    time_limit: int | None,
    max_episode_steps: int | None,
    frame_skip: int = 1,
    success_key: NestedKey | None = None,
) -> TransformedEnv:
    """Wrap ``base`` in the standard stack (:func:`finish_env`) and attach its :class:`EnvInfo`.

    ``opts`` gives the batch size, frame stack, frame size, channels (grayscale or RGB) and
    backend that the info records. ``time_limit`` is the agent-step cap the stack enforces
    (``None``: none), ``max_episode_steps`` the cap the info records (the simulator may end
    episodes itself).
    """
    env = finish_env(
        base,
        frame_stack=opts.frame_stack,
        clip_rewards=clip_rewards,
        max_episode_steps=time_limit,
    )
    info = EnvInfo(
        suite=suite,
        env_id=env_id,
        num_envs=opts.num_envs,
        num_actions=num_actions,
        frame_channels=1 if opts.grayscale else 3,
        frame_stack=opts.frame_stack,
        frame_size=opts.frame_size,
        frame_skip=frame_skip,
        backend=opts.backend,
        eval_mode=eval_mode,
        max_episode_steps=max_episode_steps,
        success_key=success_key,
    )
    return attach_info(env, info)


def batch_suite_env(
    create_env_fn: Callable[[], EnvBase],
    *,
    suite: str,
    env_id: str,
    opts: Resolved,
    num_actions: int,
    seed: int,
    device: torch.device,
    clip_rewards: bool,
    eval_mode: bool,
    max_episode_steps: int | None,
    frame_skip: int = 1,
) -> TransformedEnv:
    """Batch copies of ``create_env_fn`` (:func:`batch_envs`) and finish them (:func:`finish_suite_env`).

    The path of the suites whose simulators run one env each (MiniWorld, Memory Gym, ViZDoom).
    """
    base = batch_envs(
        create_env_fn, num_envs=opts.num_envs, backend=opts.backend, device=device, seed=seed
    )
    return finish_suite_env(
        base,
        suite=suite,
        env_id=env_id,
        opts=opts,
        num_actions=num_actions,
        clip_rewards=clip_rewards,
        eval_mode=eval_mode,
        time_limit=max_episode_steps,
        max_episode_steps=max_episode_steps,
        frame_skip=frame_skip,
    )


def check_env_id(env_id: str, valid: Sequence[str], *, suite_name: str) -> None:
    """Raise ``ValueError`` naming the valid ids unless ``env_id`` is one of them."""
    if env_id not in valid:
        raise ValueError(f"Unknown {suite_name} env id {env_id!r}. Valid ids: {', '.join(valid)}.")
