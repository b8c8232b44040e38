"""Targets of BTR's loss: the functional n-step Munchausen-IQN target and the target network's
hard update (a full copy every ``interval`` updates, buffers included).

:func:`iqn_target` is the one definition of the target that :class:`~torchrl_rise.objectives.IQNLoss`
(transitions and sequences) and :class:`~torchrl_rise.objectives.SequenceIQNLoss` use;
:func:`sequence_bootstrap` finds a sequence's bootstrap quantiles and masks the positions whose
bootstrap falls outside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchrl.objectives import LossModule, TargetNetUpdater

__all__ = ["HardTargetUpdate", "iqn_target", "sequence_bootstrap"]


def iqn_target(
    next_quantiles: torch.Tensor,
    reward: torch.Tensor,
    discount: torch.Tensor,
    *,
    munchausen: bool = True,
    action: torch.Tensor | None = None,
    log_policy_q: torch.Tensor | None = None,
    munchausen_tau: float = 0.03,
    munchausen_alpha: float = 0.9,
    munchausen_clip: float = -1.0,
) -> torch.Tensor:
    """The n-step (Munchausen) IQN target quantiles ``T_j`` of BTR's loss.

    With ``q'(b)`` the mean over the target taus of ``next_quantiles`` (``Z'_j(b)``, the target
    network at the bootstrap state ``s_{t+n}``) and ``tau_m`` the Munchausen temperature::

        pi'(b) = softmax(q' / tau_m)(b),   l'(b) = tau_m * log_softmax(q' / tau_m)(b)
        T_j    = R + gamma_m * sum_b pi'(b) * (Z'_j(b) - l'(b))
                   + alpha * clip(tau_m * log_softmax(log_policy_q / tau_m)[a], l0, 0)

    Without Munchausen: ``T_j = R + gamma_m * Z'_j(argmax_b q'(b))`` (no double DQN, as BTR). The
    leading dims ``[...]`` are anything (a batch ``[B]``, sequences ``[B, T]``).

    Args:
        next_quantiles: target quantiles at ``s_{t+n}``, ``[..., N', A]``.
        reward: the n-step return ``R``, ``[...]``.
        discount: ``gamma_m = gamma ** m`` (0 after termination), ``[...]``.

    Keyword Args:
        munchausen: add the Munchausen terms (soft bootstrap and log-policy bonus).
        action: the taken action ``a`` ``[...]`` (int64); needed with ``munchausen``.
        log_policy_q: ``q_bar(s_t, .)`` ``[..., A]``, the action values whose log-policy gives the
            bonus (BTR: the detached online network; M-IQN: the target network); needed with
            ``munchausen``.
        munchausen_tau: softmax temperature ``tau_m``.
        munchausen_alpha: scale ``alpha`` of the log-policy bonus.
        munchausen_clip: lower clip ``l0`` of the log-policy bonus.

    Returns:
        the target quantiles ``[..., N']`` (computed from what it is given: call it under
        ``torch.no_grad()``).

    Example:
        >>> import torch
        >>> z_next = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])  # [B=1, N'=2, A=2]
        >>> iqn_target(z_next, torch.tensor([1.0]), torch.tensor([0.5]), munchausen=False)
        tensor([[2.5000, 3.5000]])
    """
    q_next = next_quantiles.mean(-2)
    if munchausen:
        if action is None or log_policy_q is None:
            raise ValueError("the Munchausen target needs the action and log_policy_q.")
        tau = munchausen_tau
        pi = F.softmax(q_next / tau, dim=-1)
        log_pi = tau * F.log_softmax(q_next / tau, dim=-1)
        next_value = (pi.unsqueeze(-2) * (next_quantiles - log_pi.unsqueeze(-2))).sum(-1)
    else:
        greedy = q_next.argmax(-1)
        index = greedy[..., None, None].expand(*next_quantiles.shape[:-1], 1)
        next_value = next_quantiles.gather(-1, index).squeeze(-1)
    target = reward.unsqueeze(-1) + discount.unsqueeze(-1) * next_value
    if munchausen:
        log_pi_t = tau * F.log_softmax(log_policy_q / tau, dim=-1)
        chosen = log_pi_t.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        bonus = munchausen_alpha * chosen.clamp(min=munchausen_clip, max=0.0)
        target = target + bonus.unsqueeze(-1)
    return target


def sequence_bootstrap(
    quantiles: torch.Tensor, steps_to_next_obs: torch.Tensor, *, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bootstrap quantiles inside sequences: position ``j`` bootstraps from ``j + m_j``.

    Args:
        quantiles: one network pass over the sequences, ``[B, L, N', A]``.
        steps_to_next_obs: ``m`` per position, ``[B, L]`` (int64).

    Keyword Args:
        mask: the positions to train ``[B, L]`` (bool); ``None``: all of them.

    Returns:
        the quantiles at ``j + m_j`` ``[B, L, N', A]`` and the trained positions ``[B, L]``:
        ``mask`` without those whose bootstrap ``j + m_j`` lies past the sequence's end (their
        quantiles are the last position's, to be masked out).

    Example:
        >>> import torch
        >>> z = torch.arange(3.0).view(1, 3, 1, 1)
        >>> boot, trained = sequence_bootstrap(z, torch.tensor([[1, 1, 1]]))
        >>> boot.flatten().tolist(), trained.tolist()
        ([1.0, 2.0, 2.0], [[True, True, False]])
    """
    steps = quantiles.shape[1]
    boot = torch.arange(steps, device=steps_to_next_obs.device) + steps_to_next_obs
    inside = boot < steps
    trained = inside if mask is None else mask & inside
    boot = boot.clamp(max=steps - 1)
    index = boot[..., None, None].expand(*boot.shape, *quantiles.shape[2:])
    return quantiles.gather(1, index), trained


