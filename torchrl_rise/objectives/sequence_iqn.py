"""The recurrent baseline's loss: BTR's IQN + Munchausen over R2D2 sequences (docs/recurrent.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

from torchrl_rise import keys
from torchrl_rise.objectives.iqn import IQNLoss, quantile_huber_loss

__all__ = ["SequenceIQNLoss"]


class SequenceIQNLoss(IQNLoss):
    """:class:`~torchrl_rise.objectives.IQNLoss` over sequences from
    :class:`~torchrl_rise.replay.SequenceReplayBuffer`, R2D2-style.

    Input (batch size ``[B]``, per-position entries ``[B, T, ...]``): the sequence's ``pixels``,
    the stored state at its first valid position ``recurrent_state_h``/``_c`` ``[B, hidden]``,
    ``sequence_mask`` (the burn-in's left padding is skipped by the network), per position
    ``action``, ``("next", "reward")`` (n-step return), ``("next", "discount")``,
    ``steps_to_next_obs`` ``m`` and ``learn_mask`` (the trained positions), and ``_weight``
    (PER importance weight per sequence).

    The online and the target network each unroll the whole sequence once from the same stored
    state: the first ``burn_in`` positions (the network's ``burn_in``, which must equal the
    replay's) without gradient, the rest with it (target: without). The target of trained
    position ``j`` is BTR's (Munchausen IQN, see :class:`IQNLoss`) with the bootstrap
    quantiles of position ``j + m_j`` of the same unroll::

        T_j = R_j + alpha * clip(tau_m * log_softmax(q(s_j) / tau_m)[a_j], l0, 0)
                  + gamma_j * sum_b pi'_{j+m}(b) * (Z_target(s_{j+m}, b) - l'_{j+m}(b))

    Per sequence the loss is the mean over its trained positions of the quantile Huber loss,
    times the sequence's importance weight; the batch loss is the mean over sequences. The
    priority written to ``td_error`` (``[B]``, for ``rb.update_tensordict_priority(batch)``) is
    R2D2's ``eta * max_j + (1 - eta) * mean_j`` of the per-step priorities (``priority_reduction``
    as :class:`IQNLoss`). Output: ``loss``, ``td_error_mean`` (mean ``|u|`` over trained steps),
    ``q_value_mean`` and ``target_mean`` (over trained steps).

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

    def _per_step(self, td: TensorDictBase, key: NestedKey, steps: int) -> torch.Tensor:
        value = td.get(key, None)
        if value is None:
            raise KeyError(
                f"SequenceIQNLoss needs {key!r} per position ([B, T, ...]); sample the batch "
                "from SequenceReplayBuffer."
            )
        return value.reshape(*value.shape[:2])[:, -steps:] if value.dim() > 2 else value[:, -steps:]

    def _forward_sequence(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.batch_dims != 1:
            raise ValueError(
                "SequenceIQNLoss needs a batch of sequences with batch_size [B] (per-position "
                f"entries [B, T, ...]), got batch_size {tuple(tensordict.batch_size)}."
            )
        learn_full = tensordict.get(self.tensor_keys.learn_mask, None)
        if learn_full is None:
            raise KeyError(
                f"SequenceIQNLoss needs {self.tensor_keys.learn_mask!r} (the trained positions, "
                "[B, T]); sample the batch from SequenceReplayBuffer."
            )
        obs = self._observation(tensordict)
        online = self._run(self.value_network_params, obs.copy())
        z = online.get(self.tensor_keys.quantiles).float()  # [B, steps, N, A]
        taus = online.get(self.tensor_keys.taus).float()
        steps = z.shape[1]
        burn = learn_full.shape[1] - steps
        if bool(learn_full[:, :burn].any()):
            raise ValueError(
                f"the network burns in {burn} positions but the batch trains some of them: build "
                "the network with the replay's burn_in (make_q_network(..., burn_in=rb.burn_in))."
            )
        learn = learn_full[:, burn:].to(torch.bool)
        action = self._action(tensordict, z.shape[-1])[:, burn:]
        z_taken = z.gather(-1, action[..., None, None].expand(*z.shape[:-1], 1)).squeeze(-1)
        with torch.no_grad():
            with self.value_network.taus_override(self.num_target_taus):
                z_target = self._run(self._target_params(), obs.copy())
                z_target = z_target.get(self.tensor_keys.quantiles).float()  # [B, steps, N', A]
            reward = self._per_step(tensordict, ("next", self.tensor_keys.reward), steps).float()
            discount = self._discount(tensordict)
            discount = discount.reshape(*discount.shape[:2])[:, burn:]
            m = self._per_step(tensordict, self.tensor_keys.steps_to_next_obs, steps).long()
            boot = torch.arange(steps, device=m.device) + m
            learn = learn & (boot < steps)  # (the replay's tail guarantees it for trained steps)
            boot = boot.clamp(max=steps - 1)
            z_boot = z_target.gather(
                1, boot[..., None, None].expand(*boot.shape, *z_target.shape[2:])
            )
            target = reward.unsqueeze(-1) + discount.unsqueeze(-1) * self._next_value(z_boot)
            if self.munchausen:
                q_t = (
                    z_target.mean(-2)
                    if self.munchausen_log_policy == "target"
                    else z.detach().mean(-2)
                )
                target = target + self._munchausen_bonus(q_t, action).unsqueeze(-1)
        per_step, td_abs = quantile_huber_loss(z_taken, taus, target, kappa=self.kappa)
        learn_f = learn.to(per_step.dtype)
        count = learn_f.sum(1).clamp_min(1.0)
        per_seq = (per_step * learn_f).sum(1) / count
        weight = self._priority_weight(tensordict)
        if weight is not None:
            per_seq = per_seq * weight.reshape(-1).to(per_seq.dtype)
        loss = per_seq.mean()
        td_abs = td_abs * learn_f
        eta = self.sequence_priority_eta
        mixed = eta * td_abs.max(1).values + (1 - eta) * td_abs.sum(1) / count
        priority = self._priority(mixed, z_taken.shape[-1])
        tensordict.set(self.tensor_keys.priority, priority, inplace=True)
        n_learn = learn_f.sum().clamp_min(1.0)
        return TensorDict(
            loss=loss,
            td_error_mean=td_abs.sum() / n_learn,
            q_value_mean=(z.detach().mean((-2, -1)) * learn_f).sum() / n_learn,
            target_mean=(target.mean(-1) * learn_f).sum() / n_learn,
        )
