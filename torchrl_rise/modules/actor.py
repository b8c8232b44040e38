"""The collection actor: the Q-network, greedy action on the mean over taus, BTR's eps-greedy."""

from __future__ import annotations

import torch
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from tensordict.utils import NestedKey
from torchrl.data import Categorical, TensorSpec
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import EGreedyModule, QValueModule

from torchrl_rise import keys

__all__ = [
    "EPS_SCHEDULES",
    "BTREGreedyModule",
    "EvalEGreedyModule",
    "make_actor",
    "make_eval_actor",
]


EPS_SCHEDULES = ("btr_exponential", "linear")


class BTREGreedyModule(EGreedyModule):
    """TorchRL's :class:`~torchrl.modules.EGreedyModule` with BTR's epsilon schedule.

    ``schedule="btr_exponential"`` (default) is what BTR's code does: at every stored transition
    ``eps -= (eps - eps_end) / N``, with ``N = eps_decay_frames / frame_skip`` transitions (BTR:
    2M transitions = 8M frames). In closed form, after ``t`` transitions::

        eps(t) = eps_end + (eps_init - eps_end) * (1 - 1 / N) ** t

    (about 0.37 at 8M frames, 0.09 at 20M, 0.017 at 40M with BTR's settings), exact for any
    number of transitions per :meth:`step` (64 envs store 64 transitions per vector step) and
    resumable from the frame counter. ``schedule="linear"`` decays linearly from ``eps_init`` to
    ``eps_end`` over ``eps_decay_frames`` frames and stays there. Either way ``eps`` is 0 once
    ``eps_off_after_frames`` frames have been collected (BTR: noisy nets alone explore from then
    on). :meth:`step` takes the number of frames collected since the last call and costs O(1)
    whatever that number (the parent loops once per frame). Like the parent, it acts only in
    ``RANDOM`` (or unset) exploration mode; evaluation under ``DETERMINISTIC`` is greedy.

    Args:
        spec: the action spec (Categorical).

    Keyword Args:
        schedule: ``"btr_exponential"`` or ``"linear"``.
        eps_init: initial epsilon.
        eps_end: the value epsilon decays towards (reached at ``eps_decay_frames`` when linear).
        eps_decay_frames: frames of the decay: the linear schedule's length, or ``N`` times
            ``frame_skip`` for the exponential one (after that many frames it has covered
            ``1 - 1/e`` of the way).
        eps_off_after_frames: frames after which epsilon is 0 (``None``: never).
        frame_skip: simulator frames per stored transition (the env's frame skip: 4 on Atari);
            the exponential schedule decays once per ``frame_skip`` frames.
        action_key: key of the action to perturb.

    Example:
        >>> from torchrl.data import Categorical
        >>> module = BTREGreedyModule(Categorical(4), eps_decay_frames=400, frame_skip=4,
        ...                           eps_off_after_frames=1000)
        >>> module.step(400); round(module.eps.item(), 4)  # 100 transitions: 0.01 + 0.99 * 0.99**100
        0.3724
        >>> module.step(600); module.eps.item()
        0.0
        >>> linear = BTREGreedyModule(Categorical(4), schedule="linear", eps_decay_frames=100)
        >>> linear.step(50); round(linear.eps.item(), 3)
        0.505
    """

    def __init__(
        self,
        spec: TensorSpec,
        *,
        schedule: str = "btr_exponential",
        eps_init: float = 1.0,
        eps_end: float = 0.01,
        eps_decay_frames: int = 8_000_000,
        eps_off_after_frames: int | None = 100_000_000,
        frame_skip: int = 4,
        action_key: NestedKey = keys.ACTION,
    ) -> None:
        if schedule not in EPS_SCHEDULES:
            raise ValueError(f"schedule must be one of {EPS_SCHEDULES}, got {schedule!r}.")
        if not 0.0 <= eps_end <= eps_init <= 1.0:
            raise ValueError(
                f"need 0 <= eps_end <= eps_init <= 1, got eps_init={eps_init}, eps_end={eps_end}."
            )
        if eps_decay_frames < 1:
            raise ValueError(f"eps_decay_frames must be >= 1, got {eps_decay_frames}.")
        if isinstance(frame_skip, bool) or int(frame_skip) != frame_skip or frame_skip < 1:
            raise ValueError(f"frame_skip must be an integer >= 1, got {frame_skip!r}.")
        if schedule == "btr_exponential" and eps_decay_frames < frame_skip:
            raise ValueError(
                f"eps_decay_frames={eps_decay_frames} is shorter than one transition "
                f"(frame_skip={frame_skip}): the exponential schedule decays by "
                "1 / (eps_decay_frames / frame_skip) per transition. Raise eps_decay_frames."
            )
        super().__init__(
            spec,
            eps_init=float(eps_init),
            eps_end=float(eps_end),
            annealing_num_steps=int(eps_decay_frames),
            action_key=action_key,
        )
        self.schedule = schedule
        self.frame_skip = int(frame_skip)
        self.eps_off_after_frames = eps_off_after_frames
        self.register_buffer("frames", torch.zeros((), dtype=torch.int64))

    def eps_at(self, frames: int) -> float:
        """Epsilon after ``frames`` collected frames."""
        if self.eps_off_after_frames is not None and frames >= self.eps_off_after_frames:
            return 0.0
        init, end = float(self.eps_init), float(self.eps_end)
        if self.schedule == "linear":
            return max(end, init - (init - end) * frames / self.annealing_num_steps)
        transitions = frames / self.frame_skip
        per_transition = 1.0 - self.frame_skip / self.annealing_num_steps  # 1 - 1 / N
        return end + (init - end) * per_transition**transitions

    def step(self, frames: int = 1) -> None:
        """Advance the schedule by ``frames`` collected frames."""
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames}.")
        self.frames += int(frames)
        self.eps.fill_(self.eps_at(int(self.frames)))