class HardTargetUpdate(TargetNetUpdater):
    """Copy a loss's online parameters *and buffers* into its target copy every ``interval`` steps.

    BTR's code replaces the target network with ``load_state_dict(net.state_dict())`` every 500
    gradient steps: every tensor is copied, the spectral-norm power-iteration vectors ``u``/``v``
    and the noise buffers included. TorchRL's :class:`~torchrl.objectives.HardUpdate` differs in
    two ways: it copies on the ``(interval + 1)``-th :meth:`step` (its counter runs
    ``0 .. interval``: every 501 updates for ``interval=500``), and it copies only the tensors
    that require grad, so the target's spectral-norm vectors are never refreshed from the online
    network. Here the ``k * interval``-th call of :meth:`step` (``k = 1, 2, ...``) leaves the target
    equal to the online network, every tensor included (``copy_buffers=False``: parameters only).
    Construction copies every tensor once (TorchRL's
    :class:`~torchrl.objectives.TargetNetUpdater`, which this class extends, does that and tells
    the loss it has an updater).

    It works with any TorchRL :class:`~torchrl.objectives.LossModule` that keeps target
    parameters (``target_<name>_params`` next to ``<name>_params``, TorchRL's convention).
    ``counter`` (steps since the last copy) is what a checkpoint needs to resume the schedule;
    :meth:`state_dict`/:meth:`load_state_dict` (inherited) hold it.

    Args:
        loss_module: the loss (e.g. :class:`~torchrl_rise.objectives.IQNLoss` with
            ``delay_value=True``).

    Keyword Args:
        interval: gradient updates between copies (BTR: 500).
        copy_buffers: copy the buffers too (BTR's code; default) or the parameters only.

    Example:
        >>> import torch
        >>> from torchrl_rise.modules import make_q_network
        >>> from torchrl_rise.objectives import IQNLoss
        >>> net = make_q_network("btr", num_actions=3, in_channels=4, width_scale=1, mlp_hidden=32)
        >>> loss = IQNLoss(net)
        >>> updater = HardTargetUpdate(loss, interval=2)
        >>> with torch.no_grad():
        ...     _ = loss.value_network_params.apply(lambda t: t.add_(1.0))
        >>> updater.step(); updater.counter  # one update: no copy yet
        1
        >>> updater.step(); updater.counter  # the 2nd update copies
        0
        >>> bool((loss.target_value_network_params == loss.value_network_params).all())
        True
    """

    def __init__(
        self, loss_module: LossModule, *, interval: int = 500, copy_buffers: bool = True
    ) -> None:
        if not isinstance(loss_module, LossModule):
            raise TypeError(
                f"loss_module must be a torchrl LossModule, got {type(loss_module).__name__}."
            )
        if isinstance(interval, bool) or int(interval) != interval or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval!r}.")
        pairs = [
            (name[len("target_") :], name)
            for name, _ in loss_module.named_children()
            if name.startswith("target_") and name.endswith("_params")
        ]
        if not pairs:
            raise ValueError(
                f"{type(loss_module).__name__} keeps no target parameters (target_*_params): "
                "build it with a target network (IQNLoss(..., delay_value=True)) or drop the "
                "target updater."
            )
        super().__init__(loss_module)  # checks the pairs, copies every tensor once
        self.interval = int(interval)
        self.copy_buffers = bool(copy_buffers)
        self.counter = 0
        self._copy_pairs = pairs

    @torch.no_grad()
    def copy_(self) -> None:
        """Copy the online tensors into the target now."""
        for source_name, target_name in self._copy_pairs:
            source = getattr(self.loss_module, source_name)
            target = getattr(self.loss_module, target_name)
            for key, value in source.items(True, True):
                if not self.copy_buffers and not value.requires_grad:
                    continue
                dest = target.get(key)
                if dest.data_ptr() != value.data_ptr():
                    dest.data.copy_(value.data)

    def step(self) -> None:
        """Count one gradient update; copy after every ``interval``-th."""
        self.counter += 1
        if self.counter >= self.interval:
            self.copy_()
            self.counter = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(interval={self.interval}, copy_buffers={self.copy_buffers}, "
            f"counter={self.counter})"
        )
