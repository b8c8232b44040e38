"""Factorised Gaussian noisy linear layers (Fortunato et al., 2018) as BTR uses them.

The layer extends :class:`torchrl.modules.NoisyLinear`, so it follows TorchRL's switch: noise is added
only while the exploration type is :attr:`~torchrl.envs.utils.ExplorationType.RANDOM` (what collectors
use by default). Evaluation under ``set_exploration_type(ExplorationType.DETERMINISTIC)`` uses the mean
weights. TorchRL losses run their forward in deterministic mode, which would silently switch the noise
off while learning; :class:`~torchrl_rise.objectives.IQNLoss` therefore runs in ``RANDOM`` mode (BTR
trains with noise on) and resamples the noise explicitly once per update with :func:`resample_noise`.

:func:`resample_noise` was called ``reset_noise`` before; that name is kept as a deprecated alias
for one release. It was renamed because TorchRL's ``torchrl.modules.reset_noise(layer)`` is a
different contract: it resets one layer, is meant for ``module.apply(reset_noise)`` and returns
``None``, while this function walks a whole module and returns how many layers it resampled.
"""

from __future__ import annotations

import math
import warnings

from torch import nn
from torchrl.modules import NoisyLinear as _TorchRLNoisyLinear

__all__ = ["NoisyLinear", "resample_noise", "reset_noise"]


class NoisyLinear(_TorchRLNoisyLinear):
    """Factorised noisy linear layer with BTR's initialisation.

    ``y = (mu_w + sigma_w * eps_w) x + (mu_b + sigma_b * eps_b)`` with factorised noise
    ``eps_w = f(eps_out) f(eps_in)^T``, ``f(x) = sign(x) sqrt(|x|)``. Means start uniform in
    ``+-1/sqrt(in_features)`` and both sigmas at ``sigma0 / sqrt(in_features)`` (Fortunato et al.;
    TorchRL's parent class scales the bias sigma by ``out_features`` instead).

    The noise buffers change only when :meth:`reset_noise` (or :func:`resample_noise` on a parent
    module) is called.

    Args:
        in_features: input size.
        out_features: output size.

    Keyword Args:
        sigma0: initial noise scale (BTR: 0.5).
        bias: whether to learn a bias.

    Example:
        >>> import torch
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> layer = NoisyLinear(4, 2, sigma0=0.5)
        >>> x = torch.ones(1, 4)
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     mean_out = layer(x)
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     noisy_out = layer(x)
        >>> bool((mean_out != noisy_out).any())
        True
    """

    def __init__(
        self, in_features: int, out_features: int, *, sigma0: float = 0.5, bias: bool = True
    ) -> None:
        if sigma0 < 0:
            raise ValueError(f"sigma0 must be >= 0, got {sigma0}.")
        super().__init__(in_features, out_features, bias=bias, std_init=sigma0)

    def reset_parameters(self) -> None:
        scale = 1.0 / math.sqrt(self.in_features)
        self.weight_mu.data.uniform_(-scale, scale)
        self.weight_sigma.data.fill_(self.std_init * scale)
        if self.bias_mu is not None:
            self.bias_mu.data.uniform_(-scale, scale)
            self.bias_sigma.data.fill_(self.std_init * scale)


def resample_noise(module: nn.Module) -> int:
    """Resample the noise of every noisy layer inside ``module`` (TorchRL's and ours).

    Args:
        module: any module; its submodules that are :class:`torchrl.modules.NoisyLinear` are reset.

    Returns:
        the number of layers whose noise was resampled.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(NoisyLinear(3, 3), nn.ReLU(), NoisyLinear(3, 1))
        >>> resample_noise(net)
        2
    """
    count = 0
    for sub in module.modules():
        if isinstance(sub, _TorchRLNoisyLinear):
            sub.reset_noise()
            count += 1
    return count


def reset_noise(module: nn.Module) -> int:
    """Deprecated alias of :func:`resample_noise` (removed in the next release).

    Not TorchRL's ``torchrl.modules.reset_noise``, which resets a single layer for
    ``module.apply``; this one walks ``module`` and returns the number of layers resampled.
    """
    warnings.warn(
        "torchrl_rise.modules.reset_noise is deprecated and will be removed in the next release: "
        "use torchrl_rise.modules.resample_noise (same arguments and return value).",
        DeprecationWarning,
        stacklevel=2,
    )
    return resample_noise(module)