def make_actor(
    net: TensorDictModuleBase,
    *,
    action_spec: TensorSpec,
    eps_schedule: str = "btr_exponential",
    eps_init: float = 1.0,
    eps_end: float = 0.01,
    eps_decay_frames: int = 8_000_000,
    eps_off_after_frames: int | None = 100_000_000,
    frame_skip: int = 4,
    action_key: NestedKey = keys.ACTION,
    action_value_key: NestedKey = keys.ACTION_VALUE,
) -> TensorDictSequential:
    """The acting policy: ``net`` -> argmax of the mean Q over taus -> BTR eps-greedy.

    The network reads exactly what it reads when learning (``pixels`` and, for ``rise``, the
    ``rise_context`` window and mask that :class:`RiseContextTransform` maintains per env), so
    acting and learning see the same context. Noise: collectors act in ``RANDOM`` exploration mode,
    where the noisy layers are on; under ``set_exploration_type(ExplorationType.DETERMINISTIC)``
    noise and eps are both off (greedy evaluation). Call ``actor.step(frames)`` (or
    ``actor[-1].step(frames)``) after each collected batch to advance the eps schedule.

    Args:
        net: a network from :func:`make_q_network` (writes ``action_value``).

    Keyword Args:
        action_spec: the env's action spec (Categorical: ``action`` is an int64 index).
        eps_schedule: ``"btr_exponential"`` (BTR's code) or ``"linear"``; see
            :class:`BTREGreedyModule`.
        eps_init, eps_end, eps_decay_frames, eps_off_after_frames, frame_skip: BTR's schedule
            (1.0 towards 0.01 with a decay of 8M frames = 2M transitions at frame skip 4, off
            after 100M frames).
        action_key: key the action is written to.
        action_value_key: key of the mean Q-values the greedy action is taken from.

    Returns:
        a :class:`~tensordict.nn.TensorDictSequential` with a ``step(frames)`` method and an
        ``exploration_eps`` property.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> from torchrl_rise.modules import make_q_network
        >>> net = make_q_network("btr", num_actions=3, in_channels=4, width_scale=1, mlp_hidden=32)
        >>> actor = make_actor(net, action_spec=Categorical(3))
        >>> td = actor(TensorDict({"pixels": torch.zeros(4, 84, 84, dtype=torch.uint8)}, []))
        >>> td["action"].dtype, td["action"].shape
        (torch.int64, torch.Size([]))
    """
    if not isinstance(action_spec, Categorical):
        raise TypeError(
            f"action_spec must be a torchrl Categorical spec (actions are int64 indices), got "
            f"{type(action_spec).__name__}; use env.action_spec of a discrete env or Categorical(n)."
        )
    greedy = QValueModule(
        spec=action_spec,
        action_value_key=action_value_key,
        out_keys=[action_key, action_value_key, "chosen_action_value"],
    )
    explore = BTREGreedyModule(
        action_spec,
        schedule=eps_schedule,
        eps_init=eps_init,
        eps_end=eps_end,
        eps_decay_frames=eps_decay_frames,
        eps_off_after_frames=eps_off_after_frames,
        frame_skip=frame_skip,
        action_key=action_key,
    )
    actor = _Actor(net, greedy, explore)
    return actor


