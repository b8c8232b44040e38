"""IQN's cosine embedding of quantile fractions and BTR's dueling, noisy quantile head."""

from __future__ import annotations

import math

import torch
from torch import nn

from torchrl_rise.modules.noisy import NoisyLinear

__all__ = ["CosineEmbedding", "DuelingIQNHead"]


class CosineEmbedding(nn.Module):
    """``tau -> ReLU(Linear([cos(pi * i * tau)]_{i=0..n-1}))`` (Dabney et al., 2018).

    Args:
        num_cosines: number of cosine features ``n`` (BTR: 64).
        out_features: embedding size (the feature size it multiplies).

    Example:
        >>> import torch
        >>> emb = CosineEmbedding(64, 16)
        >>> emb(torch.rand(3, 8)).shape
        torch.Size([3, 8, 16])
    """

    def __init__(self, num_cosines: int, out_features: int) -> None:
        super().__init__()
        if num_cosines < 1:
            raise ValueError(f"num_cosines must be >= 1, got {num_cosines}.")
        self.num_cosines = num_cosines
        self.register_buffer(
            "freqs", math.pi * torch.arange(num_cosines, dtype=torch.float32), persistent=False
        )
        self.linear = nn.Linear(num_cosines, out_features)

    def forward(self, taus: torch.Tensor) -> torch.Tensor:
        cos = torch.cos(taus.unsqueeze(-1).float() * self.freqs)
        return torch.relu(self.linear(cos))


class DuelingIQNHead(nn.Module):
    """BTR's quantile head: features x cosine(tau) -> dueling noisy MLP -> quantiles.

    ``z = f * phi(tau)``; ``Q_tau(a) = V(z) + A(z, a) - mean_a A(z, a)`` with ``V`` and ``A`` two
    noisy MLPs ``in -> hidden -> {1, A}`` (ReLU). With ``layer_norm=True`` a LayerNorm follows each
    first dense layer (BTR's later option).

    Args:
        in_features: size of the feature vector ``f``.
        num_actions: number of discrete actions ``A``.

    Keyword Args:
        hidden: width of the dense layers (BTR: 512).
        num_cosines: cosine features of the tau embedding (BTR: 64).
        noisy: factorised noisy layers (BTR: True) or plain linear layers.
        sigma0: initial noise scale of the noisy layers.
        dueling: value/advantage streams (BTR: True) or a single advantage stream.
        layer_norm: LayerNorm between the dense layers.

    Example:
        >>> import torch
        >>> head = DuelingIQNHead(32, 5, hidden=16)
        >>> head(torch.randn(4, 32), torch.rand(4, 8)).shape
        torch.Size([4, 8, 5])
    """

    def __init__(
        self,
        in_features: int,
        num_actions: int,
        *,
        hidden: int = 512,
        num_cosines: int = 64,
        noisy: bool = True,
        sigma0: float = 0.5,
        dueling: bool = True,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}.")

        def linear(n_in: int, n_out: int) -> nn.Module:
            return NoisyLinear(n_in, n_out, sigma0=sigma0) if noisy else nn.Linear(n_in, n_out)

        def norm() -> nn.Module:
            return nn.LayerNorm(hidden) if layer_norm else nn.Identity()

        self.cos_embedding = CosineEmbedding(num_cosines, in_features)
        self.advantage = nn.Sequential(
            linear(in_features, hidden), norm(), nn.ReLU(), linear(hidden, num_actions)
        )
        self.value = (
            nn.Sequential(linear(in_features, hidden), norm(), nn.ReLU(), linear(hidden, 1))
            if dueling
            else None
        )
        self.in_features = in_features
        self.num_actions = num_actions

    def forward(self, features: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        """``features [B, F]``, ``taus [B, N]`` -> quantiles ``[B, N, A]``."""
        z = features.unsqueeze(-2) * self.cos_embedding(taus)
        advantage = self.advantage(z)
        if self.value is None:
            return advantage
        return self.value(z) + advantage - advantage.mean(-1, keepdim=True)
