"""The recurrent baseline's loss: BTR's IQN + Munchausen over R2D2 sequences (docs/recurrent.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

from torchrl_rise import keys
from torchrl_rise.objectives.iqn import IQNLoss

__all__ = ["SequenceIQNLoss"]


class SequenceIQNLoss(IQNLoss):
    """:class:`~torchrl_rise.objectives.IQNLoss` over sequences from
    :class:`~torchrl_rise.replay.SequenceReplayBuffer`, R2D2-style.

    Input (batch size ``[B]``, per-position entries ``[B, T, ...]``; or a ``[B, T]`` layout, as
    :class:`IQNLoss`): the sequence's ``pixels``, the stored state at its first valid position
    ``recurrent_state_h``/``_c`` ``[B, hidden]``, ``sequence_mask`` (the burn-in's left padding is
    skipped by the network), per position ``action``, ``("next", "reward")`` (n-step return),
    ``("next", "discount")``, ``steps_to_next_obs`` ``m`` and ``learn_mask`` (the trained
    positions), and ``priority_weight`` (PER importance weight per sequence; 1 if absent).

    The online and the target network each unroll the whole sequence once from the same stored
    state: the first ``burn_in`` positions (the network's ``burn_in``, which must equal the
    replay's) without gradient, the rest with it (target: without). The target of trained
    position ``j`` is :func:`~torchrl_rise.objectives.iqn_target` (BTR's Munchausen IQN, as
    :class:`IQNLoss`) with the bootstrap quantiles of position ``j + m_j`` of the same target
    unroll (:func:`~torchrl_rise.objectives.sequence_bootstrap`)::

        T_j = R_j + alpha * clip(tau_m * log_softmax(q_bar(s_j) / tau_m)[a_j], l0, 0)
                  + gamma_j * sum_b pi'_{j+m}(b) * (Z_target(s_{j+m}, b) - l'_{j+m}(b))

    This is :class:`IQNLoss`'s sequence path with the trained positions read from ``learn_mask``
    (padding after an episode's end is not trained). Per sequence the loss is the mean over its
    trained positions of the quantile Huber loss, times the sequence's importance weight; the
    batch loss is the mean over sequences. The priority (key ``tensor_keys.priority``,
    ``"td_error"``: one value per sequence, ``[B]``, for ``rb.update_tensordict_priority(batch)``)
    is R2D2's ``eta * max_j + (1 - eta) * mean_j`` of the per-step priorities
    (``priority_reduction`` as :class:`IQNLoss`). Output: ``loss``, ``td_error_mean`` (the mean of
    ``mean_ij |u_ij|`` over trained steps: not the priorities' mean), ``q_value_mean`` and
    ``target_mean`` (over trained steps).

    Args:
        value_network: a ``recurrent_baseline`` network
            (:class:`~torchrl_rise.modules.RecurrentBaselineQNetwork`).

    Keyword Args:
        sequence_priority_eta: R2D2's max/mean mix (0.9).
        **kwargs: :class:`IQNLoss`'s options (``kappa``, ``munchausen*``, ``num_target_taus``,
            ``delay_value``, ``resample_noise``, ``noisy_in_loss``, ``autocast_dtype``,
            ``priority_reduction``); BTR's defaults.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rise.modules import make_q_network
        >>> net = make_q_network("recurrent_baseline", num_actions=3, in_channels=4, burn_in=2,
        ...                      frame_size=(16, 16), lstm_hidden=8, width_scale=1, mlp_hidden=16)
        >>> B, T = 2, 7  # 2 burn-in + 3 trained + 2 bootstrap positions
        >>> learn = torch.zeros(B, T, dtype=torch.bool)
        >>> learn[:, 2:5] = True
        >>> td = TensorDict({
        ...     "pixels": torch.randint(0, 255, (B, T, 4, 16, 16), dtype=torch.uint8),
        ...     "action": torch.randint(0, 3, (B, T)),
        ...     "steps_to_next_obs": torch.full((B, T, 1), 2),
        ...     "learn_mask": learn, "sequence_mask": torch.ones(B, T, dtype=torch.bool),
        ...     "next": {"reward": torch.randn(B, T, 1), "discount": torch.full((B, T, 1), 0.99)},
        ... }, [B])
        >>> out = SequenceIQNLoss(net)(td)
        >>> out["loss"].shape, td["td_error"].shape
        (torch.Size([]), torch.Size([2]))
    """

    @dataclass
    class _AcceptedKeys(IQNLoss._AcceptedKeys):
        """:class:`IQNLoss`'s keys, and the sequence's trained positions.

        Attributes:
            learn_mask: ``[B, T]`` bool, the trained positions. Defaults to ``"learn_mask"``.
        """

        learn_mask: NestedKey = keys.LEARN_MASK

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(self, value_network: TensorDictModuleBase, **kwargs) -> None:
        if not getattr(value_network, "is_sequence_model", False):
            raise TypeError(
                "SequenceIQNLoss trains a sequence network (make_q_network('recurrent_baseline', "
                f"...)), got {type(value_network).__name__}; use IQNLoss for rise/btr."
            )
        super().__init__(value_network, **kwargs)

    def _set_in_keys(self) -> None:
        super()._set_in_keys()
        extra = [self.tensor_keys.steps_to_next_obs, self.tensor_keys.learn_mask]
        self._in_keys = list(dict.fromkeys([*self._in_keys, *extra]))

    def _trained_positions(self, td: TensorDictBase, burn: int) -> torch.Tensor:
        """The replay's ``learn_mask`` after the burn-in (checked: no trained burn-in position)."""
        learn = td.get(self.tensor_keys.learn_mask, None)
        if learn is None:
            raise KeyError(
                f"SequenceIQNLoss needs {self.tensor_keys.learn_mask!r} (the trained positions, "
                "[B, T]); sample the batch from SequenceReplayBuffer."
            )
        if bool(learn[:, :burn].any()):
            raise ValueError(
                f"the network burns in {burn} positions but the batch trains some of them: build "
                "the network with the replay's burn_in (make_q_network(..., burn_in=rb.burn_in))."
            )
        return learn[:, burn:].to(torch.bool)