class _Actor(TensorDictSequential):
    """TensorDictSequential whose ``step(frames)`` advances the eps-greedy schedule.

    What a training loop needs of the acting policy: :meth:`step` after each collected batch and
    :attr:`exploration_eps` for the logs (the eps-greedy step is its last module).
    """

    def step(self, frames: int = 1) -> None:
        """Advance the eps-greedy schedule by ``frames`` simulator frames."""
        self.module[-1].step(frames)

    @property
    def exploration_eps(self) -> float:
        """The eps the next collected batch acts with."""
        return float(self.module[-1].eps)


class EvalEGreedyModule(EGreedyModule):
    """A constant-eps greedy step that acts whatever the exploration type (BTR evaluates with 0.01).

    Run the evaluation actor under ``set_exploration_type(ExplorationType.DETERMINISTIC)``: the
    noisy layers then use their mean weights while this module still takes a random action with
    probability ``eps``.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> module = EvalEGreedyModule(Categorical(4), eps=1.0)
        >>> td = TensorDict({"action": torch.zeros(1000, dtype=torch.int64)}, [1000])
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     bool((module(td)["action"] != 0).any())
        True
    """

    def __init__(self, spec: TensorSpec, *, eps: float = 0.01, action_key: NestedKey = keys.ACTION):
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {eps}.")
        super().__init__(
            spec,
            eps_init=float(eps),
            eps_end=float(eps),
            annealing_num_steps=1,
            action_key=action_key,
        )

    def step(self, frames: int = 1) -> None:
        """Constant eps: nothing to advance."""

    def forward(self, tensordict):
        with set_exploration_type(ExplorationType.RANDOM):
            return super().forward(tensordict)


def make_eval_actor(
    net: TensorDictModuleBase,
    *,
    action_spec: TensorSpec,
    eps: float = 0.01,
    action_key: NestedKey = keys.ACTION,
    action_value_key: NestedKey = keys.ACTION_VALUE,
) -> TensorDictSequential:
    """BTR's evaluation policy: greedy on the mean Q with eps ``0.01``, noise off.

    Run it under ``set_exploration_type(ExplorationType.DETERMINISTIC)`` (noise off); the eps step
    acts regardless. ``eps=0`` gives the plain greedy policy.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> from torchrl_rise.modules import make_q_network
        >>> net = make_q_network("btr", num_actions=3, in_channels=4, width_scale=1, mlp_hidden=32)
        >>> policy = make_eval_actor(net, action_spec=Categorical(3), eps=0.0)
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     td = policy(TensorDict({"pixels": torch.zeros(4, 84, 84, dtype=torch.uint8)}, []))
        >>> bool(td["action"] == td["action_value"].argmax())
        True
    """
    if not isinstance(action_spec, Categorical):
        raise TypeError(
            f"action_spec must be a torchrl Categorical spec, got {type(action_spec).__name__}."
        )
    greedy = QValueModule(
        spec=action_spec,
        action_value_key=action_value_key,
        out_keys=[action_key, action_value_key, "chosen_action_value"],
    )
    return TensorDictSequential(
        net, greedy, EvalEGreedyModule(action_spec, eps=eps, action_key=action_key)
    )
