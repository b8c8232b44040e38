"""BTR's hard target-network update: a full copy every ``interval`` updates, buffers included."""

from __future__ import annotations

import torch
from torchrl.objectives import LossModule, TargetNetUpdater

__all__ = ["HardTargetUpdate"]


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
