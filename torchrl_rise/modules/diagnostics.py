"""Gate diagnostics: the RISE failure signature is a sigmoid gate saturated at 0 or 1."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from torchrl_rise import keys

__all__ = ["gate_statistics", "gate_statistics_tensors"]


@torch.no_grad()
def gate_statistics(
    data: TensorDictBase | torch.Tensor,
    *,
    gate_key: NestedKey = keys.GATE,
    low: float = 0.05,
    high: float = 0.95,
) -> dict[str, float]:
    """Mean and spread of the gate and the fraction of saturated units.

    One pass over the gate tensor (a few hundred microseconds for a 256 x 2304 batch), so it can be
    logged every few hundred updates. A ``gate_saturated_frac`` near 1 means one stream is being
    ignored (gate stuck at 0: CNN features suppressed; at 1: context has no effect).

    Args:
        data: a tensordict holding ``gate_key`` (as written by the ``rise`` network) or the gate
            tensor itself (values in ``[0, 1]``).

    Keyword Args:
        gate_key: key of the gate in ``data``.
        low: units below it count as saturated at 0.
        high: units above it count as saturated at 1.

    Returns:
        ``{"gate_mean", "gate_std", "gate_saturated_frac", "gate_low_frac", "gate_high_frac"}``.

    Example:
        >>> import torch
        >>> stats = gate_statistics(torch.tensor([0.01, 0.5, 0.99, 0.5]))
        >>> stats["gate_saturated_frac"], stats["gate_mean"]
        (0.5, 0.5)
    """
    if isinstance(data, TensorDictBase):
        gate = data.get(gate_key, None)
        if gate is None:
            raise KeyError(
                f"no {gate_key!r} in the tensordict; only the 'rise' network with fusion='gate' "
                "and emit_gate=True writes it."
            )
    else:
        gate = data
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}.")
    if gate.numel() == 0:
        raise ValueError("gate_statistics got an empty gate tensor.")
    return {k: v.item() for k, v in gate_statistics_tensors(gate, low=low, high=high).items()}


@torch.no_grad()
def gate_statistics_tensors(
    gate: torch.Tensor, *, low: float = 0.05, high: float = 0.95
) -> dict[str, torch.Tensor]:
    """:func:`gate_statistics` as 0-d tensors (no host sync), for loss outputs and loggers.

    Example:
        >>> import torch
        >>> gate_statistics_tensors(torch.tensor([0.0, 1.0]))["gate_saturated_frac"]
        tensor(1.)
    """
    gate = gate.detach().float().flatten()
    low_frac = (gate < low).float().mean()
    high_frac = (gate > high).float().mean()
    std = gate.std() if gate.numel() > 1 else gate.new_zeros(())
    return {
        "gate_mean": gate.mean(),
        "gate_std": std,
        "gate_saturated_frac": low_frac + high_frac,
        "gate_low_frac": low_frac,
        "gate_high_frac": high_frac,
    }
