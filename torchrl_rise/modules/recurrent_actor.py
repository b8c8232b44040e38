"""Acting with the recurrent baseline: each env's LSTM state kept across steps, reset at episode
start, and written into the tensordict so the sequence replay stores it (docs/recurrent.md)."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from tensordict.utils import NestedKey
from torchrl.data import TensorSpec, Unbounded

from torchrl_rise import keys
from torchrl_rise.modules.actor import make_actor

__all__ = ["RecurrentQStep", "make_recurrent_actor"]


def _next(key: NestedKey) -> tuple[str, ...]:
    return ("next", *((key,) if isinstance(key, str) else key))


class RecurrentQStep(TensorDictModuleBase):
    """One acting step of a :class:`~torchrl_rise.modules.RecurrentBaselineQNetwork`.

    Reads ``pixels`` ``[*B, S*C, H, W]``, the state ``recurrent_state_h``/``_c`` ``[*B, hidden]``
    (zeros when absent) and TorchRL's ``is_init`` ``[*B, 1]`` (:class:`~torchrl.envs.InitTracker`:
    True at an episode's first step). Where ``is_init`` is set the state is zeroed first: in a
    batched env with partial resets only the envs that restarted are reset. It writes back, at
    the root, the state it acted from (so a collected batch holds, at every step, the state the
    sequence replay stores), the network's ``action_value``/``quantiles``/``taus`` for this step,
    and the state after this step under ``("next", ...)``, which TorchRL's ``step_mdp`` carries to
    the next step's root.

    The state keys must be in the env's specs for ``step_mdp`` to carry them:
    :meth:`make_tensordict_primer` gives the :class:`~torchrl.envs.TensorDictPrimer` (TorchRL's
    recurrent-module convention, also found by
    :func:`torchrl.modules.utils.get_env_transforms_from_module` and by collectors built with
    ``auto_register_policy_transforms=True``, which add the ``InitTracker`` too).

    Args:
        net: a ``recurrent_baseline`` network from :func:`~torchrl_rise.modules.make_q_network`.

    Keyword Args:
        is_init_key: the episode-start flag.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rise.modules import make_q_network
        >>> net = make_q_network("recurrent_baseline", num_actions=3, in_channels=4, lstm_hidden=8,
        ...                      frame_size=(16, 16), width_scale=1, mlp_hidden=16)
        >>> step = RecurrentQStep(net)
        >>> td = step(TensorDict({"pixels": torch.zeros(2, 4, 16, 16, dtype=torch.uint8)}, [2]))
        >>> td["action_value"].shape, td["recurrent_state_h"].shape
        (torch.Size([2, 3]), torch.Size([2, 8]))
        >>> bool(td["recurrent_state_h"].eq(0).all()), td["next", "recurrent_state_h"].shape
        (True, torch.Size([2, 8]))
    """

    def __init__(self, net: TensorDictModuleBase, *, is_init_key: NestedKey = keys.IS_INIT):
        super().__init__()
        if not getattr(net, "is_sequence_model", False) or not hasattr(net, "lstm_hidden"):
            raise TypeError(
                "RecurrentQStep needs a recurrent network (make_q_network('recurrent_baseline', "
                f"...)), got {type(net).__name__}; use make_actor for rise/btr."
            )
        self.net = net
        self.hidden = int(net.lstm_hidden)
        self.pixels_key = net.pixels_key
        self.state_keys = tuple(net.recurrent_state_keys)
        self.is_init_key = is_init_key
        self.action_value_key = net.action_value_key
        self.in_keys = [self.pixels_key, *self.state_keys, is_init_key]
        self.out_keys = [
            net.quantiles_key,
            net.taus_key,
            net.action_value_key,
            *self.state_keys,
            *(_next(k) for k in self.state_keys),
        ]

    def make_tensordict_primer(self):
        """The :class:`~torchrl.envs.TensorDictPrimer` registering the state keys (zeros)."""
        from torchrl.envs.transforms import TensorDictPrimer

        return TensorDictPrimer(
            {key: Unbounded(shape=(self.hidden,)) for key in self.state_keys}, expand_specs=True
        )

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        pixels = tensordict.get(self.pixels_key)
        if pixels.dim() < 3:
            raise ValueError(
                f"{self.pixels_key!r} must be [..., S*C, H, W] (one step per env), got shape "
                f"{tuple(pixels.shape)}."
            )
        batch = pixels.shape[:-3]
        is_init = tensordict.get(self.is_init_key, None)
        states = []
        for key in self.state_keys:
            state = tensordict.get(key, None)
            if state is None:
                state = torch.zeros(*batch, self.hidden, device=pixels.device)
            elif state.shape[-1] != self.hidden or state.numel() != batch.numel() * self.hidden:
                raise ValueError(
                    f"{key!r} must be [..., {self.hidden}] (the LSTM hidden size) for a batch "
                    f"{tuple(batch)}, got shape {tuple(state.shape)}."
                )
            state = state.reshape(*batch, self.hidden).float()
            if is_init is not None:
                state = state.masked_fill(is_init.reshape(*batch, 1).to(torch.bool), 0.0)
            states.append(state)
        step = tensordict.empty()
        step.set(self.pixels_key, pixels.unsqueeze(-4))
        for key, state in zip(self.state_keys, states):
            step.set(key, state)
        self.net(step)
        for key in (self.net.quantiles_key, self.net.taus_key, self.action_value_key):
            tensordict.set(key, step.get(key).squeeze(len(batch)))
        for key, state in zip(self.state_keys, states):
            tensordict.set(key, state)  # the state this step acted from
            tensordict.set(_next(key), step.get(_next(key)))
        return tensordict


def make_recurrent_actor(
    net: TensorDictModuleBase,
    *,
    action_spec: TensorSpec,
    is_init_key: NestedKey = keys.IS_INIT,
    **actor_kwargs,
) -> TensorDictSequential:
    """BTR's acting policy (:func:`~torchrl_rise.modules.make_actor`: greedy on the mean Q over
    taus, noisy nets on in ``RANDOM`` mode, BTR's eps-greedy schedule, ``actor.step(frames)``)
    around a :class:`RecurrentQStep` that keeps each env's LSTM state.

    Add the state's primer and TorchRL's ``InitTracker`` to the env:
    ``env.append_transform(get_env_transforms_from_module(actor))`` (from
    ``torchrl.modules.utils``), or build the collector with
    ``auto_register_policy_transforms=True``.

    Args:
        net: a ``recurrent_baseline`` network.

    Keyword Args:
        action_spec: the env's action spec (Categorical).
        is_init_key: the episode-start flag written by ``InitTracker``.
        **actor_kwargs: :func:`~torchrl_rise.modules.make_actor`'s exploration options
            (``eps_schedule``, ``eps_init``, ``eps_end``, ``eps_decay_frames``,
            ``eps_off_after_frames``, ``frame_skip``, ``action_key``).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> from torchrl_rise.modules import make_q_network
        >>> net = make_q_network("recurrent_baseline", num_actions=3, in_channels=4, lstm_hidden=8,
        ...                      frame_size=(16, 16), width_scale=1, mlp_hidden=16)
        >>> actor = make_recurrent_actor(net, action_spec=Categorical(3), eps_init=0.0, eps_end=0.0)
        >>> td = actor(TensorDict({"pixels": torch.zeros(2, 4, 16, 16, dtype=torch.uint8)}, [2]))
        >>> td["action"].shape, td["next", "recurrent_state_c"].shape
        (torch.Size([2]), torch.Size([2, 8]))
    """
    return make_actor(
        RecurrentQStep(net, is_init_key=is_init_key),
        action_spec=action_spec,
        action_value_key=net.action_value_key,
        **actor_kwargs,
    )
